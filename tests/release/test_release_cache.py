"""The content-addressed step cache: hits on unchanged inputs, misses on changed ones, atomic outputs."""

from __future__ import annotations

import os

import pytest

from compress.errors import CompressError
from compress.release.cache import StepCache, dir_sha256, file_sha256


def _writer(calls: list):
    def fn(tmp: str) -> dict:
        calls.append(tmp)
        with open(os.path.join(tmp, "out.txt"), "w") as f:
            f.write(f"call {len(calls)}")
        return {"n": len(calls)}
    return fn


def test_unchanged_inputs_hit_changed_inputs_miss(tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"weights v1")
    cache = StepCache(str(tmp_path / "cache"))
    calls = []
    d1, r1 = cache.run("export", {"file": file_sha256(str(src)), "target": "cpu"}, _writer(calls))
    d2, r2 = cache.run("export", {"file": file_sha256(str(src)), "target": "cpu"}, _writer(calls))
    assert (d1, r1) == (d2, r2) and len(calls) == 1
    assert open(os.path.join(d1, "out.txt")).read() == "call 1"
    assert cache.misses == [os.path.basename(d1)] and cache.hits == [os.path.basename(d1)]
    # a changed config section or a changed file is a different step
    d3, _ = cache.run("export", {"file": file_sha256(str(src)), "target": "gpu"}, _writer(calls))
    src.write_bytes(b"weights v2, longer")
    d4, r4 = cache.run("export", {"file": file_sha256(str(src)), "target": "cpu"}, _writer(calls))
    assert len({d1, d3, d4}) == 3 and r4 == {"n": 3}
    cache.close()
    # a new process (a new StepCache on the same root) reuses what is there
    again = StepCache(str(tmp_path / "cache"))
    assert again.run("export", {"file": file_sha256(str(src)), "target": "cpu"}, _writer(calls)) == (d4, r4)
    again.close()


def test_interrupted_step_leaves_nothing_and_reruns(tmp_path):
    cache = StepCache(str(tmp_path / "cache"))

    def boom(tmp: str) -> dict:
        with open(os.path.join(tmp, "half.txt"), "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run("prune", {"ratio": 0.5}, boom)
    assert [p for p in os.listdir(tmp_path / "cache") if not p.startswith(".lock")] == []
    calls = []
    d, r = cache.run("prune", {"ratio": 0.5}, _writer(calls))
    assert r == {"n": 1} and not os.path.exists(os.path.join(d, "half.txt"))
    cache.close()


def test_stale_temporary_dirs_from_a_killed_run_are_removed(tmp_path):
    root = tmp_path / "cache"
    stale = root / ".prune-0123.tmp-abcd"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"partial")
    StepCache(str(root)).close()
    assert not stale.exists()


def test_one_run_at_a_time(tmp_path):
    first = StepCache(str(tmp_path / "cache"))
    with pytest.raises(CompressError, match="another compress release is using the cache"):
        StepCache(str(tmp_path / "cache"))
    first.close()
    StepCache(str(tmp_path / "cache")).close()


def test_dir_hash_covers_names_and_contents(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"1")
    h1 = dir_sha256(str(d))
    (d / "a").write_bytes(b"2")
    h2 = dir_sha256(str(d))
    (d / "a").rename(d / "b")
    assert len({h1, h2, dir_sha256(str(d))}) == 3
