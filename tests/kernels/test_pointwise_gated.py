"""pointwise_gated (the 1x1 conv GEMM with SE-gate prologue and bias/act/residual/pool
epilogue) against its pure-torch twin, and the implementation choice (its torch fallback:
test_pointwise_fallback.py).

The interpreter's heuristic covers everything with a few huge tiles; the ``small_tiles``
fixture forces GPU-sized ones, so tiles span several images (each row finds its own image's
gate; the pool's tiles each lie in one image, its last tile's rows past the image masked) and
edges are masked."""
import pytest
import torch

from fastmbconv.kernels import pointwise_gated as module
from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels.pointwise_gated import choose_pointwise_impl, pointwise_gated, pointwise_gated_ref
from fastmbconv.kernels.testing import FencedOutputs, assert_close_to_ref, nan_fenced, nan_fenced_dense

from ..helpers import DEVICE, interpreter_memcheck

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


@pytest.fixture
def small_tiles(monkeypatch):
    """16-row, 16-column, 16-deep tiles: GPU-style tiling at interpreter sizes."""
    def heuristic(M, K, O, pool_only, fp32=False, small_gated=False):
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1}
    monkeypatch.setattr(module, "_heuristic", heuristic)


def check(x, w, bias, **kw):
    pool_only = kw.get("pool_only", False)
    with count_launches() as launches:
        out = pointwise_gated(x, w, bias, impl="triton", **kw)
    assert launches["pointwise_gated"] == 1 and launches["pointwise_gated[pool]"] == int(pool_only), launches
    ref = pointwise_gated_ref(x, w, bias, compute_dtype=torch.float64, **kw)
    assert out.dtype == x.dtype
    lowp = None
    if x.dtype != torch.float32:
        if pool_only:  # an fp32-accurate mean rounded once to the dtype
            lowp = ref.to(x.dtype)
        else:
            lowp = pointwise_gated_ref(x.cpu(), w.cpu(), bias.cpu(), compute_dtype=x.dtype,
                                       **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert_close_to_ref(out, ref, lowp, what="pooled means" if pool_only else "pointwise output")
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use", ["expand", "project", "project_skip", "head", "head_pool"])
def test_block_uses(use, dtype):
    """The ways the fused model calls it."""
    K, O = (24, 144) if use == "expand" else (144, 40) if use.startswith("project") else (40, 136)
    x, w, bias, gate, res = make(2, K, O if use != "project_skip" else K, 9, 13, dtype)
    if use == "project_skip":
        w = w[:, :K].reshape(K, K, 1, 1).clone()
        bias, res = bias[:K].clone(), x.clone()
    kw = {
        "expand": {"act": "silu"},
        "project": {"gate": gate},
        "project_skip": {"gate": gate, "residual": res},
        "head": {"act": "silu"},
        "head_pool": {"act": "silu", "pool_only": True},
    }[use]
    out = check(x, w, bias, **kw)
    if not kw.get("pool_only"):
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hw", [(3, 3), (1, 1), (5, 7)])
def test_tiles_spanning_images(small_tiles, hw, dtype):
    """Rows of several images share a tile (9 or 1 pixels per image, 16 rows per tile): each
    row takes its own image's gate. The pool's tiles lie in one image each: 9 and 1 pixels in
    one tile, 35 in three (the last with 3 rows)."""
    x, w, bias, gate, res = make(5, 40, 24, *hw, dtype=dtype)
    check(x, w, bias, gate=gate, residual=res)
    check(x, w, bias, act="silu", pool_only=True)
    valid = torch.tensor([[hw[0], hw[1]], [1, 1]] * 2 + [[hw[0], 1]], dtype=torch.int32, device=DEVICE)
    check(x, w, bias, act="silu", pool_only=True, valid_hw=valid)


@pytest.mark.parametrize("H,W", [(1, 1), (7, 7), (1, 57), (33, 57)])
@pytest.mark.parametrize("K,O", [(3, 24), (40, 24), (24, 1280)])
def test_odd_sizes(H, W, K, O):
    x, w, bias, gate, res = make(2, K, O, H, W)
    check(x, w, bias, gate=gate, residual=res)


def test_nchw_and_non_contiguous(small_tiles):
    """Rows that are not evenly spaced (NCHW, strided views) take the general addressing."""
    x, w, bias, gate, res = make(2, 48, 40, 11, 14, channels_last=False)
    out = check(x, w, bias, gate=gate, residual=res.contiguous())
    assert out.is_contiguous()
    xs = x[:, ::2, :, 1::2]  # strided channels and columns
    ws = w[:, ::2].contiguous()
    check(xs, ws, bias, gate=gate[:, ::2].contiguous(), residual=res[..., 1::2], act="relu6")
    check(xs, ws, bias, act="silu", pool_only=True)


def test_ragged_pool_averages_only_valid_pixels():
    x, w, bias, _, _ = make(3, 40, 64, 6, 9)
    valid = torch.tensor([[6, 9], [2, 3], [1, 1]], dtype=torch.int32, device=DEVICE)
    means = check(x, w, bias, act="silu", pool_only=True, valid_hw=valid)
    alone = pointwise_gated(x[1:2, :, :2, :3], w, bias, act="silu", pool_only=True, impl="triton")
    torch.testing.assert_close(means[1], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
def test_pool_of_more_than_1024_channels(ragged):
    """The head's pool is finished in blocks of at most 1024 channels (B0's head has 1280):
    the means of the channels past the first block are written too."""
    x, w, bias, _, _ = make(2, 24, 1280, 3, 5)
    valid = torch.tensor([[3, 5], [2, 3]], dtype=torch.int32, device=DEVICE) if ragged else None
    check(x, w, bias, act="silu", pool_only=True, valid_hw=valid)


def test_ragged_pool_clamps_sizes_it_cannot_check(monkeypatch):
    """CUDA sizes are not checked (that would sync): out of the map they are clamped into it,
    and an image with no valid pixel averages to 0, never inf."""
    monkeypatch.setattr(module, "check_valid_sizes", lambda *args: None)
    x, w, bias, _, _ = make(3, 24, 40, 5, 4)
    valid = torch.tensor([[9, 4], [0, 3], [2, -1]], dtype=torch.int32, device=DEVICE)
    means = check(x, w, bias, act="silu", pool_only=True, valid_hw=valid)
    clamped = pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="triton",
                              valid_hw=torch.tensor([[5, 4], [1, 1], [1, 1]], dtype=torch.int32, device=DEVICE))
    torch.testing.assert_close(means[0], clamped[0])
    assert means[1:].abs().max() == 0


def test_pool_is_bitwise_repeatable(small_tiles):
    """No atomics: each tile writes its own slots, added up in a fixed order."""
    x, w, bias, _, _ = make(6, 24, 40, 5, 3)
    first = pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="triton")
    assert all(torch.equal(pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="triton"), first)
               for _ in range(2))


