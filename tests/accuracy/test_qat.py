"""#22: quantization-aware fine-tuning (compress.accuracy.qat, `compress prune --finetune E --qat`)."""

import torch
from torch import nn

from compress.accuracy.qat import fake_quantized


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 4))


def test_weights_and_inputs_are_seen_on_the_int8_grid_and_restored_after():
    m = _net().eval()
    x = torch.randn(4, 1, 6, 6)
    keys = set(m.state_dict())
    w0 = m[0].weight.detach().clone()
    ref = m(x)
    with fake_quantized(m, [(torch.randn(8, 1, 6, 6),)]) as layers:
        assert layers == ["0", "4"]
        w = m[0].weight.detach()
        scale = w0.abs().reshape(8, -1).amax(1) / 127
        q = w / scale[:, None, None, None]
        assert torch.allclose(q, q.round(), atol=1e-4) and q.abs().max() <= 127 + 1e-4   # per-channel int8
        got = m(x)
        assert not torch.equal(got, ref) and torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()))
    assert set(m.state_dict()) == keys and torch.equal(m[0].weight, w0)             # an fp32 model again
    assert torch.equal(m(x), ref)


def test_gradients_pass_through_the_rounding_to_the_fp32_weights():
    m = _net().train()
    with fake_quantized(m, [(torch.randn(8, 1, 6, 6),)]):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        before = m.state_dict()["0.parametrizations.weight.original"].clone()
        loss = m(torch.randn(8, 1, 6, 6)).pow(2).mean()
        loss.backward()
        opt.step()
        after = m.state_dict()["0.parametrizations.weight.original"]
        assert not torch.equal(before, after)
    assert not torch.equal(m[0].weight, before)                                      # the trained weights stay


def test_prune_qat_end_to_end(tmp_path):
    import json

    from compress.cli import main
    from test_evaluate import make_learnable_idx

    data = make_learnable_idx(tmp_path / "quadrants")
    out = tmp_path / "p"
    code = main(["prune", "tests.test_evaluate:tiny_cnn", "--ratio", "0.5", "--round-to", "1", "--data", str(data),
                 "--finetune", "1", "--qat", "--out", str(out)])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["finetune"]["quantization_aware"] is True and s["onnx_parity"]["ok"]
    assert "model.parametrizations" not in json.dumps(s) and (out / "model.onnx").is_file()


def test_qat_without_fine_tuning_is_bad_input(tmp_path, capsys):
    from compress.cli import main

    code = main(["prune", "compress:fmnist-cnn", "--ratio", "0.3", "--qat", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--qat" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p").exists()
