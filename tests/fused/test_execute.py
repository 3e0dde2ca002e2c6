"""The whole fused EfficientNet (fastmbconv.fused) against the reference modules.

On CPU the kernels run through Triton's interpreter; launch counts prove every block's kernels
ran (one depthwise, one SE and two pointwise launches per MBConv block, one depthwise, one SE
and one pointwise per depthwise-separable block, plus one pointwise for the head). fp32
tolerance: max |fused - reference| <= 1e-4 * max(1, max |reference|) (the rule in
fastmbconv.kernels.testing.assert_close_to_ref).
"""
import copy

import pytest
import torch

import fastmbconv as fm
from fastmbconv import fused
from fastmbconv.kernels._launch import count_launches, record_launches
from fastmbconv.kernels.testing import assert_close_to_ref

from ..helpers import DEVICE, blocks_with_expand, build, expected_launches, reference_forward, run_both

# launch counts below assume every 1x1 conv takes the Triton kernel
# (the fused expand + depthwise op: test_expand_dw_plan.py)
pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("pointwise_on_triton", "expand_dw_separate")]


def test_the_reference_side_of_a_comparison_launches_no_kernel():
    """On a GPU, ``auto`` runs these eval calls under ``inference_mode`` on the fused path; the
    side they are compared with must still be the reference modules. A forced ``fused`` stands
    in for a GPU's ``auto`` here."""
    model = build(num_classes=10, size=17)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    with fm.use_backend("fused"):
        out, ref, launches = run_both(model, x)
    assert dict(launches) == expected_launches(model)
    assert_close_to_ref(out, ref, what="logits")