def test_choice_is_triton_unless_forced(monkeypatch):
    monkeypatch.delenv("FASTMBCONV_POINTWISE_IMPL", raising=False)
    assert choose_pointwise_impl(10**6, 96, 24, torch.float16, "cpu") == "triton"
    # the CUDA branch is host logic, checkable without a GPU: Triton at every size by default
    assert choose_pointwise_impl(1 * 7 * 7, 1152, 320, torch.float32, "cuda") == "triton"
    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "torch")
    assert choose_pointwise_impl(392, 1152, 320, torch.float16, "cuda") == "torch"
    assert choose_pointwise_impl(392, 320, 1280, torch.float16, "cuda", pool_only=True) == "triton"
    assert choose_pointwise_impl(392, 1152, 320, torch.float16, "cpu") == "triton"


def test_default_on_cpu_launches_triton():
    x, w, bias, gate, _ = make(1, 24, 40, 5, 5)
    with count_launches() as launches:
        pointwise_gated(x, w, bias, gate=gate)
    assert launches["pointwise_gated"] == 1


def test_empty_batch():
    x, w, bias, _, _ = make(0, 24, 40, 5, 5)
    with count_launches() as launches:
        out = pointwise_gated(x, w, bias, impl="triton")
        pooled = pointwise_gated(x, w, bias, pool_only=True, impl="triton")
    assert out.shape == (0, 40, 5, 5) and pooled.shape == (0, 40) and sum(launches.values()) == 0


@pytest.mark.parametrize("interpret", ["1", "0"], ids=["interpreted", "compiled"])
def test_fp16_products_take_the_tensor_core_dot_here_as_on_a_gpu(monkeypatch, interpret):
    """``dot_fp32``: the interpreter's fp16 dot multiplies exactly and sums in fp32 as tensor
    cores do, so fp16 runs the GPU's branch in every CPU test; only bf16 (held as raw integers
    by the interpreter) falls back to fp32 products there, and never on a GPU. Both machines'
    choices are planned on either: recording launches nothing, so TRITON_INTERPRET only
    decides what the launcher picks."""
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernels._utils import dot_fp32

    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    with record_launches() as planned:
        for dtype in dtypes:
            x, w, bias, _, _ = make(1, 16, 16, 2, 2, dtype)
            pointwise_gated(x, w, bias, impl="triton")
    expected = [True, False, interpret == "1"]
    assert [r.constexprs["DOT_FP32"] for r in planned] == expected
    assert [dot_fp32(d) for d in dtypes] == expected


