"""Weight compatibility: hand-built peer state dicts always; real timm/torchvision when they import."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv.convert import torchvision_to_timm_keys

from .helpers import import_or_skip, randomize_bn, timm_model, torchvision_style_state_dict

VARIANTS = sorted(fm.VARIANTS)
# Odd sizes at batch 1: every stride-2 layer sees odd and even extents, and TF SAME pads
# asymmetrically; 1x1 is the degenerate case. Small, so B7 stays cheap on 2 CPU cores.
ODD_SIZES = [(33, 47), (57, 7), (1, 1)]


@pytest.mark.parametrize("name", ["b0", "b3"])
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_from_state_dict_timm_keys_roundtrip(name, pad_mode):
    src = randomize_bn(getattr(fm, f"efficientnet_{name}")(pad_mode=pad_mode), size=(45, 37)).eval()
    out = fm.from_state_dict(src.state_dict(), pad_mode=pad_mode, bn_eps=src.bn_eps).eval()
    assert out.stages == src.stages and out.default_resolution == src.default_resolution
    x = torch.randn(2, 3, 45, 37)
    with torch.no_grad():
        torch.testing.assert_close(out(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["b0", "b2"])
def test_from_state_dict_torchvision_keys(name):
    src = randomize_bn(getattr(fm, f"efficientnet_{name}")(), size=(50, 66)).eval()
    tv_sd = torchvision_style_state_dict(src)
    assert "features.1.0.block.0.0.weight" in tv_sd and "classifier.1.weight" in tv_sd
    assert set(torchvision_to_timm_keys(tv_sd)) == set(src.state_dict())
    out = fm.from_state_dict(tv_sd, key_format="torchvision").eval()
    x = torch.randn(1, 3, 50, 66)
    with torch.no_grad():
        torch.testing.assert_close(out(x), src(x), rtol=0, atol=0)


def test_custom_scale_state_dict_converts():
    src = fm.efficientnet(phi=1.5, num_classes=17).eval()
    out = fm.from_state_dict(src.state_dict(), pad_mode="symmetric")
    assert out.stages == src.stages and out.num_classes == 17


def test_missing_unexpected_and_shape_mismatch_are_listed():
    model = fm.efficientnet_b0()
    sd = model.state_dict()
    sd.pop("blocks.2.1.conv_dw.weight")
    sd["blocks.9.0.extra"] = torch.zeros(1)
    sd["classifier.weight"] = torch.zeros(10, 1280)
    with pytest.raises(fm.StateDictMismatchError) as err:
        model.load_state_dict(sd)
    msg = str(err.value)
    assert "blocks.2.1.conv_dw.weight" in msg and "blocks.9.0.extra" in msg
    assert "classifier.weight: checkpoint (10, 1280) vs model (1000, 1280)" in msg
    assert "1 missing keys" in msg and "1 unexpected keys" in msg


def test_non_strict_load_still_rejects_shape_mismatch():
    model = fm.efficientnet_b0()
    with pytest.raises(fm.StateDictMismatchError, match="conv_stem.weight"):
        model.load_state_dict({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, strict=False)


def test_torchvision_keys_with_unknown_entries_rejected():
    sd = torchvision_style_state_dict(fm.efficientnet_b0())
    sd["features.3.0.block.7.0.weight"] = torch.zeros(1)
    with pytest.raises(fm.StateDictMismatchError, match="block.7.0"):
        fm.from_state_dict(sd, key_format="torchvision")


def test_not_an_efficientnet():
    with pytest.raises(TypeError, match="timm EfficientNet"):
        fm.from_timm(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torchvision EfficientNet"):
        fm.from_torchvision(torch.nn.Linear(2, 2))
    with pytest.raises(fm.StateDictMismatchError, match="conv_stem"):
        fm.from_state_dict({"a": torch.zeros(1)}, pad_mode="symmetric")


# ---------------------------------------------------------------- the real peer libraries
def _max_diff(a: torch.nn.Module, b: torch.nn.Module, hw) -> float:
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("prefix", ["", "tf_"])
def test_from_timm_parity(name, prefix):
    src = timm_model(f"{prefix}efficientnet_{name}", ODD_SIZES[0])
    model = fm.from_timm(src).eval()
    assert fm.count_params(model) == fm.count_params(src)
    assert model.pad_mode == ("same" if prefix else "symmetric")
    assert model.bn_eps == (1e-3 if prefix else 1e-5)
    for hw in ODD_SIZES:
        assert _max_diff(src, model, hw) <= 1e-4, hw


@pytest.mark.parametrize("prefix", ["", "tf_"])
def test_from_timm_of_frozen_batchnorms(prefix):
    """timm's freeze_batch_norm_2d (detection backbones) swaps every BN for a frozen one."""
    timm = import_or_skip("timm")
    src = timm.layers.freeze_batch_norm_2d(timm_model(f"{prefix}efficientnet_b0", ODD_SIZES[0]))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in src.modules())
    model = fm.from_timm(src).eval()
    assert model.bn_eps == (1e-3 if prefix else 1e-5)
    assert _max_diff(src, model, ODD_SIZES[0]) <= 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_from_torchvision_parity(name):
    tvm = import_or_skip("torchvision.models")
    torch.manual_seed(0)
    src = randomize_bn(getattr(tvm, f"efficientnet_{name}")(), size=ODD_SIZES[0]).eval()
    model = fm.from_torchvision(src).eval()
    assert fm.count_params(model) == fm.count_params(src)
    assert model.bn_eps == src.features[0][1].eps  # 1e-5 for B0-B4, 1e-3 for B5-B7
    # its state dict alone (no module to read eps from) gets the same eps
    assert fm.from_state_dict(src.state_dict(), key_format="torchvision").bn_eps == model.bn_eps
    for hw in ODD_SIZES:
        assert _max_diff(src, model, hw) <= 1e-4, hw


