"""Labelled image data for accuracy: IDX files (MNIST format) and ImageFolder-style directories.

`--data` takes:
- `fashion-mnist`: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist);
- a directory of IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
  `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`; `test-` also names the test split);
- a directory of images, one subfolder per class, either split (`DIR/train/<class>/`,
  `DIR/test/<class>/` or `DIR/val/<class>/`) or flat (`DIR/<class>/`, evaluation only).

Images come out as float32 in [0, 1], shape (N, C, H, W); labels as int64. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress.errors import CompressError

FASHION_MNIST_DIR = os.environ.get("COMPRESS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
NAMED = {"fashion-mnist": (FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, "dataset-fashion-mnist")}
SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# IDX type byte -> numpy big-endian dtype
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass
class Dataset:
    images: torch.Tensor              # float32 (N, C, H, W) in [0, 1]
    labels: torch.Tensor              # int64 (N,)
    classes: tuple[str, ...]
    name: str                         # what the user passed, plus the split
    exact_classes: bool = True        # False: the class count is inferred from the labels seen
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def subset(self, idx, suffix: str = "") -> "Dataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Dataset(self.images[idx], self.labels[idx], self.classes, self.name + suffix,
                       self.exact_classes, self.files)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Yield (images, labels) batches; with `shuffle`, a seeded permutation."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
        for i in range(0, n, batch_size):
            if order is None:
                yield self.images[i:i + batch_size], self.labels[i:i + batch_size]
            else:
                j = order[i:i + batch_size]
                yield self.images[j], self.labels[j]


# ---------------------------------------------------------------- IDX

def _read_bytes(path: str) -> bytes:
    p = Path(path)
    if not p.exists():
        raise CompressError(f"{path} does not exist")
    if not p.is_file():
        raise CompressError(f"{path} is not a file")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise CompressError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (raw or gzip): magic 0x00 0x00 TYPE NDIM, NDIM big-endian uint32 sizes, data."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise CompressError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
                            "expected 0000TTNN with type 08-0e and 1-4 dimensions)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CompressError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise CompressError(f"{path}: IDX file {what} (header says {dims} = {expected} bytes of data, "
                            f"found {len(raw) - header})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(d: Path, split: str, kind: str) -> Path | None:
    """train-images-idx3-ubyte[.gz] (also `train-images.idx3-ubyte`)."""
    idx = "idx3" if kind == "images" else "idx1"
    for prefix in SPLIT_PREFIXES[split]:
        for sep in ("-", "."):
            for ext in ("", ".gz"):
                p = d / f"{prefix}-{kind}{sep}{idx}-ubyte{ext}"
                if p.is_file():
                    return p
    return None


def _has_idx(d: Path) -> bool:
    return any(_find(d, s, k) for s in SPLIT_PREFIXES for k in ("images", "labels"))


def _idx_labels(path: Path) -> np.ndarray:
    labels = read_idx(str(path))
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CompressError(f"{path}: labels must be a 1-D integer IDX array, got shape {labels.shape} "
                            f"of {labels.dtype}")
    return labels


def load_idx_split(d: str, split: str, classes: tuple[str, ...] | None = None, name: str | None = None) -> Dataset:
    """One split of an IDX directory. `classes` fixes the class list (labels must lie in it);
    otherwise classes are 0..max label of the directory's label files."""
    dp = Path(d)
    img_p, lab_p = _find(dp, split, "images"), _find(dp, split, "labels")
    if img_p is None or lab_p is None:
        missing = f"{SPLIT_PREFIXES[split][0]}-{'images-idx3' if img_p is None else 'labels-idx1'}-ubyte[.gz]"
        raise CompressError(f"{d}: no {split} split ({missing} not found)")
    images = read_idx(str(img_p))
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise CompressError(f"{img_p}: images must be uint8 IDX of shape (N, H, W) or (N, C, H, W), "
                            f"got {images.dtype} {images.shape}")
    labels = _idx_labels(lab_p)
    if labels.shape[0] != images.shape[0]:
        raise CompressError(f"{lab_p}: {labels.shape[0]} labels for {images.shape[0]} images in {img_p.name}")
    exact = classes is not None
    if classes is None:
        top = max(int(_idx_labels(p).max(initial=0)) for p in
                  (_find(dp, s, "labels") for s in SPLIT_PREFIXES) if p is not None)
        classes = tuple(str(i) for i in range(top + 1))
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
        raise CompressError(f"{lab_p}: labels out of range (found {int(labels.min())}..{int(labels.max())}, "
                            f"expected 0..{len(classes) - 1})")
    x = torch.from_numpy(images.copy())
    x = (x.unsqueeze(1) if x.dim() == 3 else x).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x, y, tuple(classes), f"{name or d}:{split}", exact, [str(img_p), str(lab_p)])


# ---------------------------------------------------------------- image folders

def _class_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dir(d: Path, split: str) -> Path | None:
    names = ("train",) if split == "train" else ("test", "val")
    for n in names:
        if (d / n).is_dir():
            return d / n
    return None