GPU_TILES = sorted(set(module._GPU_CONFIGS + module._FP32_SMALL_GATED_CONFIGS + module._NARROW_CONFIGS))


@pytest.mark.parametrize("tile", GPU_TILES, ids=lambda t: "x".join(map(str, t)))
def test_tensor_core_branch_with_every_gpu_tile(monkeypatch, tile):
    """Every tile the autotuner may pick on a GPU, on fp16's tensor-core branch (see
    ``dot_fp32``): the interpreter otherwise runs its own few large tiles."""
    block_m, block_n, block_k, warps, stages = tile
    monkeypatch.setattr(module, "_heuristic", lambda *args, **kwargs: {
        "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages})
    for N, K, O, H, W in [(3, 40, 24, 7, 5), (2, 96, 136, 5, 9)]:
        x, w, bias, gate, res = make(N, K, O, H, W, torch.float16)
        check(x, w, bias, act="silu")
        check(x, w, bias, gate=gate, residual=res, act="silu")
        check(x, w, bias, gate=gate, act="silu", pool_only=True)


@pytest.mark.parametrize("case,exc,words", [
    ("weight dtype", TypeError, "weight dtype"),
    ("weight width", ValueError, "channels"),
    ("fp16 bias", TypeError, "bias"),
    ("gate shape", ValueError, "gate"),
    ("residual shape", ValueError, "residual"),
    ("fp16 residual of fp32 x", TypeError, "residual"),
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
    elif case == "fp16 residual of fp32 x":
        kw["residual"] = res.half()
    elif case == "bad act":
        kw["act"] = "swish"
    elif case == "valid without pool":
        kw["valid_hw"] = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)
    elif case == "bad impl":
        kw["impl"] = "cutlass"
    with count_launches() as launches, pytest.raises(exc, match=words):
        pointwise_gated(x, w, bias, **kw)
    assert sum(launches.values()) == 0


@pytest.mark.parametrize("sizes_on", ["input's device", "meta"])
def test_valid_size_past_the_map(monkeypatch, sizes_on):
    """The host checks the sizes of CPU tensors only (for CUDA ones it would sync every call):
    a size past the map is then a clear error before any launch, else it is clamped into the
    map. ``meta``: the check sees the sizes on a device other than the CPU, as on a GPU."""
    x, w, bias, _, _ = make(2, 24, 40, 5, 5)
    too_big, clamped = (torch.tensor(v, dtype=torch.int32, device=DEVICE) for v in ([[5, 5], [6, 1]], [[5, 5], [5, 1]]))
    if sizes_on == "meta":
        real = module.check_valid_sizes
        monkeypatch.setattr(module, "check_valid_sizes", lambda op, v, H, W: real(op, v.to("meta"), H, W))
    if DEVICE == "cpu" and sizes_on != "meta":
        with count_launches() as launches, pytest.raises(ValueError, match="valid_hw must lie in"):
            pointwise_gated(x, w, bias, pool_only=True, valid_hw=too_big, impl="triton")
        assert sum(launches.values()) == 0
    else:
        got, want = (pointwise_gated(x, w, bias, act="silu", pool_only=True, valid_hw=v, impl="triton")
                     for v in (too_big, clamped))
        assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.usefixtures("frees_cuda_memory")
@pytest.mark.parametrize("N,K,O", [
    (1040, 32, 16),  # input 2.18e9 elements
    # the rows themselves (pixels over the batch; the other kernels index within one image) past
    # 2^31, which a 32-bit row index wraps and still passes its mask. One channel in and out
    # (the same row indexing as any other width) keeps it to 8 GiB, beside up to 15 other tests
    # on an 80 GB H100; not among the first stage's quick tests
    pytest.param(32769, 1, 1, marks=pytest.mark.slow),
], ids=["elements", "rows"])
def test_more_than_2_31_elements_cuda(N, K, O):
    H = W = 256
    x = torch.empty(N, K, H, W, device="cuda", dtype=torch.float16, memory_format=torch.channels_last).normal_()
    w = (torch.randn(O, K, device="cuda") / K**0.5).half()
    bias = torch.randn(O, device="cuda")
    gate = torch.rand(N, K, device="cuda")
    out = pointwise_gated(x, w, bias, gate=gate, impl="triton")
    ref = pointwise_gated_ref(x[-2:], w, bias, gate=gate[-2:])
    torch.testing.assert_close(out[-2:].float(), ref, atol=2e-2, rtol=1e-2)
    del out
    means = pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="triton")
    ref_means = pointwise_gated_ref(x[-2:], w, bias, act="silu", pool_only=True)
    torch.testing.assert_close(means[-2:].float(), ref_means, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("use", ["gate_residual", "head_pool", "gated_pool"])
def test_reads_stay_inside_the_inputs(small_tiles, use):
    """Inputs (and the residual) sit inside NaN-filled buffers: a read past an edge, e.g. the
    K tail of the last block, would put NaN in the output. A read whose lanes are never stored
    (the residual's channels past O) shows no NaN: the interpreter's memcheck catches it."""
    x, w, bias, gate, res = make(2, 37, 45, 9, 7)
    x = nan_fenced(x)
    with interpreter_memcheck():
        if use == "gate_residual":
            check(x, w, bias, gate=gate, residual=nan_fenced(res))
        elif use == "gated_pool":  # the gate's K tail: past the last image's row for the last image
            check(x, w, bias, gate=nan_fenced_dense(gate), act="silu", pool_only=True)
        else:
            check(x, w, bias, act="silu", pool_only=True)


def test_writes_stay_inside_the_output(small_tiles, monkeypatch):
    fence = FencedOutputs()
    monkeypatch.setattr(module, "empty_like_format", fence)
    x, w, bias, gate, res = make(2, 37, 45, 9, 7)
    check(x, w, bias, gate=gate, residual=res)
    fence.assert_untouched()


def test_autotune_tries_only_tiles_that_fit_their_registers():
    """The configs each dtype and layer kind may try, from the static sm_90 report: fp16/bf16
    tries every tensor-core tile, but at most 4096 outputs where the SE gate meets fewer than 64
    input channels (the depthwise-separable blocks); fp32's FMA products never try a 4-warp tile
    of 8192 outputs, and its small gated layers only 16-channel K steps or 32 x 32 tiles; a
    layer of at most 16 output channels only 16-wide tiles."""
    from fastmbconv.kernels import pointwise_gated as module

    tuned = module._pointwise_gated_autotuned

    def tiles(**args):
        kept = tuned.early_config_prune(tuned.configs, {}, **args)
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in kept}

    every = set(module._GPU_CONFIGS)
    assert tiles(K=96, O=24, HAS_GATE=True, DOT_FP32=False) == every
    assert tiles(K=16, O=96, HAS_GATE=False, DOT_FP32=False) == every
    small = tiles(K=40, O=24, HAS_GATE=True, DOT_FP32=False)
    assert small and small < every and all(m * n <= 4096 for m, n, *_ in small)
    for args in (dict(K=96, O=24, HAS_GATE=True), dict(K=16, O=96, HAS_GATE=False)):
        fp32 = tiles(DOT_FP32=True, **args)
        assert fp32 and all(m * n <= 4096 or w == 8 for m, n, _, w, _ in fp32)
        assert (32, 64, 64, 4, 4) not in fp32
    assert tiles(K=40, O=24, HAS_GATE=True, DOT_FP32=True) == {(64, 32, 16, 4, 3), (32, 32, 32, 4, 3)}
    # 16 output channels (B0's blocks.0.0 projection): only 16-wide tiles, in every dtype; fp32
    # without the tall ones (they spill or overflow shared memory there)
    assert tiles(K=32, O=16, HAS_GATE=True, DOT_FP32=False) == set(module._NARROW_CONFIGS)
    assert tiles(K=32, O=16, HAS_GATE=True, DOT_FP32=True) == {(64, 16, 32, 4, 3), (128, 16, 32, 4, 3)}
    assert tiles(K=24, O=16, HAS_GATE=True, DOT_FP32=False) == {(64, 16, 32, 4, 3), (128, 16, 32, 4, 3)}
    assert all(n == 16 for _, n, *_ in module._NARROW_CONFIGS) and (512, 16, 32, 8, 3) in module._NARROW_CONFIGS


def test_untuned_config_fits_its_registers(monkeypatch):
    """With autotuning off: fp32 tiles of at most 4096 outputs, 16-channel steps for its small
    gated layers; fp16/bf16 keep the wide 64 x 128 tile."""
    monkeypatch.setattr(module, "interpreting", lambda: False)
    wide = module._heuristic(4096, 96, 480, False)
    assert (wide["BLOCK_M"], wide["BLOCK_N"], wide["BLOCK_K"]) == (64, 128, 32)
    fp32 = module._heuristic(4096, 96, 480, False, fp32=True)
    assert (fp32["BLOCK_M"], fp32["BLOCK_N"], fp32["BLOCK_K"]) == (64, 64, 32)
    gated = module._heuristic(4096, 40, 24, False, fp32=True, small_gated=True)
    assert (gated["BLOCK_M"], gated["BLOCK_N"], gated["BLOCK_K"]) == (64, 32, 16)
    assert module._heuristic(4096, 40, 24, False, small_gated=True)["BLOCK_K"] == 32
