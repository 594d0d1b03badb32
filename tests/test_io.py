"""compress.io's atomic file writer: a temporary file in the same folder renamed over the target, mode
0o644, nothing left behind; write_json's format; io stays a leaf (compress.errors at most)."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from compress.io import atomic_file, json_text, write_json, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def strict_umask():
    old = os.umask(0o077)            # what mkstemp's 0600 and a plain open would keep
    yield
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_write_text_atomic_str_and_bytes(tmp_path, strict_umask):
    p = tmp_path / "a.txt"
    write_text_atomic(p, "héllo\n")
    assert p.read_bytes() == "héllo\n".encode()
    write_text_atomic(str(p), b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert mode(p) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]         # no temporary file left


def test_replace_is_a_rename_not_a_rewrite(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    with open(p) as reader:                                 # a reader holding the old file keeps it whole
        write_text_atomic(p, "new")
        assert reader.read() == "old"
    assert p.read_text() == "new"


def test_temporary_file_is_beside_the_target_and_gone_on_failure(tmp_path):
    p = tmp_path / "plot.png"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(p, suffix=".tmp.png") as tmp:
            assert Path(tmp).parent == tmp_path and tmp.endswith(".tmp.png") and Path(tmp).name.startswith(".plot.png.")
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["plot.png"]


def test_write_json_format(tmp_path, strict_umask):
    p = tmp_path / "x.json"
    write_json(str(p), {"b": [1, 2], "a": {"z": None, "y": "é"}})
    assert p.read_text() == '{\n "a": {\n  "y": "\\u00e9",\n  "z": null\n },\n "b": [\n  1,\n  2\n ]\n}\n'
    assert p.read_text() == json.dumps(json.loads(p.read_text()), indent=1, sort_keys=True) + "\n"
    assert json_text({"k": 1}) == '{\n "k": 1\n}\n'
    assert mode(p) == 0o644 and sorted(os.listdir(tmp_path)) == ["x.json"]


def test_unserialisable_json_leaves_the_old_file(tmp_path):
    p = tmp_path / "x.json"
    write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1} and sorted(os.listdir(tmp_path)) == ["x.json"]


def test_io_is_a_leaf():
    tree = ast.parse((ROOT / "compress" / "io.py").read_text())
    ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("compress")}
    ours |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name.startswith("compress")}
    assert ours <= {"compress.errors"}
