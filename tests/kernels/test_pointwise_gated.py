"""pointwise_gated (the 1x1 conv GEMM with SE-gate prologue and bias/act/residual/pool
epilogue) against its pure-torch twin, the torch fallback, and the per-shape impl choice."""
import pytest
import torch

from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels.testing import FencedOutputs, ResetToZeroKernel, assert_close_to_ref, nan_fenced
from fastmbconv.kernels.pointwise_gated import (
    choose_pointwise_impl,
    pointwise_gated,
    pointwise_gated_ref,
)

from ..helpers import DEVICE

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(N, K, O, H, W, dtype=torch.float32, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, K, H, W, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(O, K, 1, 1, generator=g) / K**0.5).to(DEVICE, dtype)
    bias = (torch.randn(O, generator=g) * 0.1).to(DEVICE)
    gate = torch.rand(N, K, generator=g).to(DEVICE)
    res = torch.randn(N, O, H, W, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    return x, w, bias, gate, res


def check(x, w, bias, **kw):
    with count_launches() as launches:
        out = pointwise_gated(x, w, bias, impl="triton", **kw)
    assert launches["pointwise_gated"] == 1, launches
    ref = pointwise_gated_ref(x, w, bias, compute_dtype=torch.float64, **kw)
    if kw.get("pool_only"):
        assert out.dtype == torch.float32
        assert_close_to_ref(out, ref, what="pooled sums")  # fp32 sums: fp32 rule, scaled
        return out
    lowp = None
    if x.dtype != torch.float32:
        lowp = pointwise_gated_ref(x.cpu(), w.cpu(), bias.cpu(), compute_dtype=x.dtype,
                                   **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert out.dtype == x.dtype
    assert_close_to_ref(out, ref, lowp, what="pointwise output")
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use", ["expand", "project", "project_skip", "head", "head_pool"])
def test_block_uses(use, dtype):
    """The four ways the fused model calls it."""
    K, O = (24, 144) if use == "expand" else (144, 40) if use.startswith("project") else (40, 136)
    x, w, bias, gate, res = make(2, K, O if use != "project_skip" else K, 9, 13, dtype)
    if use == "project_skip":
        w = w[:, :K].reshape(K, K, 1, 1).clone()
        bias, res = bias[:K].clone(), x.clone()
    kw = {
        "expand": {},
        "project": {"gate": gate},
        "project_skip": {"gate": gate, "residual": res},
        "head": {"act": "silu"},
        "head_pool": {"act": "silu", "pool_only": True},
    }[use]
    out = check(x, w, bias, **kw)
    if not kw.get("pool_only"):
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("H,W", [(1, 1), (7, 7), (1, 57), (33, 57)])
@pytest.mark.parametrize("K,O", [(3, 24), (40, 24), (24, 1280)])
def test_odd_sizes(H, W, K, O):
    x, w, bias, gate, res = make(2, K, O, H, W)
    check(x, w, bias, gate=gate, residual=res)


def test_nchw_and_non_contiguous():
    x, w, bias, gate, res = make(2, 48, 40, 11, 14, channels_last=False)
    out = check(x, w, bias, gate=gate, residual=res.contiguous())
    assert out.is_contiguous()
    xs = x[:, ::2, :, 1::2]  # strided channels and columns
    ws = w[:, ::2].contiguous()
    check(xs, ws, bias, gate=gate[:, ::2].contiguous(), residual=res[..., 1::2], act="relu6")


def test_ragged_pool_counts_only_valid_pixels():
    x, w, bias, _, _ = make(3, 40, 64, 6, 9)
    valid = torch.tensor([[6, 9], [2, 3], [1, 1]], dtype=torch.int32, device=DEVICE)
    sums = check(x, w, bias, act="silu", pool_only=True, valid_hw=valid)
    alone = pointwise_gated(x[1:2, :, :2, :3], w, bias, act="silu", pool_only=True, impl="triton")
    torch.testing.assert_close(sums[1], alone[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_fallback_matches(dtype):
    x, w, bias, gate, res = make(2, 40, 24, 5, 7, dtype)
    for kw in ({"gate": gate, "residual": res}, {"act": "silu", "pool_only": True}):
        with count_launches() as launches:
            got = pointwise_gated(x, w, bias, impl="torch", **kw)
        assert launches["pointwise_gated[torch]"] == 1 and launches["pointwise_gated"] == 0
        ref = pointwise_gated_ref(x, w, bias, compute_dtype=torch.float64, **kw)
        if dtype == torch.float32 or kw.get("pool_only"):
            torch.testing.assert_close(got.double(), ref, atol=1e-2 if dtype != torch.float32 else 1e-4, rtol=1e-2)
        else:
            torch.testing.assert_close(got, ref.to(dtype), atol=5e-2, rtol=2e-2)


def test_choice_cpu_is_triton_and_cuda_heuristic(monkeypatch):
    monkeypatch.delenv("FASTMBCONV_POINTWISE_IMPL", raising=False)
    assert choose_pointwise_impl(10**6, 96, 24, torch.float16, "cpu") == "triton"
    assert choose_pointwise_impl(4, 96, 24, torch.float16, "cpu") == "triton"
    # the CUDA branch is pure host logic, so it can be checked without a GPU
    assert choose_pointwise_impl(256 * 112 * 112, 96, 24, torch.float16, "cuda") == "triton"
    assert choose_pointwise_impl(8 * 7 * 7, 1152, 320, torch.float16, "cuda") == "torch"
    assert choose_pointwise_impl(8 * 7 * 7, 320, 1280, torch.float16, "cuda", pool_only=True) == "triton"
    assert choose_pointwise_impl(10**6, 96, 576, torch.float32, "cuda") == "torch"
    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "triton")
    assert choose_pointwise_impl(392, 1152, 320, torch.float16, "cuda") == "triton"
    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "torch")
    assert choose_pointwise_impl(392, 1152, 320, torch.float16, "cuda") == "torch"


def test_default_on_cpu_launches_triton():
    x, w, bias, gate, _ = make(1, 24, 40, 5, 5)
    with count_launches() as launches:
        pointwise_gated(x, w, bias, gate=gate)
    assert launches["pointwise_gated"] == 1


def test_empty_batch():
    x, w, bias, _, _ = make(0, 24, 40, 5, 5)
    with count_launches() as launches:
        out = pointwise_gated(x, w, bias, impl="triton")
        sums = pointwise_gated(x, w, bias, pool_only=True, impl="triton")
    assert out.shape == (0, 40, 5, 5) and sums.shape == (0, 40) and sum(launches.values()) == 0


@pytest.mark.parametrize("case,exc,words", [
    ("weight dtype", TypeError, "weight dtype"),
    ("weight width", ValueError, "channels"),
    ("fp16 bias", TypeError, "bias"),
    ("gate shape", ValueError, "gate"),
    ("residual shape", ValueError, "residual"),
    ("bad act", ValueError, "swish"),
    ("valid without pool", ValueError, "pool_only"),
    ("bad impl", ValueError, "impl"),
])
def test_bad_input(case, exc, words):
    x, w, bias, gate, res = make(2, 24, 40, 5, 5)
    kw = {"impl": "triton"}
    if case == "weight dtype":
        w = w.half()
    elif case == "weight width":
        w = w[:, :8]
    elif case == "fp16 bias":
        bias = bias.half()
    elif case == "gate shape":
        kw["gate"] = gate[:1]
    elif case == "residual shape":
        kw["residual"] = res[:, :3]
    elif case == "bad act":
        kw["act"] = "swish"
    elif case == "valid without pool":
        kw["valid_hw"] = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)
    elif case == "bad impl":
        kw["impl"] = "cutlass"
    with pytest.raises(exc, match=words):
        pointwise_gated(x, w, bias, **kw)



def test_batches_beyond_grid_limit_are_split_into_launches(monkeypatch):
    from fastmbconv.kernels import pointwise_gated as module

    monkeypatch.setattr(module, "MAX_GRID_Z", 2)
    x, w, bias, gate, res = make(5, 24, 40, 3, 5)
    for kw in ({"gate": gate, "residual": res}, {"act": "silu", "pool_only": True}):
        with count_launches() as launches:
            out = pointwise_gated(x, w, bias, impl="triton", **kw)
        assert launches["pointwise_gated"] == 3
        assert_close_to_ref(out, pointwise_gated_ref(x, w, bias, compute_dtype=torch.float64, **kw))


@pytest.mark.gpu
def test_more_than_2_31_elements_cuda():
    N, K, O, H, W = 1040, 32, 16, 256, 256  # input 2.18e9 elements
    x = torch.randn(N, K, H, W, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(O, K, device="cuda") / K**0.5).half()
    bias = torch.randn(O, device="cuda")
    gate = torch.rand(N, K, device="cuda")
    out = pointwise_gated(x, w, bias, gate=gate, impl="triton")
    ref = pointwise_gated_ref(x[-2:], w, bias, gate=gate[-2:])
    torch.testing.assert_close(out[-2:].float(), ref, atol=2e-2, rtol=1e-2)
    sums = pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="triton")
    ref_sums = pointwise_gated_ref(x[-2:], w, bias, act="silu", pool_only=True)
    torch.testing.assert_close(sums[-2:], ref_sums, atol=2.0, rtol=1e-2)


