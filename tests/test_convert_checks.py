"""from_state_dict and torchvision_to_timm_keys on malformed state dicts (as read from an untrusted
file): a StateDictMismatchError naming the offending key, raised before any model is built."""
import functools
import types
import warnings
from dataclasses import replace

import pytest
import torch

import fastmbconv as fm
from fastmbconv import convert
from fastmbconv.convert import infer_architecture, torchvision_to_timm_keys

from .helpers import torchvision_style_state_dict


@functools.lru_cache(maxsize=None)
def _b0_state_dict() -> dict:
    return dict(fm.efficientnet_b0().state_dict())


def _with(**changes) -> dict:
    sd = dict(_b0_state_dict())
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del sd[key]
        else:
            sd[key] = value
    return sd


def _grown_stage(stage: int, blocks: int) -> dict:
    """B0 with stage ``stage`` given ``blocks`` blocks (copies of its block 0)."""
    sd = dict(_b0_state_dict())
    block0 = {k[len(f"blocks.{stage}.0."):]: v for k, v in sd.items() if k.startswith(f"blocks.{stage}.0.")}
    for j in range(blocks):
        sd.update({f"blocks.{stage}.{j}.{k}": v for k, v in block0.items()})
    return sd


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if anything builds an EfficientNet (on any device)."""
    def refuse(*args, **kwargs):
        raise AssertionError("an EfficientNet was built before the state dict was checked")
    monkeypatch.setattr(convert, "EfficientNet", refuse)


Z = torch.zeros
BAD_STATE_DICTS = {
    # block numbering and counts
    "gap in block indices": (lambda: _with(blocks__6__999999__x=Z(1)), r"'blocks\.6\.999999\.x'"),
    "too many blocks": (lambda: _grown_stage(6, 9), r"blocks\.6 has 9 blocks"),
    # widths, expansion, kernels
    "expanded stem claiming 1e6 channels": (
        lambda: _with(conv_stem__weight=Z(1, 1, 1, 1).expand(10**6, 3, 3, 3)), r"'conv_stem\.weight'.*expanded"),
    "expanded classifier claiming 1e7 classes": (
        lambda: _with(classifier__weight=Z(1, 1).expand(10**7, 1280)), r"'classifier\.weight'"),
    "dense stem over the width limit": (lambda: _with(conv_stem__weight=Z(200, 3, 3, 3)), r"'conv_stem\.weight'.*200"),
    "empty stem": (lambda: _with(conv_stem__weight=Z(0, 3, 3, 3)), r"'conv_stem\.weight'"),
    "expansion over the limit": (lambda: _with(blocks__1__0__conv_pw__weight=Z(16 * 13, 16, 1, 1)),
                                 r"'blocks\.1\.0\.conv_pw\.weight'.*13"),
    "expansion not a multiple": (lambda: _with(blocks__1__0__conv_pw__weight=Z(100, 16, 1, 1)),
                                 r"'blocks\.1\.0\.conv_pw\.weight'.*100"),
    "even kernel": (lambda: _with(blocks__1__0__conv_dw__weight=Z(96, 1, 4, 4)), r"'blocks\.1\.0\.conv_dw\.weight'"),
    "non-square kernel": (lambda: _with(blocks__1__0__conv_dw__weight=Z(96, 1, 3, 5)),
                          r"'blocks\.1\.0\.conv_dw\.weight'"),
    "kernel over the limit": (lambda: _with(blocks__1__0__conv_dw__weight=Z(96, 1, 11, 11)),
                              r"'blocks\.1\.0\.conv_dw\.weight'"),
    "SE wider than the block input": (lambda: _with(blocks__1__0__se__conv_reduce__weight=Z(17, 96, 1, 1)),
                                      r"'blocks\.1\.0\.se\.conv_reduce\.weight'"),
    # missing keys a block's kind needs
    "missing SE": (lambda: _with(blocks__0__0__se__conv_reduce__weight=None),
                   r"'blocks\.0\.0\.se\.conv_reduce\.weight'"),
    "missing depthwise": (lambda: _with(blocks__2__0__conv_dw__weight=None), r"'blocks\.2\.0\.conv_dw\.weight'"),
    "missing expand": (lambda: _with(blocks__2__0__conv_pw__weight=None), r"'blocks\.2\.0\.conv_pw\.weight'"),
    "missing project": (lambda: _with(blocks__2__0__conv_pwl__weight=None), r"'blocks\.2\.0\.conv_pwl\.weight'"),
    "missing in a later block": (lambda: _with(blocks__3__1__conv_dw__weight=None), r"'blocks\.3\.1\.conv_dw\.weight'"),
    # tensors of the wrong rank
    "0-d stem": (lambda: _with(conv_stem__weight=torch.tensor(1.0)), r"'conv_stem\.weight'"),
    "1-d stem": (lambda: _with(conv_stem__weight=Z(32)), r"'conv_stem\.weight'"),
    "0-d SE": (lambda: _with(blocks__0__0__se__conv_reduce__weight=torch.tensor(1.0)),
               r"'blocks\.0\.0\.se\.conv_reduce\.weight'"),
    "0-d head": (lambda: _with(conv_head__weight=torch.tensor(1.0)), r"'conv_head\.weight'"),
    "1-d classifier": (lambda: _with(classifier__weight=Z(1000)), r"'classifier\.weight'"),
    # entries that are not dense tensors under string keys
    "non-tensor value": (lambda: _with(conv_head__weight=3), r"'conv_head\.weight' is a int"),
    "non-string key": (lambda: {**_b0_state_dict(), 7: Z(1)}, r"key 7 is a int"),
    "meta tensor": (lambda: _with(conv_stem__weight=torch.empty(32, 3, 3, 3, device="meta")), r"'conv_stem\.weight'"),
    "sparse tensor": (lambda: _with(classifier__bias=Z(1000).to_sparse()), r"'classifier\.bias'"),
    # values a model would silently cast or compute NaN from (the check load_weights shares)
    "NaN weight": (lambda: _with(conv_head__weight=torch.full((1280, 320, 1, 1), float("nan"))),
                   r"'conv_head\.weight' holds 409600 NaN"),
    "integer weight": (lambda: _with(conv_stem__weight=Z(32, 3, 3, 3, dtype=torch.int32)),
                       r"'conv_stem\.weight' is torch\.int32"),
}


@pytest.mark.parametrize("case", list(BAD_STATE_DICTS))
def test_malformed_state_dict_rejected_before_building(case, no_build):
    make, match = BAD_STATE_DICTS[case]
    with pytest.raises(fm.StateDictMismatchError, match=match):
        fm.from_state_dict(make(), pad_mode="symmetric")


def test_limits_admit_l2_and_custom_scales():
    """Up to 2.5x B7's width and 2x its depth: timm's tf_efficientnet_l2 (width 4.3, depth 5.3)
    still converts; one stage past the limit does not."""
    with torch.device("meta"):
        l2 = fm.efficientnet(width_mult=4.3, depth_mult=5.3)
    assert infer_architecture(l2.state_dict())["stages"] == l2.stages
    with pytest.raises(fm.StateDictMismatchError, match=r"blocks\.5 has 26 blocks"):
        infer_architecture(_grown_stage(5, 26))


def test_shape_mismatch_is_found_on_meta_before_allocating(monkeypatch):
    """A state dict whose shapes do not fit the inferred model fails on the meta device: the real
    model is never built."""
    real = convert.EfficientNet
    devices = []

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)  # the default device the model is built on
        return real(*args, **kwargs)

    monkeypatch.setattr(convert, "EfficientNet", spy)
    with pytest.raises(fm.StateDictMismatchError, match=r"blocks\.1\.1\.conv_dw\.weight"):
        fm.from_state_dict(_with(blocks__1__1__conv_dw__weight=Z(144, 1, 5, 5)), pad_mode="symmetric")
    assert devices == ["meta"]


# ---------------------------------------------------------------- torchvision key names
@functools.lru_cache(maxsize=None)
def _tv_b0() -> dict:
    return torchvision_style_state_dict(fm.efficientnet_b0())


@pytest.mark.parametrize("key", ["features.x.weight", "features.", "features.0.0.extra.weight",
                                 "features.8.1.sub.weight", "features.0.3.block.0.0.weight", "classifier.1.a.b",
                                 "features." + "9" * 5000 + ".0.weight"], ids=lambda key: key[:30])
def test_torchvision_malformed_keys_named(key):
    sd = {**_tv_b0(), key: _tv_b0()["features.0.0.weight"].clone()}
    with pytest.raises(fm.StateDictMismatchError, match="no timm counterpart") as err:
        torchvision_to_timm_keys(sd)
    assert key[:60] in str(err.value)


def test_torchvision_without_numbered_features():
    with pytest.raises(fm.StateDictMismatchError, match=r"'features\.x\.0\.weight'"):
        fm.from_state_dict({"features.x.0.weight": Z(1)}, key_format="torchvision")


def test_torchvision_keys_mapping_to_one_timm_key_rejected():
    """``features.1.00`` and ``features.1.0`` are the same block: one would silently replace the other."""
    sd = dict(_tv_b0())
    sd["features.1.00.block.0.0.weight"] = torch.zeros_like(sd["features.1.0.block.0.0.weight"])
    with pytest.raises(fm.StateDictMismatchError, match=r"features\.1\.00\.block\.0\.0\.weight.*blocks\.0\.0\.conv_dw"):
        torchvision_to_timm_keys(sd)


# ---------------------------------------------------------------- padding, variant names, pooling
def test_timm_keys_need_pad_mode():
    """timm's efficientnet_* and tf_efficientnet_* weights look alike, and the wrong padding
    changes every output: the caller must say which."""
    with pytest.raises(TypeError, match=r"pad_mode.*tf_efficientnet"):
        fm.from_state_dict(_b0_state_dict())
    assert fm.from_state_dict(_b0_state_dict(), pad_mode="same").bn_eps == 1e-3


def test_variant_name_needs_the_variant_se_width():
    stages = tuple(replace(s, se_ratio=0.5) for s in fm.B0_STAGES)
    sd = fm.EfficientNet(stages=stages).state_dict()
    out = fm.from_state_dict(sd, pad_mode="symmetric")
    assert out.stages == stages and getattr(out, "variant", None) is None


@pytest.mark.parametrize("pool, num_classes", [("max", 1000), ("", 0)])
def test_from_timm_keeps_global_pool(pool, num_classes):
    src = fm.efficientnet_b0(num_classes=num_classes, global_pool=pool)
    assert fm.from_timm(src).global_pool == pool


def test_from_timm_of_a_compiled_model_converts_the_original():
    src = fm.efficientnet_b0(num_classes=7)
    out = fm.from_timm(torch.compile(src))  # the wrapper compiles nothing until it is called
    assert out.num_classes == 7 and torch.equal(out.conv_stem.weight, src.conv_stem.weight)


class _FrozenBN(torch.nn.Module):
    """timm's FrozenBatchNorm2d as from_timm sees it: BN's buffers and eps, no BatchNorm2d, no
    num_batches_tracked."""

    def __init__(self, bn):
        super().__init__()
        self.eps = bn.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach().clone())


def _replace_bns(model, make):
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.BatchNorm2d):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, make(module))
    return model


def test_from_timm_of_frozen_batchnorms_converts_their_values():
    src = fm.efficientnet_b0(bn_eps=1e-3)
    with torch.no_grad():
        for i, bn in enumerate(m for m in src.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.fill_(1.0 + i)
    expected = src.state_dict()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fm.from_timm(_replace_bns(src, _FrozenBN))
    assert [str(w.message) for w in caught] == []  # the BN counts they lack are filled quietly
    assert out.bn_eps == 1e-3  # read from the frozen modules
    for key, value in out.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, expected[key]), key
    with pytest.raises(ValueError, match="no BatchNorm"):
        fm.from_timm(_replace_bns(fm.efficientnet_b0(), lambda bn: torch.nn.Identity()))


def test_from_state_dict_refuses_what_the_weights_fix():
    with pytest.raises(TypeError, match="reads in_chans, num_classes from the weights.*create_model"):
        fm.from_state_dict(_b0_state_dict(), pad_mode="symmetric", num_classes=10, in_chans=1)
    with pytest.raises(TypeError, match=r"reads stem_channels from the weights' shapes and cannot take them as "
                                        r"arguments$"):
        fm.from_state_dict(_b0_state_dict(), pad_mode="symmetric", stem_channels=16)
    assert fm.from_state_dict(_b0_state_dict(), pad_mode="symmetric", global_pool="max").global_pool == "max"


def test_from_timm_reads_timm_pool_modules():
    """timm's global_pool is a SelectAdaptivePool2d; its "fast" pools compute the same."""
    src = fm.efficientnet_b0()
    for pool_type, expected in [("fastmax", "max"), ("fast", "avg"), ("fastavg", "avg"), ("max", "max")]:
        src.global_pool = types.SimpleNamespace(pool_type=pool_type)
        assert fm.from_timm(src).global_pool == expected, pool_type


def test_from_timm_rejects_unsupported_pool():
    src = fm.efficientnet_b0()
    src.global_pool = types.SimpleNamespace(pool_type="catavgmax")
    with pytest.raises(ValueError, match="catavgmax"):
        fm.from_timm(src)
