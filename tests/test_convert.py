"""Weight compatibility: hand-built peer state dicts always; real timm/torchvision when they import."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv.convert import torchvision_to_timm_keys

from .helpers import import_or_skip, randomize_bn

VARIANTS = sorted(fm.VARIANTS)
# Odd sizes at batch 1: every stride-2 layer sees odd and even extents, and TF SAME pads
# asymmetrically; 1x1 is the degenerate case. Small, so B7 stays cheap on 2 CPU cores.
ODD_SIZES = [(33, 47), (57, 7), (1, 1)]


def _torchvision_style_state_dict(model: fm.EfficientNet) -> dict:
    """Write a fastmbconv model's weights under torchvision's key names, by hand, following
    torchvision's module layout (features.0 stem, features.1-7 stages, features.8 head,
    classifier.1), so the conversion is tested without torchvision installed."""
    sd, src = {}, model.state_dict()

    def put(tv_prefix, timm_prefix):
        for k, v in src.items():
            if k.startswith(timm_prefix + "."):
                sd[tv_prefix + k[len(timm_prefix):]] = v

    put("features.0.0", "conv_stem")
    put("features.0.1", "bn1")
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            tv, tm = f"features.{i + 1}.{j}.block", f"blocks.{i}.{j}"
            if hasattr(block, "conv_pwl"):
                names = [("0.0", "conv_pw"), ("0.1", "bn1"), ("1.0", "conv_dw"), ("1.1", "bn2"),
                         ("2.fc1", "se.conv_reduce"), ("2.fc2", "se.conv_expand"), ("3.0", "conv_pwl"), ("3.1", "bn3")]
            else:
                names = [("0.0", "conv_dw"), ("0.1", "bn1"), ("1.fc1", "se.conv_reduce"),
                         ("1.fc2", "se.conv_expand"), ("2.0", "conv_pw"), ("2.1", "bn2")]
            for tv_sub, tm_sub in names:
                put(f"{tv}.{tv_sub}", f"{tm}.{tm_sub}")
    put("features.8.0", "conv_head")
    put("features.8.1", "bn2")
    put("classifier.1", "classifier")
    return sd


@pytest.mark.parametrize("name", ["b0", "b3"])
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_from_state_dict_timm_keys_roundtrip(name, pad_mode):
    src = randomize_bn(getattr(fm, f"efficientnet_{name}")(pad_mode=pad_mode)).eval()
    out = fm.from_state_dict(src.state_dict(), pad_mode=pad_mode, bn_eps=src.bn_eps).eval()
    assert out.stages == src.stages and out.default_resolution == src.default_resolution
    x = torch.randn(2, 3, 45, 37)
    with torch.no_grad():
        torch.testing.assert_close(out(x), src(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["b0", "b2"])
def test_from_state_dict_torchvision_keys(name):
    src = randomize_bn(getattr(fm, f"efficientnet_{name}")()).eval()
    tv_sd = _torchvision_style_state_dict(src)
    assert "features.1.0.block.0.0.weight" in tv_sd and "classifier.1.weight" in tv_sd
    assert set(torchvision_to_timm_keys(tv_sd)) == set(src.state_dict())
    out = fm.from_state_dict(tv_sd, key_format="torchvision").eval()
    x = torch.randn(1, 3, 50, 66)
    with torch.no_grad():
        torch.testing.assert_close(out(x), src(x), rtol=0, atol=0)


def test_custom_scale_state_dict_converts():
    src = fm.efficientnet(phi=1.5, num_classes=17).eval()
    out = fm.from_state_dict(src.state_dict())
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
    sd = _torchvision_style_state_dict(fm.efficientnet_b0())
    sd["features.3.0.block.7.0.weight"] = torch.zeros(1)
    with pytest.raises(fm.StateDictMismatchError, match="block.7.0"):
        fm.from_state_dict(sd, key_format="torchvision")


def test_not_an_efficientnet():
    with pytest.raises(TypeError, match="timm EfficientNet"):
        fm.from_timm(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torchvision EfficientNet"):
        fm.from_torchvision(torch.nn.Linear(2, 2))
    with pytest.raises(fm.StateDictMismatchError, match="conv_stem"):
        fm.from_state_dict({"a": torch.zeros(1)})


# ---------------------------------------------------------------- the real peer libraries
def _max_diff(a: torch.nn.Module, b: torch.nn.Module, hw) -> float:
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("prefix", ["", "tf_"])
def test_from_timm_parity(name, prefix):
    timm = import_or_skip("timm")
    torch.manual_seed(0)
    src = randomize_bn(timm.create_model(f"{prefix}efficientnet_{name}")).eval()
    model = fm.from_timm(src).eval()
    assert fm.count_params(model) == fm.count_params(src)
    assert model.pad_mode == ("same" if prefix else "symmetric")
    assert model.bn_eps == (1e-3 if prefix else 1e-5)
    for hw in ODD_SIZES:
        assert _max_diff(src, model, hw) <= 1e-4, hw


@pytest.mark.parametrize("name", VARIANTS)
def test_from_torchvision_parity(name):
    tvm = import_or_skip("torchvision.models")
    torch.manual_seed(0)
    src = randomize_bn(getattr(tvm, f"efficientnet_{name}")()).eval()
    model = fm.from_torchvision(src).eval()
    assert fm.count_params(model) == fm.count_params(src)
    assert model.bn_eps == src.features[0][1].eps  # 1e-5 for B0-B4, 1e-3 for B5-B7
    for hw in ODD_SIZES:
        assert _max_diff(src, model, hw) <= 1e-4, hw
