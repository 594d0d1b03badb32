"""compress.accuracy.schedules: the cubic schedule (Zhu & Gupta 2017), gradual and iterative pruning end to end,
`compress prune --schedule`, and the plan's record of --weights."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from compress.accuracy import data, schedules
from compress import models
from compress.errors import CompressError
from compress.prune.plan import PruneConfig, PrunePlan
from compress.prune.apply import prune
from compress.accuracy.schedules import PruneSchedule, cubic_sparsity
from tests.test_evaluate import _main, make_learnable_idx, tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the schedules' ratios

def test_cubic_sparsity_matches_zhu_and_gupta():
    # s_t = s_f + (s_i - s_f) (1 - t/n)^3
    assert [cubic_sparsity(0.5, t, 4) for t in range(5)] == pytest.approx(
        [0.0, 0.5 * (1 - 0.75 ** 3), 0.5 * (1 - 0.5 ** 3), 0.5 * (1 - 0.25 ** 3), 0.5])
    assert cubic_sparsity(0.8, 3, 10, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.7 ** 3)
    assert cubic_sparsity(0.5, 7, 4) == 0.5 and cubic_sparsity(0.5, -1, 4) == 0.0        # clamped to [0, n]
    r = PruneSchedule("gradual", 10).ratios(0.75)
    assert len(r) == 10 and r[-1] == pytest.approx(0.75)
    steps = [b - a for a, b in zip([0.0] + r, r)]
    assert all(x > y for x, y in zip(steps, steps[1:]))                # most removed early, least late
    assert PruneSchedule("iterative", 4).ratios(0.4) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert PruneSchedule("oneshot").ratios(0.3) == [0.3]


def test_schedule_validation():
    with pytest.raises(CompressError, match="--schedule"):
        PruneSchedule("cyclic").validate()
    with pytest.raises(CompressError, match="--steps"):
        PruneSchedule("gradual", 0).validate()
    with pytest.raises(CompressError, match="cubic"):
        cubic_sparsity(0.5, 1, 0)


# ---------------------------------------------------------------- gradual and iterative end to end

@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return make_learnable_idx(tmp_path_factory.mktemp("idx") / "quadrants")


@pytest.fixture(scope="module")
def trained(idx_dir):
    from compress.accuracy.train import Schedule, deterministic, fit

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = tiny_cnn()
        with deterministic(0):
            fit(m, data.load(str(idx_dir), "train"), Schedule(lr=0.05, epochs=3, batch_size=32))
    finally:
        torch.set_num_threads(n)
    return m.eval()


def _acc(model, ds) -> float:
    from compress.accuracy.evaluate import accuracy, predict

    return accuracy(predict(model, ds), ds.labels)


@pytest.mark.parametrize("kind,criterion", [("gradual", "l1"), ("iterative", "taylor")])
def test_scheduled_pruning_end_to_end(idx_dir, trained, kind, criterion):
    tr, te = data.load(str(idx_dir), "train"), data.load(str(idx_dir), "test")
    dense_before = {k: v.clone() for k, v in trained.state_dict().items()}
    inputs = (torch.rand(1, 1, 8, 8),)
    calib = [(x,) for x, _ in data.calibration_subset(tr, 64, 0).batches(8)]
    cfg = PruneConfig(ratio=0.5, criterion=criterion)
    sr = schedules.run(trained, inputs, cfg, 1, {"model": "tiny"}, PruneSchedule(kind, 3), tr, 1.5,
                       calib=calib, teacher=trained, lr=0.05, lr_schedule="cosine", batch_size=32)
    # the model passed in is untouched
    assert all(torch.equal(v, dense_before[k]) for k, v in trained.state_dict().items())
    recs = sr.steps
    assert [r.step for r in recs] == [1, 2, 3]
    assert [r.ratio for r in recs] == pytest.approx(PruneSchedule(kind, 3).ratios(0.5))
    assert all(a.channels_after >= b.channels_after for a, b in zip(recs, recs[1:]))
    assert all(a.macs >= b.macs for a, b in zip(recs, recs[1:])) and recs[0].macs > recs[-1].macs
    assert sum(r.epochs for r in recs) == pytest.approx(1.5)
    # the final plan is an ordinary plan with the same channel counts as one shot at the final ratio
    one = prune(trained, inputs, cfg, 1, {"model": "tiny"}, calib=calib)
    assert [g.channels_after for g in sr.result.plan.groups] == [g.channels_after for g in one.plan.groups]
    assert sr.result.plan.config["ratio"] == 0.5 and sr.result.max_rel_error < 1e-4
    pruned = sr.result.model
    assert tuple(pruned(torch.rand(2, 1, 8, 8)).shape) == (2, 4)
    # physically smaller, and recovered on this easy task
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in trained.parameters())
    assert _acc(pruned, te) >= 0.9
    # the plan JSON round-trips and rebuilds the architecture the weights fit
    from compress.prune.structured import apply_keep
    plan = PrunePlan.from_json(sr.result.plan.to_json())
    rebuilt = apply_keep(tiny_cnn(), plan.param_keep())
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(rebuilt.eval()(x), pruned(x))


def test_scheduled_run_rejects_what_it_cannot_do(idx_dir, trained):
    tr = data.load(str(idx_dir), "train")
    inputs = (torch.rand(1, 1, 8, 8),)
    with pytest.raises(CompressError, match="--global"):
        schedules.run(trained, inputs, PruneConfig(ratio=0.5, global_ranking=True), 1, {}, PruneSchedule("gradual"),
                      tr, 1)
    with pytest.raises(CompressError, match="--finetune"):
        schedules.run(trained, inputs, PruneConfig(ratio=0.5), 1, {}, PruneSchedule("gradual"), tr, 0)


# ---------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def weights_file(trained, tmp_path_factory):
    from safetensors.torch import save_model

    p = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_model(trained, str(p))
    return p


def test_prune_cli_gradual(idx_dir, weights_file, tmp_path, capsys):
    out = tmp_path / "gradual"
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:tiny_cnn", "--weights", str(weights_file),
                              "--ratio", "0.5", "--round-to", "1", "--data", str(idx_dir), "--finetune", "4",
                              "--distill", "--lr", "0.05", "--lr-schedule", "cosine", "--schedule", "gradual",
                              "--steps", "2", "--out", str(out), "--json")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schedule"] == "gradual" and summary["onnx_parity"]["ok"]
    recs = summary["schedule_steps"]["records"]
    assert [r["ratio"] for r in recs] == pytest.approx([0.5 * (1 - 0.5 ** 3), 0.5])
    assert summary["finetune"]["distill"] and summary["finetune"]["lr_schedule"] == "cosine"
    assert len(summary["finetune"]["history"]) == 4                    # 2 steps x 2 epochs
    assert summary["accuracy"] >= summary["accuracy_dense"] - 0.05 and json.loads(stdout)["accuracy"] == summary["accuracy"]
    # the directory loads like any pruned model: same weights, plan from the source
    lm = models.load(str(out))
    assert lm.plan.source["model"] == "tests.test_evaluate:tiny_cnn"
    # --weights is recorded: path and the file's sha256
    w = json.loads((out / "plan.json").read_text())["source"]["weights"]
    assert w == {"path": str(weights_file.resolve()),
                 "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest()}
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--round-to", "1",
                              "--out", str(tmp_path / "noweights"))
    assert code == 0, err
    assert "weights" not in json.loads((tmp_path / "noweights" / "plan.json").read_text())["source"]


def test_oneshot_cosine_records_before_and_after(idx_dir, weights_file, tmp_path, capsys):
    out = tmp_path / "cos"
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:tiny_cnn", "--weights", str(weights_file),
                              "--ratio", "0.5", "--round-to", "1", "--data", str(idx_dir), "--finetune", "0.5",
                              "--lr", "0.05", "--lr-schedule", "cosine", "--out", str(out))
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["schedule"] == "oneshot" and s["finetune"]["lr_schedule"] == "cosine"
    assert "accuracy_pruned_before_finetune" in s and "before and" in stdout


@pytest.mark.parametrize("argv,message", [
    (["--schedule", "gradual"], "--finetune"),
    (["--schedule", "gradual", "--finetune", "1", "--steps", "0"], "--steps"),
    (["--schedule", "iterative", "--finetune", "1", "--global"], "--global"),
    (["--lr-schedule", "cosine"], "--finetune"),
    (["--finetune", "1", "--lr-schedule", "cosine", "--lr-rewind"], "exclude"),
])
def test_schedule_bad_input(idx_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    code, stdout, err = _main(capsys, "prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5",
                              "--data", str(idx_dir), "--out", str(out), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_plan_without_weights_field_still_loads(tmp_path):
    """Plans written before source.weights existed are read unchanged (the field is optional)."""
    res = prune(tiny_cnn(), (torch.rand(1, 1, 8, 8),), PruneConfig(ratio=0.5), 1, {"model": "tiny", "sha256": "x"})
    d = json.loads(res.plan.to_json())
    assert "weights" not in d["source"]
    assert PrunePlan.from_json(json.dumps(d)).source == {"model": "tiny", "sha256": "x"}