@pytest.mark.parametrize("ragged", [False, True])
def test_deterministic_mode_pools_without_atomics(ragged, monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the head pool is written per pixel tile
    and reduced by a second launch (counted); 1100 outputs make the interpreter's tile 64
    pixels, so each image spans several tiles."""
    x, w, bias, _, _ = make(2, 24, 1100, 19, 9)
    valid = torch.tensor([[19, 9], [4, 7]], dtype=torch.int32, device=DEVICE) if ragged else None
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with count_launches() as launches:
            out = pointwise_gated(x, w, bias, act="silu", pool_only=True, valid_hw=valid, impl="triton")
        repeat = pointwise_gated(x, w, bias, act="silu", pool_only=True, valid_hw=valid, impl="triton")
    finally:
        torch.use_deterministic_algorithms(before)
    assert launches == {"pointwise_gated": 1, "pointwise_gated[partial-sum]": 1}
    ref = pointwise_gated_ref(x, w, bias, act="silu", pool_only=True, valid_hw=valid, compute_dtype=torch.float64)
    assert_close_to_ref(out, ref, what="deterministic pooled sums")
    assert torch.equal(out, repeat)


@pytest.mark.parametrize("use", ["gate_residual", "head_pool"])
def test_reads_stay_inside_the_inputs(use):
    """Inputs (and the residual) sit inside NaN-filled buffers: a read past an edge, e.g. the
    K tail of the last block, would put NaN in the output."""
    x, w, bias, gate, res = make(2, 37, 45, 9, 7)
    x = nan_fenced(x)
    if use == "gate_residual":
        check(x, w, bias, gate=gate, residual=nan_fenced(res))
    else:
        check(x, w, bias, act="silu", pool_only=True)


def test_writes_stay_inside_the_output(monkeypatch):
    from fastmbconv.kernels import pointwise_gated as module

    fence = FencedOutputs()
    monkeypatch.setattr(module, "empty_like_format", fence)
    x, w, bias, gate, res = make(2, 37, 45, 9, 7)
    check(x, w, bias, gate=gate, residual=res)
    fence.assert_untouched()


@pytest.mark.parametrize("pool_only", [False, True])
def test_autotuner_reset_never_touches_inputs(pool_only, monkeypatch):
    from fastmbconv.kernels import pointwise_gated as module

    monkeypatch.setattr(module, "use_autotune", lambda: True)
    monkeypatch.setattr(module, "_pointwise_gated_autotuned", ResetToZeroKernel(
        module._pointwise_gated_kernel, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32)))
    x, w, bias, gate, res = make(2, 24, 40, 5, 7)
    bias_before = bias.clone()
    if pool_only:
        check(x, w, bias, act="silu", pool_only=True)
    else:
        check(x, w, bias, gate=gate, residual=res)
    assert torch.equal(bias, bias_before), "the autotuner's reset zeroed the bias"


def test_torch_fallback_compiles_without_graph_breaks():
    """On CUDA the chooser sends many 1x1 convs to the torch fallback, which dynamo traces
    inline; its launch bookkeeping (the counter's lock) must not break the graph."""
    x, w, bias, gate, res = make(2, 24, 40, 5, 7)

    def fallback(inp):
        return pointwise_gated(inp, w, bias, gate=gate, residual=res, impl="torch")

    torch._dynamo.reset()
    compiled = torch.compile(fallback, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), fallback(x))
    torch._dynamo.reset()