def load_image_folder(d: str, channels: int = 3, size: tuple[int, int] | None = None,
                      classes: tuple[str, ...] | None = None, name: str | None = None) -> Dataset:
    """Every image under d/<class>/ (classes sorted by name), converted to `channels` (1: L, 3: RGB)
    and resized to `size` (H, W) when given."""
    from PIL import Image, UnidentifiedImageError

    dp = Path(d)
    found = [c.name for c in _class_dirs(dp)]
    if not found:
        raise CompressError(f"{d}: no class subfolders (expected {d}/<class>/<image files>)")
    if classes is None:
        classes = tuple(found)
    elif set(found) - set(classes):
        raise CompressError(f"{d}: class folders {sorted(set(found) - set(classes))} are not among {list(classes)}")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise CompressError(f"image folders give 1 or 3 channels; the model takes {channels}")
    xs, ys = [], []
    for label, cname in enumerate(classes):
        cdir = dp / cname
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if size is not None and im.size != (size[1], size[0]):
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise CompressError(f"{f}: not a readable image ({type(e).__name__})") from None
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise CompressError(f"{d}: no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) under the class folders")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise CompressError(f"{d}: images have different sizes {sorted(shapes)[:3]}; "
                            "pass a model with a fixed input shape so they are resized")
    x = torch.from_numpy(np.stack(xs)).to(torch.float32).div_(255.0)
    return Dataset(x, torch.tensor(ys, dtype=torch.int64), tuple(classes), name or d, True, [str(dp)])


# ---------------------------------------------------------------- --data specs

def resolve(spec: str) -> tuple[str, str, tuple[str, ...] | None]:
    """(kind, directory, fixed classes) for a --data spec; kind is idx or folder."""
    if spec in NAMED:
        d, classes, package = NAMED[spec]
        if not _has_idx(Path(d)):
            raise CompressError(f"--data {spec}: not installed (no IDX files in {d}); "
                                f"run `apt-get install {package}`")
        return "idx", d, classes
    p = Path(spec)
    if not p.exists():
        raise CompressError(f"--data {spec}: path does not exist (use {', '.join(NAMED)} or a directory "
                            "of IDX files or class subfolders)")
    if not p.is_dir():
        raise CompressError(f"--data {spec}: not a directory (use a directory of IDX files or class subfolders)")
    if _has_idx(p):
        return "idx", str(p), None
    if _class_dirs(p):
        return "folder", str(p), None
    raise CompressError(f"--data {spec}: neither IDX files (train-images-idx3-ubyte[.gz], ...) "
                        "nor class subfolders")


def load(spec: str, split: str = "test", sample_shape: tuple[int, ...] | None = None,
         allow_flat: bool = True) -> Dataset:
    """Load one split ("train" or "test") of a --data spec. `sample_shape` (C, H, W) of the model's
    input converts and resizes folder images; a flat class-folder directory serves any split only
    with `allow_flat` (evaluation, calibration), never as the training split of fine-tuning."""
    if split not in SPLIT_PREFIXES:
        raise ValueError(split)
    kind, d, classes = resolve(spec)
    if kind == "idx":
        return load_idx_split(d, split, classes, spec)
    channels = sample_shape[0] if sample_shape else 3
    size = tuple(sample_shape[1:3]) if sample_shape and len(sample_shape) == 3 else None
    sd = _split_dir(Path(d), split)
    if sd is None:
        if _split_dir(Path(d), "train") or _split_dir(Path(d), "test"):
            raise CompressError(f"--data {spec}: no {split}/ subfolder")
        if not allow_flat:
            raise CompressError(f"--data {spec}: fine-tuning needs separate {spec}/train/<class>/ and "
                                f"{spec}/test/<class>/ folders")
        return load_image_folder(d, channels, size, name=spec)
    # both splits share the class list of the training folder (or the test folder alone)
    ref = _split_dir(Path(d), "train") or sd
    classes = tuple(c.name for c in _class_dirs(ref))
    return load_image_folder(str(sd), channels, size, classes, f"{spec}:{split}")


def calibration_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """`n` samples drawn without replacement, stratified: each class gets its share of `n`
    in proportion to its frequency (largest remainder), chosen by a seeded permutation."""
    if n <= 0:
        raise CompressError(f"calibration size must be positive, got {n}")
    if n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    labels = ds.labels.numpy()
    present, counts = np.unique(labels, return_counts=True)
    share = counts * (n / len(ds))
    take = np.floor(share).astype(int)
    for i in np.argsort(-(share - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    picked = []
    for cls, k in zip(present.tolist(), take.tolist()):
        idx = np.flatnonzero(labels == cls)
        perm = torch.randperm(len(idx), generator=g).numpy()
        picked.append(idx[perm[:k]])
    idx = np.concatenate(picked)
    idx = idx[torch.randperm(len(idx), generator=g).numpy()]   # mix classes across batches
    return ds.subset(idx, f"[calib {n}]")


def calib_batches(spec: str, n: int, sample_shape: tuple[int, ...], batch: int = 8, seed: int = 0) -> list[tuple]:
    """Calibration batches (inputs only) from the training split of a --data spec."""
    ds = load(spec, "train", sample_shape, allow_flat=True)
    check_shape(ds, sample_shape)
    return subset_batches(ds, n, seed, batch)


def subset_batches(ds: Dataset, n: int, seed: int = 0, batch: int = 8) -> list[tuple]:
    """The inputs of a stratified subset of `n` samples of `ds` (calibration_subset), in batches."""
    return [(x,) for x, _ in calibration_subset(ds, n, seed).batches(batch)]


def check_shape(ds: Dataset, sample_shape: tuple[int, ...]) -> None:
    if tuple(sample_shape) != ds.sample_shape:
        raise CompressError(f"the model takes inputs of shape {tuple(sample_shape)} per sample, "
                            f"{ds.name} has {ds.sample_shape}")


def file_sha256(paths) -> list[str]:
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append(h.hexdigest())
    return out
