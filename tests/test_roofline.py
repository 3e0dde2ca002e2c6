"""The analytic roofline: B0's bytes per image at each fusion level, ordered levels, monotonic in
model size, FLOPs equal to torch's flop counter."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import roofline as rl
from fastmbconv.resnet import resnet50

NAMES = [f"efficientnet_b{i}" for i in range(8)]


@pytest.fixture(scope="module")
def b0():
    return rl.roofline("efficientnet_b0", 224, batch=256, dtype="fp16")


def test_b0_fp16_per_image_bytes(b0):
    # Published estimates for B0 at 224 in fp16 (the README's performance section): eager
    # ~80-94 MB, layer-fused ~27.5 MB, whole block ~3.4-4.2 MB per image. The layer-fused level,
    # by hand: every block reads its input and writes the expanded map (expand), reads that and
    # writes the depthwise map (depthwise), reads that and the residual and writes the output
    # (project); summed over B0's 16 blocks plus stem and head that is 27.5 MB. Weights
    # amortised over batch 256 add ~0.04 MB.
    mb = {lv: b0.bytes_per_image(lv) / 1e6 for lv in rl.LEVELS}
    assert 80 <= mb["eager"] <= 95, mb
    assert mb["layer_fused"] == pytest.approx(27.5, rel=0.03), mb
    assert 3.4 <= mb["whole_block"] <= 4.4, mb


def test_levels_are_ordered(b0):
    assert b0.bytes("eager") > 2.5 * b0.bytes("layer_fused") > 2.5 * 2.5 * b0.bytes("whole_block")
    assert b0.bytes("layer_fused") > b0.bytes("expand_dw_fused") > b0.bytes("whole_block")
    assert rl.LEVELS == ("eager", "layer_fused", "expand_dw_fused", "whole_block")


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b5"])
def test_expand_dw_fused_saves_the_expanded_round_trip(name):
    """Fusing expand and depthwise removes exactly one write and one read of every expanded
    tensor (B0 fp16: 27.6 -> 14.1 MB per image, 51%)."""
    from fastmbconv.builders import model_structure
    from fastmbconv.shapes import walk

    model = model_structure(name)
    res = model.default_resolution
    roof = rl.roofline(model, res, batch=4, dtype="fp16")
    expanded = sum(4 * l.mid_channels * l.height * l.width * 2 for l in walk(model, res, res)
                   if l.kind == "block" and l.has_expand)
    assert roof.bytes("layer_fused") - roof.bytes("expand_dw_fused") == 2 * expanded
    assert roof.weight_bytes("layer_fused") == roof.weight_bytes("expand_dw_fused")
    if name == "efficientnet_b0":
        b256 = rl.roofline(model, res, batch=256, dtype="fp16")
        assert b256.bytes("expand_dw_fused") / b256.bytes("layer_fused") == pytest.approx(0.51, abs=0.01)


@pytest.mark.parametrize("level", rl.LEVELS)
def test_monotonic_in_model_size(level):
    per_image = [rl.roofline(n, batch=32, dtype="fp16").bytes_per_image(level) for n in NAMES]
    flops = [rl.roofline(n, batch=1).flops for n in NAMES]
    assert per_image == sorted(per_image) and len(set(per_image)) == len(per_image)
    assert flops == sorted(flops)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b3"])
def test_flops_match_torch_flop_counter(name):
    with torch.device("meta"):
        model = fm.MODEL_BUILDERS[name]()
    res = model.default_resolution
    assert rl.roofline(model, res, batch=2).flops == fm.count_flops(model, res, batch=2)


def test_scaling_with_batch_dtype_and_resolution(b0):
    one = rl.roofline("efficientnet_b0", 224, batch=1, dtype="fp16")
    # activations scale with the batch, weights do not
    for lv in rl.LEVELS:
        w = one.weight_bytes(lv)
        assert b0.bytes(lv) - b0.weight_bytes(lv) == 256 * (one.bytes(lv) - w)
        assert b0.weight_bytes(lv) == w
    fp32 = rl.roofline("efficientnet_b0", 224, batch=1, dtype="fp32")
    assert fp32.bytes("eager") == 2 * one.bytes("eager")
    assert rl.roofline("efficientnet_b0", 112, batch=1).flops < one.flops / 3.5
    # weights: B0 has 5.29 M parameters; every level reads them once (+BN / folded biases)
    params = fm.count_params(fm.efficientnet_b0())
    assert 2 * params <= one.weight_bytes("eager") <= 2 * params * 1.02


def test_ops_and_kinds(b0):
    kinds = b0.by_kind("eager")
    assert set(kinds) <= set(rl.KINDS)
    assert kinds["depthwise"]["ops"] == 16 and kinds["1x1"]["ops"] == 15 + 16 + 0  # expand 15, project 16
    assert kinds["elementwise"]["flops"] == 0
    # depthwise and SE are memory-bound, the 1x1 convs far less so
    assert kinds["depthwise"]["intensity"] < kinds["1x1"]["intensity"]
    assert kinds["se"]["intensity"] < 1
    assert b0.summary()["mb_per_image_layer_fused"] == pytest.approx(b0.bytes_per_image("layer_fused") / 1e6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        rl.roofline("efficientnet_b9")
    with pytest.raises(ValueError, match="dtype"):
        rl.roofline("b0", dtype="int8")
    with pytest.raises(ValueError, match="batch"):
        rl.roofline("b0", batch=0)
    with pytest.raises(TypeError, match="EfficientNet"):
        rl.roofline(resnet50())
    with pytest.raises(ValueError, match="fusion level"):
        rl.roofline("b0").bytes("whole_model")


def test_format_table_with_a_bandwidth():
    from fastmbconv.study import Bandwidth

    bw = Bandwidth(3.0e12, "test", "device copy (HBM)", 1, "given")
    table = rl.format_table([rl.roofline("b0", 64)], bw)
    assert "floor img/s" in table and table.count("\n") == 2

