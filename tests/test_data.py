"""compress.accuracy.data: IDX reader, --data specs, image folders, calibration subsets."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from compress.accuracy import data
from compress.errors import CompressError

FMNIST_INSTALLED = os.path.isfile(os.path.join(data.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz"))


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    arr = np.asarray(arr)
    dt = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    head = bytes([0, 0, type_code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return head + arr.astype(dt).tobytes()


def write_idx(path, arr, gz: bool = False, type_code: int = 0x08) -> str:
    raw = idx_bytes(arr, type_code)
    with open(path, "wb") as f:
        f.write(gzip.compress(raw, mtime=0) if gz else raw)
    return str(path)


def make_idx_dir(d, n_train=40, n_test=20, classes=4, hw=(6, 5), gz=True, seed=0):
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, *hw)).astype(np.uint8), gz)
        write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n) % classes, gz)
    return d


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "a.idx", a, gz)
    out = data.read_idx(p)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and (out == a).all()
    f = np.linspace(-1, 1, 6).reshape(3, 2)
    assert np.allclose(data.read_idx(write_idx(tmp_path / "f.idx", f, gz, 0x0D)), f)
    i = np.array([-5, 70000, 3])
    assert (data.read_idx(write_idx(tmp_path / "i.idx", i, gz, 0x0C)) == i).all()


def test_idx_split_scaling_and_shapes(tmp_path):
    make_idx_dir(tmp_path)
    ds = data.load(str(tmp_path), "train")
    assert ds.images.shape == (40, 1, 6, 5) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == [i % 4 for i in range(40)]
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    raw = data.read_idx(str(tmp_path / "train-images-idx3-ubyte.gz"))
    assert torch.allclose(ds.images[:, 0], torch.from_numpy(raw.astype(np.float32)) / 255)
    assert ds.classes == ("0", "1", "2", "3") and not ds.exact_classes
    te = data.load(str(tmp_path), "test")
    assert len(te) == 20 and te.num_classes == 4


def test_idx_raw_files_and_test_prefix(tmp_path):
    rng = np.random.default_rng(1)
    write_idx(tmp_path / "test-images-idx3-ubyte", rng.integers(0, 256, (5, 4, 4)).astype(np.uint8))
    write_idx(tmp_path / "test-labels-idx1-ubyte", np.array([0, 1, 2, 1, 0]))
    ds = data.load(str(tmp_path), "test")
    assert ds.images.shape == (5, 1, 4, 4) and ds.num_classes == 3
    with pytest.raises(CompressError, match="no train split"):
        data.load(str(tmp_path), "train")


@pytest.mark.parametrize("case", ["missing", "file", "empty_dir", "magic", "truncated", "trailing",
                                  "count", "range", "gzip", "label_dims"])
def test_bad_inputs(tmp_path, case):
    make_idx_dir(tmp_path)
    spec, match = str(tmp_path), None
    img, lab = tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz"
    if case == "missing":
        spec, match = str(tmp_path / "nope"), "does not exist"
    elif case == "file":
        spec, match = str(img), "not a directory"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        spec, match = str(tmp_path / "empty"), "neither IDX files"
    elif case == "magic":
        img.write_bytes(gzip.compress(b"\x08\x03\x00\x00" + b"\x00" * 64))
        match = "bad magic"
    elif case == "truncated":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw[:-7]))
        match = "truncated"
    elif case == "trailing":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw + b"\x00"))
        match = "trailing"
    elif case == "count":
        write_idx(lab, np.zeros(19), gz=True)
        match = "19 labels for 20 images"
    elif case == "range":
        data.NAMED["tiny-named"] = (str(tmp_path), ("a", "b"), "some-package")
        spec, match = "tiny-named", "labels out of range"
    elif case == "gzip":
        img.write_bytes(img.read_bytes()[:30])
        match = "gzip"
    elif case == "label_dims":
        write_idx(lab, np.zeros((20, 2)), gz=True)
        match = "1-D integer"
    try:
        with pytest.raises(CompressError, match=match) as ei:
            data.load(spec, "test")
        assert "\n" not in str(ei.value)
    finally:
        data.NAMED.pop("tiny-named", None)


def test_named_dataset_missing_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(data.NAMED, "fashion-mnist", (str(tmp_path / "absent"), data.FASHION_MNIST_CLASSES,
                                                      "dataset-fashion-mnist"))
    with pytest.raises(CompressError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", "test")


@pytest.mark.skipif(not FMNIST_INSTALLED, reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    tr, te = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.labels.shape == (60000,) and te.labels.shape == (10000,)
    assert tr.labels.min() == 0 and tr.labels.max() == 9 and te.labels.min() == 0 and te.labels.max() == 9
    assert (torch.bincount(te.labels) == 1000).all()
    assert te.classes[0] == "T-shirt/top" and te.exact_classes
    assert 0.2 < float(te.images.mean()) < 0.4 and float(te.images.max()) == 1.0


def test_calibration_subset_is_stratified_and_seeded(tmp_path):
    make_idx_dir(tmp_path, n_train=100, classes=4)
    ds = data.load(str(tmp_path), "train")
    labels = ds.labels.clone()
    labels[:40] = 0                       # class 0: 55 samples, others 15 each
    ds = data.Dataset(ds.images, labels, ds.classes, "x")
    a, b, c = (data.calibration_subset(ds, 20, s) for s in (0, 0, 1))
    assert len(a) == 20 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels, minlength=4).tolist() == [11, 3, 3, 3]
    # no sample twice
    assert len({tuple(x.flatten().tolist()) for x in a.images}) == 20
    assert len(data.calibration_subset(ds, 1000)) == 100
    with pytest.raises(CompressError):
        data.calibration_subset(ds, 0)


def _png_tree(root, split, classes, n, size=(9, 7), mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        d = root / split / c if split else root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0]), dtype=np.uint8)
            Image.fromarray(arr, mode).save(d / f"{i}.png")


def test_image_folder_splits(tmp_path):
    _png_tree(tmp_path, "train", ["cat", "dog"], 3)
    _png_tree(tmp_path, "test", ["cat", "dog"], 2)
    tr = data.load(str(tmp_path), "train", (3, 8, 8))
    te = data.load(str(tmp_path), "test", (1, 5, 6))
    assert tr.images.shape == (6, 3, 8, 8) and tr.classes == ("cat", "dog")
    assert tr.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert te.images.shape == (4, 1, 5, 6) and te.images.dtype == torch.float32
    assert float(te.images.max()) <= 1.0


def test_image_folder_flat_is_eval_only(tmp_path):
    _png_tree(tmp_path, None, ["a", "b", "c"], 2, mode="L")
    ds = data.load(str(tmp_path), "test", (1, 7, 9))
    assert ds.images.shape == (6, 1, 7, 9) and ds.num_classes == 3
    with pytest.raises(CompressError, match="fine-tuning needs"):
        data.load(str(tmp_path), "train", (1, 7, 9), allow_flat=False)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CompressError, match="not a readable image"):
        data.load(str(tmp_path), "test", (1, 7, 9))