# ---------------------------------------------------------------- conversion keeps everything
def _drop_probs(model):
    return [b.drop_path.drop_prob for stage in model.blocks for b in stage]


@pytest.mark.parametrize("training", [False, True])
def test_from_timm_keeps_rates_cfg_and_mode(training):
    """A fastmbconv model has timm's layout (attribute names, drop_path per block, drop_rate,
    pretrained_cfg), so it stands in for a timm model where timm does not import."""
    src = fm.create_model("efficientnet_b1.ft_in1k", drop_rate=0.25, drop_path_rate=0.2).train(training)
    src.blocks[1][1].drop_path.drop_prob = 0.05  # off the linear rule: still carried exactly
    out = fm.from_timm(src)
    assert out.training == training and out.drop_rate == 0.25 and out.drop_path_rate == 0.2
    assert _drop_probs(out) == _drop_probs(src) and max(_drop_probs(out)) > 0.18 and _drop_probs(out)[3] == 0.05
    assert out.pretrained_cfg == src.pretrained_cfg and out.pretrained_cfg is not src.pretrained_cfg
    assert out.pretrained_cfg["test_input_size"] == (3, 256, 256) and out.variant == "efficientnet_b1"


class _StochasticDepth(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.stochastic_depth = type("StochasticDepth", (), {"p": p})()


class _TorchvisionShaped(torch.nn.Module):
    """torchvision's EfficientNet as from_torchvision reads it: features[1:-1] hold the blocks
    (each with stochastic_depth.p), classifier = (Dropout, Linear), torchvision's key names."""

    def __init__(self, src, rate, dropout):
        super().__init__()
        self._sd = torchvision_style_state_dict(src)
        n = sum(len(s) for s in src.blocks)
        ids = iter(range(n))
        self.features = torch.nn.Sequential(
            torch.nn.BatchNorm2d(1), *[torch.nn.Sequential(*[_StochasticDepth(rate * next(ids) / n) for _ in s])
                                       for s in src.blocks], torch.nn.Identity())
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(1, 1))

    def state_dict(self, *args, **kwargs):
        return self._sd


@pytest.mark.parametrize("training", [False, True])
def test_from_torchvision_keeps_rates_and_mode(training):
    src = randomize_bn(fm.efficientnet_b0(), size=40).eval()
    out = fm.from_torchvision(_TorchvisionShaped(src, 0.2, 0.2).train(training))
    assert out.training == training and out.drop_rate == 0.2 and out.drop_path_rate == 0.2
    assert _drop_probs(out) == [0.2 * i / 16 for i in range(16)]
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(out.eval()(x), src(x), rtol=0, atol=0)


def test_torchvision_weights_give_pretrained_cfg():
    """torchvision's eval transform (resize the short side, centre crop) as timm's crop_pct."""
    transforms = type("T", (), dict(crop_size=[300], resize_size=[320], mean=[0.485, 0.456, 0.406],
                                    std=[0.229, 0.224, 0.225],
                                    interpolation=type("I", (), {"value": "bicubic"})()))
    weights = type("W", (), dict(transforms=lambda self: transforms(), meta={"categories": ["a"] * 1000}))()
    cfg = fm.convert.torchvision_cfg(weights)
    assert cfg["input_size"] == (3, 300, 300) and cfg["crop_pct"] == 300 / 320 and cfg["interpolation"] == "bicubic"
    assert fm.eval_transform(cfg).crop_pct == 0.9375
    transforms.crop_size, transforms.resize_size = [240], [255]
    import math

    assert math.floor(240 / fm.convert.torchvision_cfg(weights)["crop_pct"]) == 255


@pytest.mark.parametrize("training", [False, True])
def test_real_peers_keep_rates_cfg_and_mode(training):
    timm = import_or_skip("timm")
    src = timm.create_model("tf_efficientnet_b0.ap_in1k", drop_rate=0.3, drop_path_rate=0.2).train(training)
    out = fm.from_timm(src)
    assert (out.training, out.drop_rate, out.drop_path_rate) == (training, 0.3, 0.2)
    assert _drop_probs(out) == [float(getattr(b.drop_path, "drop_prob", 0.0)) for s in src.blocks for b in s]
    assert out.pretrained_cfg == src.pretrained_cfg and out.variant == "tf_efficientnet_b0"
    tvm = import_or_skip("torchvision.models")
    tv = tvm.efficientnet_b0().train(training)  # torchvision's default stochastic depth: 0.2
    out = fm.from_torchvision(tv, weights=tvm.EfficientNet_B0_Weights.IMAGENET1K_V1)
    assert (out.training, out.drop_rate, out.drop_path_rate) == (training, 0.2, 0.2)
    assert _drop_probs(out) == [b.stochastic_depth.p for s in list(tv.features)[1:-1] for b in s]
    assert out.pretrained_cfg["input_size"] == (3, 224, 224) and out.pretrained_cfg["crop_pct"] == 0.875
