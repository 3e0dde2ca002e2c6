"""The analytic roofline: B0 near FIELD_NOTES section 4, ordered levels, monotonic in model size,
FLOPs equal to torch's flop counter, and a measured (host) bandwidth."""
import math

import pytest
import torch

import fastmbconv as fm
from fastmbconv import roofline as rl
from fastmbconv.resnet import RESNET50_PARAMS, resnet50

NAMES = [f"efficientnet_b{i}" for i in range(8)]


@pytest.fixture(scope="module")
def b0():
    return rl.roofline("efficientnet_b0", 224, batch=256, dtype="fp16")


def test_b0_fp16_per_image_bytes_match_field_notes(b0):
    # FIELD_NOTES section 4: eager ~80-94 MB, layer-fused ~27.5 MB, whole block ~3.4-4.2 MB
    # per image (fp16, 224). Weights amortised over batch 256 add ~0.04 MB.
    mb = {lv: b0.bytes_per_image(lv) / 1e6 for lv in rl.LEVELS}
    assert 80 <= mb["eager"] <= 95, mb
    assert mb["layer_fused"] == pytest.approx(27.5, rel=0.03), mb
    assert 3.4 <= mb["whole_block"] <= 4.4, mb


def test_levels_are_ordered(b0):
    assert b0.bytes("eager") > 2.5 * b0.bytes("layer_fused") > 2.5 * 2.5 * b0.bytes("whole_block")


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


def test_block_shapes_follow_the_config():
    shapes = rl.block_shapes("efficientnet_b0")
    assert len(shapes) == 16
    first, last = shapes[0], shapes[-1]
    assert (first.mid_channels, first.height, first.has_expand) == (32, 112, False)
    assert (last.in_channels, last.mid_channels, last.out_channels, last.out_height) == (192, 1152, 320, 7)
    b4 = rl.block_shapes("efficientnet_b4")
    assert len(b4) == 32 and b4[0].height == 190
    assert sum(s.stride == 2 for s in b4) == 4


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


def test_measured_host_bandwidth_and_floor():
    bw = rl.measure_copy_bandwidth("cpu", nbytes=8 << 20, iters=3)
    assert bw.bytes_per_s > 1e8 and "host" in bw.kind
    assert rl.floor_seconds(1e9, 1e9) == 1.0
    assert rl.floor_fraction(2.0, 1e9, 1e9) == 0.5
    assert math.isnan(rl.floor_fraction(0.0, 1e9, 1e9))
    eff = rl.efficiency(1e-3, rl.roofline("b0", 64, batch=1), bw)
    assert set(f"floor_fraction_{lv}" for lv in rl.LEVELS) <= set(eff)
    assert "floor img/s" in rl.format_table([rl.roofline("b0", 64)], bw)


def test_resnet50_stand_in_matches_torchvision_count():
    with torch.device("meta"):
        model = resnet50()
    assert fm.count_params(model) == RESNET50_PARAMS == 25_557_032
    assert fm.count_flops(model, 224) == pytest.approx(8.18e9, rel=0.01)  # 4.09 GMACs