@pytest.mark.parametrize("expand_dw", ["separate", "fused"])
def test_deterministic_mode_runs_the_fused_path_and_repeats_it_bit_for_bit(deterministic, expand_dw, monkeypatch):
    """Under ``torch.use_deterministic_algorithms(True)`` the fused forward still runs (no op in
    it refuses that mode on a GPU) and two calls agree bit for bit: the SE and head pools sum
    their tiles in a fixed order, not with atomics. The classifier's linear is on cuBLAS, which
    that mode allows only with a fixed workspace (torch's rule, as for any model; the
    ``deterministic`` fixture checks that conftest fixed it before any cuBLAS call)."""
    monkeypatch.setenv("FASTMBCONV_EXPAND_DW", expand_dw)
    model = build(num_classes=10, size=17)
    x = torch.randn(2, 3, 17, 17, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"), count_launches() as launches:
        first, second = model(x), model(x)
    fused_blocks = blocks_with_expand(model) if expand_dw == "fused" else 0
    assert dict(launches) == {op: 2 * n for op, n in expected_launches(model, fused_blocks=fused_blocks).items()}
    assert torch.equal(first, second)
    assert_close_to_ref(first, reference_forward(model, x), what="logits in deterministic mode")


@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_b0_logits_and_head_map_match_reference(pad_mode):
    model = build(pad_mode=pad_mode, size=(33, 47))
    x = torch.randn(2, 3, 33, 47, device=DEVICE)
    out, ref, launches = run_both(model, x)
    assert dict(launches) == expected_launches(model)
    assert_close_to_ref(out, ref, what="B0 logits")
    fmap, ref_map, launches = run_both(model.forward_features, x)
    assert dict(launches) == expected_launches(model, "features")
    assert fmap.shape == ref_map.shape == (2, 1280, 2, 2)
    assert_close_to_ref(fmap, ref_map, what="B0 head map")


@pytest.mark.parametrize("dtype, expand_dw", [(torch.float32, "separate"), (torch.float16, "fused")], ids=str)
def test_a_nan_image_leaves_every_other_image_of_the_batch_bit_for_bit(dtype, expand_dw, monkeypatch):
    """Serving: one corrupt image (one NaN pixel, or all NaN) must not change another image's
    logits. No tile, halo, GEMM row block or pool may mix images: 0 * NaN is NaN, so a read
    masked by multiplying with zero, not by the load's mask, shows here."""
    monkeypatch.setenv("FASTMBCONV_EXPAND_DW", expand_dw)
    model = build(num_classes=10, size=17).to(dtype)
    x = torch.randn(3, 3, 17, 17, device=DEVICE, dtype=dtype)
    one_pixel, whole = x.clone(), x.clone()
    one_pixel[1, 1, 5, 7] = float("nan")
    whole[1] = float("nan")
    fused_blocks = blocks_with_expand(model) if expand_dw == "fused" else 0
    with torch.inference_mode(), fm.use_backend("fused"), count_launches() as launches:
        clean = model(x)
        outs = [model(one_pixel), model(whole)]
    assert dict(launches) == {op: 3 * n for op, n in expected_launches(model, fused_blocks=fused_blocks).items()}
    for out in outs:
        assert out[1].isnan().all()
        assert torch.equal(out[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_b0_ragged_batch_matches_reference(pad_mode):
    model = build(pad_mode=pad_mode, num_classes=0, size=(33, 47))
    x = torch.randn(3, 3, 33, 47, device=DEVICE)
    sizes = torch.tensor([[33, 47], [20, 31], [9, 5]])
    out, ref, launches = run_both(model, x, sizes)
    assert dict(launches) == expected_launches(model)
    assert out.shape == (3, 1280)
    assert_close_to_ref(out, ref, what="ragged pooled features")
    fmap, ref_map, _ = run_both(model.forward_features, x, sizes)
    assert_close_to_ref(fmap, ref_map, what="ragged head map")


def test_b0_features_only():
    model = build(features_only=True, pad_mode="same", size=(29, 40))
    x = torch.randn(2, 3, 29, 40, device=DEVICE)
    maps, ref_maps, launches = run_both(model, x, torch.tensor([[29, 40], [17, 9]]))
    assert dict(launches) == expected_launches(model, "stage_maps")
    assert [m.shape[1] for m in maps] == [16, 24, 40, 112, 320]
    for i, (m, r) in enumerate(zip(maps, ref_maps)):
        assert_close_to_ref(m, r, what=f"feature map {i}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_b0_low_precision(dtype):
    """fp16/bf16 model: |fused - fp64 ref| <= 2 |torch at dtype - fp64 ref| + atol + 1 ulp."""
    model = build(size=(25, 31))
    x = torch.randn(2, 3, 25, 31, device=DEVICE)
    with torch.inference_mode():
        ref64 = reference_forward(copy.deepcopy(model).double(), x.double())
    model = model.to(dtype)
    out, ref_lowp, launches = run_both(model, x.to(dtype))
    assert launches["dwconv_bn_act"] == 16
    assert out.dtype == dtype
    assert_close_to_ref(out, ref64, ref_lowp, what=f"B0 {dtype} logits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_depthwise_takes_tensor_cores_in_fp16_and_bf16(dtype):
    """Every depthwise launch of a low-precision forward runs the dot kernel variant (tensor
    cores, weights folded by taps_diag); fp32 runs the FMA variant."""
    model = build(size=(17, 19)).to(dtype)
    with torch.inference_mode(), fm.use_backend("fused"), record_launches() as planned:
        model(torch.randn(1, 3, 17, 19, device=DEVICE, dtype=dtype))
    dw = [r.constexprs["MMA"] for r in planned if r.op == "dwconv_bn_act"]
    assert dw == [dtype != torch.float32] * 16


def test_autocast_runs_the_fused_path_at_the_autocast_dtype():
    """Under autocast an fp32 model's fused forward computes in the autocast dtype, as the
    reference convs do: same output dtype, bf16 tolerance against the fp64 model."""
    model = build(num_classes=10, size=(21, 19))
    x = torch.randn(2, 3, 21, 19, device=DEVICE)
    with torch.inference_mode():
        ref64 = reference_forward(copy.deepcopy(model).double(), x.double())
    autocast_dtype = torch.float16 if DEVICE == "cuda" else torch.bfloat16
    with torch.autocast(torch.device(DEVICE).type, dtype=autocast_dtype):
        out, ref_lowp, launches = run_both(model, x)
    assert dict(launches) == expected_launches(model)
    assert out.dtype == ref_lowp.dtype == autocast_dtype
    assert fused.folded(model, autocast_dtype).stages[1][0].w_project.dtype == autocast_dtype
    assert_close_to_ref(out, ref64, ref_lowp, what=f"autocast {autocast_dtype} logits")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b1", "efficientnet_b2", "efficientnet_b4", "efficientnet_b7"])
def test_b1_to_b7_structure(name):
    """Variants' stage/channel/stride structures through the fused path at a tiny size: both
    paddings, the narrowest and widest (B3, B5 and B6 differ from these only in their
    multipliers, which tests/test_config.py checks against the published table)."""
    pad_mode = "same" if name[-1] in "1357" else "symmetric"
    model = build(name, num_classes=10, pad_mode=pad_mode, size=16)
    x = torch.randn(1, 3, 16, 16, device=DEVICE)
    out, ref, launches = run_both(model, x)
    assert dict(launches) == expected_launches(model)
    assert_close_to_ref(out, ref, what=f"{name} logits")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["auto", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_b0_224_parity(dtype, impl, monkeypatch):
    if impl == "auto":  # the module's fixture forces the Triton 1x1 kernel
        monkeypatch.delenv("FASTMBCONV_POINTWISE_IMPL", raising=False)
    else:
        monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", impl)
    model = build(pad_mode="same", size=224)
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        ref64 = reference_forward(copy.deepcopy(model).double(), x.double())
    model = model.to(dtype)
    out, ref, launches = run_both(model, x.to(dtype))
    assert launches["dwconv_bn_act"] == 16
    if dtype == torch.float32:
        assert_close_to_ref(out, ref64, what="CUDA fp32 logits")
    else:
        assert_close_to_ref(out, ref64, ref, what=f"CUDA {dtype} logits")


@pytest.mark.gpu
def test_cuda_ragged_b3_parity():
    model = build("efficientnet_b3", pad_mode="same", size=(300, 260))
    model64 = copy.deepcopy(model).double()
    model = model.half()
    x = torch.randn(4, 3, 300, 260, device="cuda", dtype=torch.float16)
    sizes = torch.tensor([[300, 260], [299, 201], [131, 257], [64, 64]])
    out, ref, launches = run_both(model, x, sizes)
    assert launches["dwconv_bn_act"] == 26
    with torch.inference_mode():
        ref64 = reference_forward(model64, x.double(), sizes)
    assert_close_to_ref(out, ref64, ref, what="CUDA fp16 ragged B3 logits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_b0_with_the_depthwise_on_cudnn_matches_reference(dtype, monkeypatch):
    """FASTMBCONV_DEPTHWISE_IMPL=torch (the fused_cudnn_dw benchmark provider): every depthwise
    conv on F.conv2d and its BN, SiLU and SE sums in one affine_act_pool launch, TF padding included."""
    monkeypatch.setenv("FASTMBCONV_DEPTHWISE_IMPL", "torch")
    model = build(pad_mode="same", size=(33, 47))
    model64 = copy.deepcopy(model).double()
    model = model.to(dtype)
    x = torch.randn(2, 3, 33, 47, device=DEVICE, dtype=dtype)
    out, ref, launches = run_both(model, x)
    blocks = sum(len(stage) for stage in model.blocks)
    expected = expected_launches(model)
    expected.pop("dwconv_bn_act")
    assert dict(launches) == {**expected, "dwconv_bn_act[torch]": blocks, "affine_act_pool": blocks}
    if dtype == torch.float32:
        assert_close_to_ref(out, ref, what="logits, depthwise on cuDNN")
    else:
        with torch.inference_mode():
            ref64 = reference_forward(model64, x.double())
        assert_close_to_ref(out, ref64, ref, what=f"{dtype} logits, depthwise on cuDNN")


def test_empty_batch_and_one_pixel_input():
    model = build(num_classes=7, size=1)
    with torch.inference_mode(), fm.use_backend("fused"):
        with count_launches() as launches:
            empty = model(torch.randn(0, 3, 32, 32, device=DEVICE))
        assert empty.shape == (0, 7) and sum(launches.values()) == 0
    out, ref, launches = run_both(model, torch.randn(2, 3, 1, 1, device=DEVICE))
    assert dict(launches) == expected_launches(model)
    assert_close_to_ref(out, ref, what="logits of a 1x1 input")


def test_pointwise_choices_report_every_1x1_conv(monkeypatch):
    monkeypatch.delenv("FASTMBCONV_POINTWISE_IMPL", raising=False)
    model = fm.efficientnet_b0()
    rows = fused.pointwise_choices(model, 2, 33, 47)
    assert len(rows) == 15 + 16 + 1
    assert all(r["impl"] == "triton" for r in rows)  # off CUDA the Triton kernel always runs
    by_name = {r["layer"]: r for r in rows}
    assert by_name["blocks.1.0.conv_pw"] == {"layer": "blocks.1.0.conv_pw", "M": 2 * 17 * 24, "K": 16, "N": 96,
                                             "pool_only": False, "impl": "triton"}
    assert by_name["blocks.1.0.conv_pwl"]["M"] == 2 * 9 * 12  # after the stride-2 depthwise
    assert by_name["conv_head"]["pool_only"] and by_name["conv_head"]["M"] == 2 * 2 * 2
    # on CUDA too, Triton at every size unless the torch fallback is forced (the head never)
    on_cuda = {r["impl"] for r in fused.pointwise_choices(model, 1, 224, 224, torch.float32, "cuda")}
    assert on_cuda == {"triton"}
    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "torch")
    forced = {r["layer"]: r["impl"] for r in fused.pointwise_choices(model, 256, 224, 224, torch.float16, "cuda")}
    assert forced.pop("conv_head") == "triton" and set(forced.values()) == {"torch"}


def test_intermediates_stop_early_and_keep_the_input_memory_format():
    """Both executors: the stem's output as stage -1, only the stages up to the last one asked
    for are run, and returned maps follow the input's memory format (the fused path computes
    channels_last)."""
    from fastmbconv import reference
    from fastmbconv.plan import STEM, make_plan

    model = build(pad_mode="same", size=(35, 29))
    for x in (torch.randn(2, 3, 35, 29, device=DEVICE),
              torch.randn(2, 3, 35, 29, device=DEVICE).contiguous(memory_format=torch.channels_last)):
        with torch.inference_mode():
            plan = make_plan(model, x, [[35, 29], [17, 9]], "intermediates", stages=(STEM, 1, 4))
            with count_launches() as launches:
                features, maps = fused.run(model, x, plan)
            ref_features, ref_maps = reference.run(model, x, plan)
            early = make_plan(model, x, None, "stage_maps", stages=(0, 2))
            with count_launches() as early_launches:
                assert [m.shape[1] for m in fused.run(model, x, early)] == [16, 40]
        assert launches["dwconv_bn_act"] == 16 and early_launches["dwconv_bn_act"] == 1 + 2 + 2
        for got, ref in zip([features, *maps], [ref_features, *ref_maps]):
            assert got.is_contiguous(memory_format=torch.channels_last) == plan.channels_last
            assert got.is_contiguous() == ref.is_contiguous()
            assert_close_to_ref(got, ref, what="intermediate map")
        assert [m.shape[1] for m in maps] == [32, 24, 112]

