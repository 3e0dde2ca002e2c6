"""dwconv_bn_act against its pure-torch twin over every (kernel, stride, padding) EfficientNet
uses, odd sizes, dtypes, layouts, ragged batches and bad inputs. Launches are counted.

The interpreter's heuristic covers a whole map with one tile; the ``small_tiles`` fixture forces
the GPU's kind of tiling (several tiles per image, edge tiles, several channel blocks), so the
per-tile partial sums and the masks at tile edges are exercised here too."""
import pytest
import torch

from fastmbconv.geometry import conv_padding
from fastmbconv.kernels._launch import count_launches, record_launches
from fastmbconv.kernels import dwconv_bn_act as module
from fastmbconv.kernels._utils import output_size
from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act, dwconv_bn_act_ref, taps_diag, taps_major
from fastmbconv.kernels.testing import FencedOutputs, assert_close_to_ref, nan_fenced, nan_fenced_dense

from ..helpers import DEVICE, assert_unchecked_sizes_clamped, interpreter_memcheck, last_rows

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LOWP = [torch.float16, torch.bfloat16]
#: (dtype, weight layout): "conv" (C, 1, k, k) runs the FMA kernel; "mma", the (k*k, C, 16)
#: diagonal blocks of taps_diag, runs the tensor-core kernel (fp16/bf16 only)
DTYPE_LAYOUTS = [(d, "conv") for d in DTYPES] + [(d, "mma") for d in LOWP]


def make(N, C, H, W, k, dtype=torch.float32, channels_last=True, seed=0, layout="conv"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, k, k, generator=g) * 0.3).to(DEVICE)
    scale = (torch.rand(C, generator=g) + 0.5).to(DEVICE)
    shift = (torch.randn(C, generator=g) * 0.1).to(DEVICE)
    if layout == "mma":
        w = taps_diag(w, dtype)
    return x, w, scale, shift


def is_mma(w) -> bool:
    return w.ndim == 3 and w.shape[-1] == 16


@pytest.fixture
def small_tiles(monkeypatch):
    """2x4-pixel tiles (2x8 for a dot's 16 rows) and 16-channel blocks: what a GPU launch looks
    like, at interpreter sizes."""
    monkeypatch.setattr(module, "blocks_for", lambda h, w, c, mma=False: (2, 8 if mma else 4, 16))


def check(x, w, scale, shift, padding, stride, **kw):
    with record_launches() as planned:  # records without running: which kernel variant the call takes
        dwconv_bn_act(x, w, scale, shift, padding, stride, **kw)
    assert [r.constexprs["MMA"] for r in planned] == [is_mma(w)]
    with count_launches() as launches:
        got = dwconv_bn_act(x, w, scale, shift, padding, stride, **kw)
    assert launches["dwconv_bn_act"] == 1, launches
    ref = dwconv_bn_act_ref(x, w, scale, shift, padding, stride, compute_dtype=torch.float64, **kw)
    lowp = None
    if x.dtype != torch.float32:
        cpu_kw = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        lowp = dwconv_bn_act_ref(x.cpu(), w.cpu().to(x.dtype), scale.cpu(), shift.cpu(), padding, stride,
                                 compute_dtype=x.dtype, **cpu_kw)
    if kw.get("with_pool"):
        (out, partials), (ref, ref_pool) = got, ref
        tile_h, tile_w, _ = module.blocks_for(*out.shape[-2:], x.shape[1], is_mma(w))
        tiles = -(-out.shape[-2] // tile_h) * -(-out.shape[-1] // tile_w)
        assert partials.dtype == torch.float32 and partials.shape == (x.shape[0], tiles, x.shape[1])
        # the sums add the stored fp32 values before the cast: fp32 rule on the sums
        assert_close_to_ref(partials.sum(1), ref_pool, what="pool sums")
        if lowp is not None:
            lowp = lowp[0]
    else:
        out = got
    assert out.dtype == x.dtype
    assert_close_to_ref(out, ref, lowp, what="dwconv output")
    return out


@pytest.mark.parametrize("dtype,layout", DTYPE_LAYOUTS, ids=str)
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_every_efficientnet_config(k, stride, pad_mode, dtype, layout):
    """Every (kernel, stride, padding) of B0-B7, with the SE pool sums."""
    x, w, scale, shift = make(2, 24, 33, 18, k, dtype, layout=layout)
    padding = conv_padding(33, 18, k, stride, pad_mode)
    out = check(x, w, scale, shift, padding, stride, with_pool=True)
    assert out.shape[-2:] == (-(-33 // stride), -(-18 // stride))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("C", [3, 40])
@pytest.mark.parametrize("H,W", [(1, 1), (7, 7), (1, 57), (57, 33)])
@pytest.mark.parametrize("k,stride,pad_mode", [(3, 2, "same"), (5, 1, "symmetric"), (5, 2, "same")])
def test_odd_sizes(H, W, C, k, stride, pad_mode):
    x, w, scale, shift = make(2, C, H, W, k)
    check(x, w, scale, shift, conv_padding(H, W, k, stride, pad_mode), stride, with_pool=True)


@pytest.mark.parametrize("C", [3, 40])
@pytest.mark.parametrize("H,W", [(1, 1), (7, 7), (57, 33)])
def test_odd_sizes_tensor_cores(H, W, C):
    """The dot kernel on channel counts that leave a 16-channel group partly masked."""
    x, w, scale, shift = make(2, C, H, W, 5, torch.float16, layout="mma")
    check(x, w, scale, shift, conv_padding(H, W, 5, 2, "same"), 2, with_pool=True)


@pytest.mark.parametrize("act", ["identity", "relu6", "silu"])
def test_activations(act):
    x, w, scale, shift = make(1, 24, 9, 11, 3)
    check(x * 4, w, scale, shift, (1, 1, 1, 1), 1, act=act)


@pytest.mark.parametrize("dtype,layout", DTYPE_LAYOUTS, ids=str)
@pytest.mark.parametrize("k,stride,pad_mode", [(3, 1, "symmetric"), (5, 2, "same")])
def test_many_tiles_and_channel_blocks(small_tiles, k, stride, pad_mode, dtype, layout):
    """GPU-style tiling: 2x4 (2x8) tiles over a 13x11 map (edge tiles on both sides) and
    16-channel blocks over 24 channels (the second block half masked); the per-tile sums must
    add up to the image sums."""
    x, w, scale, shift = make(2, 24, 13, 11, k, dtype, layout=layout)
    check(x, w, scale, shift, conv_padding(13, 11, k, stride, pad_mode), stride, with_pool=True)


def test_tensor_core_weights_are_the_same_conv():
    """taps_diag holds each weight once, at column c % 16 of its row, in the activations'
    dtype; the dot kernel then computes the conv of those (rounded) weights."""
    x, w, scale, shift = make(2, 40, 9, 7, 3, torch.bfloat16)
    diag = taps_diag(w, torch.bfloat16)
    assert diag.shape == (9, 40, 16) and diag.dtype == torch.bfloat16
    assert (diag != 0).sum() == (w != 0).sum()
    torch.testing.assert_close(diag.float().sum(-1), taps_major(w.to(torch.bfloat16)), rtol=0, atol=0)
    check(x, diag, scale, shift, (1, 1, 1, 1), 1, with_pool=True)


def test_taps_major_weights_are_the_same_conv():
    x, w, scale, shift = make(2, 24, 9, 7, 5)
    taps = taps_major(w)
    assert taps.shape == (25, 24) and taps.is_contiguous()
    torch.testing.assert_close(dwconv_bn_act(x, taps, scale, shift, (2, 2, 2, 2), 2),
                               dwconv_bn_act(x, w, scale, shift, (2, 2, 2, 2), 2))
    check(x, taps, scale, shift, (2, 2, 2, 2), 2, with_pool=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nchw_input_gives_nchw_output(dtype):
    x, w, scale, shift = make(2, 40, 13, 7, 5, dtype, channels_last=False)
    out = check(x, w, scale, shift, (1, 2, 1, 2), 2, with_pool=True)
    assert out.is_contiguous()


@pytest.mark.parametrize("view", ["channel_slice", "spatial_stride", "permuted"])
def test_non_contiguous_input(view):
    x, w, scale, shift = make(2, 48, 14, 18, 3)
    if view == "channel_slice":
        x = x[:, 8:32]
    elif view == "spatial_stride":
        x = x[:, :24, ::2, 1::2]
    else:
        x = x[:, :24].transpose(2, 3)
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    H, W = x.shape[-2:]
    check(x, w[:24], scale[:24], shift[:24], conv_padding(H, W, 3, 1, "same"), 1, with_pool=True)


@pytest.mark.parametrize("layout", ["conv", "mma"])
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
@pytest.mark.parametrize("k,stride", [(3, 2), (5, 1)])
def test_ragged(small_tiles, k, stride, pad_mode, layout):
    """Per-image valid sizes and padding: each image as if alone; invalid outputs are 0 and
    left out of the pool sums (tiles wholly outside an image's valid region included)."""
    x, w, scale, shift = make(3, 24, 10, 9, k, torch.float16 if layout == "mma" else torch.float32, layout=layout)
    sizes = [(10, 9), (7, 5), (1, 1)]
    valid_hw = torch.tensor(sizes, dtype=torch.int32, device=DEVICE)
    pads = [conv_padding(h, wd, k, stride, pad_mode) for h, wd in sizes]
    pad_tl = torch.tensor([[p[0], p[2]] for p in pads], dtype=torch.int32, device=DEVICE)
    padding = conv_padding(10, 9, k, stride, pad_mode)
    out = check(x, w, scale, shift, padding, stride, with_pool=True, valid_hw=valid_hw, pad_tl=pad_tl)
    # image 1 computed on its own, without the rest of its slot, must agree
    alone = dwconv_bn_act(x[1:2, :, :7, :5].contiguous(memory_format=torch.channels_last), w, scale, shift,
                          pads[1], stride)
    ho, wo = alone.shape[-2:]
    torch.testing.assert_close(out[1, :, :ho, :wo], alone[0], atol=1e-5, rtol=1e-5)
    assert (out[1, :, ho:] == 0).all() and (out[1, :, :, wo:] == 0).all()


def test_low_precision_reference_gets_only_cpu_copies(small_tiles, monkeypatch):
    """``check`` runs the low-precision reference on CPU copies of every tensor of the kernel's
    call: on a GPU a CUDA ``valid_hw`` reaching it fails on mixed devices. Here ``.cpu()``
    returns the tensor itself, so it is made to copy, and no tensor of the call may get through."""
    real_cpu, real_ref = torch.Tensor.cpu, dwconv_bn_act_ref
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: real_cpu(self, *a, **k).clone())
    x, w, scale, shift = make(3, 24, 10, 9, 3, torch.float16, layout="mma")
    valid_hw = torch.tensor([(10, 9), (7, 5), (1, 1)], dtype=torch.int32, device=DEVICE)
    pad_tl = torch.ones(3, 2, dtype=torch.int32, device=DEVICE)
    handed = []

    def ref(*args, compute_dtype=torch.float32, **kw):
        if compute_dtype != torch.float64:  # the low-precision reference
            handed.extend(t for t in (*args, *kw.values()) if isinstance(t, torch.Tensor))
        return real_ref(*args, compute_dtype=compute_dtype, **kw)

    monkeypatch.setitem(globals(), "dwconv_bn_act_ref", ref)
    check(x, w, scale, shift, (1, 1, 1, 1), 1, with_pool=True, valid_hw=valid_hw, pad_tl=pad_tl)
    call_storage = {t.untyped_storage().data_ptr() for t in (x, w, scale, shift, valid_hw, pad_tl)}
    assert len(handed) == 6 and not {t.untyped_storage().data_ptr() for t in handed} & call_storage


def test_empty_batch_launches_nothing():
    x, w, scale, shift = make(0, 24, 9, 9, 3)
    with count_launches() as launches:
        out, partials = dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 2, with_pool=True)
    assert out.shape == (0, 24, 5, 5) and partials.shape[0] == 0
    assert sum(launches.values()) == 0


def test_output_size_matches_conv_arithmetic():
    assert output_size(57, 33, 5, 2, conv_padding(57, 33, 5, 2, "same")) == (29, 17)
    assert output_size(7, 7, 3, 1, (1, 1, 1, 1)) == (7, 7)


BAD_CASES = {
    "3-D input": (lambda x, w, s, b: (x[0], w, s, b, (1, 1, 1, 1), 1, {}), ValueError, "4-D"),
    "int input": (lambda x, w, s, b: (x.to(torch.int32), w, s, b, (1, 1, 1, 1), 1, {}), TypeError, "dtype"),
    "channel mismatch": (lambda x, w, s, b: (x, w[:8], s, b, (1, 1, 1, 1), 1, {}), ValueError, "channel"),
    "taps-major channel mismatch": (lambda x, w, s, b: (x, taps_major(w)[:, :8], s, b, (1, 1, 1, 1), 1, {}),
                                    ValueError, "channel"),
    "tensor-core channel mismatch": (lambda x, w, s, b: (x.half(), taps_diag(w, torch.float16)[:, :8], s, b,
                                                         (1, 1, 1, 1), 1, {}), ValueError, "channel"),
    "kernel 7": (lambda x, w, s, b: (x, torch.zeros(24, 1, 7, 7, device=x.device), s, b, (3, 3, 3, 3), 1, {}), ValueError, "3 or 5"),
    "stride 3": (lambda x, w, s, b: (x, w, s, b, (1, 1, 1, 1), 3, {}), ValueError, "stride"),
    "padding len": (lambda x, w, s, b: (x, w, s, b, (1, 1), 1, {}), ValueError, "padding"),
    "padding of k": (lambda x, w, s, b: (x, w, s, b, (1, 1, 3, 1), 1, {}), ValueError, r"padding .* in \[0, 3\)"),
    "fp16 scale": (lambda x, w, s, b: (x, w, s.half(), b, (1, 1, 1, 1), 1, {}), TypeError, "scale"),
    "short shift": (lambda x, w, s, b: (x, w, s, b[:3], (1, 1, 1, 1), 1, {}), ValueError, "shift"),
    "fp32 x, tensor-core weights": (lambda x, w, s, b: (x, taps_diag(w, torch.float16), s, b, (1, 1, 1, 1), 1, {}),
                                    TypeError, "fp16 or bf16 x of the same dtype"),
    "fp16 x, bf16 tensor-core weights": (lambda x, w, s, b: (x.half(), taps_diag(w, torch.bfloat16), s, b, (1, 1, 1, 1),
                                         1, {}), TypeError, "same dtype"),
    "bad act": (lambda x, w, s, b: (x, w, s, b, (1, 1, 1, 1), 1, {"act": "gelu"}), ValueError, "gelu"),
    "valid_hw alone": (lambda x, w, s, b: (x, w, s, b, (1, 1, 1, 1), 1,
                       {"valid_hw": torch.ones(2, 2, dtype=torch.int32, device=x.device)}), ValueError, "together"),
    "int64 valid_hw": (lambda x, w, s, b: (x, w, s, b, (1, 1, 1, 1), 1,
                       {"valid_hw": torch.ones(2, 2, dtype=torch.int64, device=x.device),
                        "pad_tl": torch.ones(2, 2, dtype=torch.int32, device=x.device)}), TypeError, "valid_hw"),
    "one image's valid_hw": (lambda x, w, s, b: (x, w, s, b, (1, 1, 1, 1), 1,
                             {"valid_hw": torch.ones(1, 2, dtype=torch.int32, device=x.device),
                              "pad_tl": torch.ones(2, 2, dtype=torch.int32, device=x.device)}), ValueError,
                             r"valid_hw must have shape \(2, 2\)"),
    "one image's pad_tl": (lambda x, w, s, b: (x, w, s, b, (1, 1, 1, 1), 1,
                           {"valid_hw": torch.ones(2, 2, dtype=torch.int32, device=x.device),
                            "pad_tl": torch.ones(1, 2, dtype=torch.int32, device=x.device)}), ValueError,
                           r"pad_tl must have shape \(2, 2\)"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_clear_error(case):
    build, exc, words = BAD_CASES[case]
    x, w, scale, shift = make(2, 24, 9, 9, 3)
    *args, kw = build(x, w, scale, shift)
    with count_launches() as launches, pytest.raises(exc, match=words):
        dwconv_bn_act(*args, **kw)
    assert sum(launches.values()) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error without the interpreter")
def test_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w, scale, shift = make(1, 8, 5, 5, 3)
    with pytest.raises(RuntimeError, match="CUDA tensor, or TRITON_INTERPRET=1"):
        dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1)


#: inputs past 2^31 elements, B7-at-600-px-sized: (N, C, H, W) and whether the kernel takes
#: 64-bit offsets. The kernel forms each image's base offset in 64 bits, so many images that
#: each fit 32 bits keep INT64 off; one image past 2^31 turns it on
PAST_2_31 = {"images": ((1040, 32, 256, 256), False), "one_image": ((1, 32, 8200, 8200), True)}


@pytest.mark.gpu
@pytest.mark.usefixtures("frees_cuda_memory")
@pytest.mark.parametrize("case", [  # one_image: not among the first stage's quick tests
    "images", pytest.param("one_image", marks=pytest.mark.slow)])
@pytest.mark.parametrize("layout", ["conv", "mma"])
def test_more_than_2_31_elements_cuda(layout, case):
    """Offsets past 2^31, in the FMA taps and in the tensor-core ones (what the fused model runs
    in fp16): the last two images, or the last rows of one image."""
    (N, C, H, W), int64 = PAST_2_31[case]
    x = torch.empty(N, C, H, W, device="cuda", dtype=torch.float16, memory_format=torch.channels_last).normal_()
    _, w, scale, shift = make(1, C, 1, 1, 3, torch.float16, layout=layout)
    with record_launches() as planned:
        dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, with_pool=True)
    assert [(r.constexprs["MMA"], r.constexprs["INT64"]) for r in planned] == [(layout == "mma", int64)]
    out, partials = dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, with_pool=True)
    if case == "images":
        ref, ref_pool = dwconv_bn_act_ref(x[-2:].float(), w, scale, shift, (1, 1, 1, 1), 1, with_pool=True)
        torch.testing.assert_close(out[-2:].float(), ref, atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(partials[-2:].sum(1), ref_pool, atol=1.0, rtol=1e-3)
    else:  # the last 32 rows: the last 16 lie past 2^31
        rows, padding = last_rows(x, (1, 1, 1, 1), 3, 1, 32)
        ref = dwconv_bn_act_ref(rows.float(), w, scale, shift, padding, 1)
        torch.testing.assert_close(out[..., -32:, :].float(), ref, atol=2e-2, rtol=1e-2)


def test_out_of_range_valid_sizes():
    """CPU: a clear error. CUDA skips the host check (it would sync every call) and the kernel
    clamps the sizes to the buffer, so the result equals the full-size one and nothing is read
    out of bounds."""
    x, w, scale, shift = make(2, 24, 9, 9, 3)
    too_big = torch.full((2, 2), 99, dtype=torch.int32, device=DEVICE)
    full = torch.full((2, 2), 9, dtype=torch.int32, device=DEVICE)
    pad_tl = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="valid_hw must lie in"):
            dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, valid_hw=too_big, pad_tl=pad_tl)
    else:
        got = dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, valid_hw=too_big, pad_tl=pad_tl)
        want = dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, valid_hw=full, pad_tl=pad_tl)
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bad", [-1, 3])
def test_out_of_range_ragged_padding(bad):
    """A ragged image's (top, left) padding lies in [0, k - 1]: outside it, a clear error on the
    CPU (the stem and the fused expand + depthwise share the check)."""
    if DEVICE != "cpu":
        pytest.skip("the check reads the values: CPU tensors only (on CUDA it would sync every call)")
    x, w, scale, shift = make(2, 24, 9, 9, 3)
    valid = torch.full((2, 2), 9, dtype=torch.int32)
    pad_tl = torch.tensor([[1, 1], [1, bad]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"pad_tl .* must lie in \[0, 2\] for a 3x3 conv"):
        dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, valid_hw=valid, pad_tl=pad_tl)


def test_partial_sums_are_bitwise_repeatable(small_tiles):
    """No atomics: every tile writes its own sums, so repeated runs agree to the bit."""
    x, w, scale, shift = make(2, 24, 13, 7, 5)
    first = dwconv_bn_act(x, w, scale, shift, (2, 2, 2, 2), 2, with_pool=True)[1]
    assert torch.equal(dwconv_bn_act(x, w, scale, shift, (2, 2, 2, 2), 2, with_pool=True)[1], first)


@pytest.mark.parametrize("layout", ["conv", "mma"])
@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2)])
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_reads_stay_inside_the_input(small_tiles, k, stride, pad_mode, layout):
    """... and inside the weights (the tensor-core variant's last group of 21 channels is 5 real
    rows and 11 past the end: a read of one multiplies a NaN into its group's outputs)."""
    x, w, scale, shift = make(2, 21, 13, 11, k, torch.float16 if layout == "mma" else torch.float32, layout=layout)
    x = nan_fenced(x)
    w = nan_fenced_dense(w if layout == "mma" else taps_major(w))
    check(x, w, scale, shift, conv_padding(13, 11, k, stride, pad_mode), stride, with_pool=True)


@pytest.mark.parametrize("layout", ["conv", "mma"])
@pytest.mark.parametrize("k,stride", [(3, 1), (5, 2)])
def test_writes_stay_inside_the_output(small_tiles, k, stride, layout, monkeypatch):
    fence = FencedOutputs()
    monkeypatch.setattr(module, "empty_like_format", fence)
    x, w, scale, shift = make(2, 21, 13, 11, k, torch.float16 if layout == "mma" else torch.float32, layout=layout)
    check(x, w, scale, shift, conv_padding(13, 11, k, stride, "same"), stride, with_pool=True)
    fence.assert_untouched()


def test_unchecked_valid_sizes_are_clamped_into_the_map(monkeypatch):
    """What CUDA's unchecked sizes do, here on the CPU with the host check off: the kernel clamps
    them into [0, H] x [0, W], so a size past the map computes as the whole map and a negative
    one as an empty image (its outputs 0), and nothing outside the input is read (NaN-fenced,
    and every load checked under the interpreter)."""
    monkeypatch.setattr(module, "check_valid_sizes", lambda *args: None)
    x, w, scale, shift = make(2, 24, 9, 7, 3)
    x = nan_fenced(x)
    pad_tl = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)

    def run(sizes):
        valid_hw = torch.tensor(sizes, dtype=torch.int32, device=DEVICE)
        with interpreter_memcheck():
            return dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1, with_pool=True, valid_hw=valid_hw, pad_tl=pad_tl)

    assert_unchecked_sizes_clamped(run, 9, 7)


@pytest.mark.parametrize("dtype,layout,C", [(torch.float32, "conv", 32), (torch.float16, "conv", 64),
                                            (torch.float16, "mma", 32), (torch.float16, "mma", 24)], ids=str)
def test_only_the_tensor_core_variant_drops_the_channel_mask(dtype, layout, C):
    """``EVEN_C`` drops the x loads' channel mask where every channel of a block is real. The
    tensor-core variant's BLOCK_C is fixed at launch, so it claims that where C is a multiple
    of it; the FMA variant's is the autotuner's pick on a GPU (up to 128 where the heuristic
    said 32), so it never may: 96 channels in blocks of 64 would read 32 past the last pixel."""
    x, w, scale, shift = make(1, C, 5, 5, 3, dtype, layout=layout)
    with record_launches() as planned:
        dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), 1)
    constexprs = planned[0].constexprs
    assert constexprs["EVEN_C"] == (layout == "mma" and C % constexprs["BLOCK_C"] == 0)
    if layout == "mma":
        assert constexprs["EVEN_C"] == (C == 32)  # one block of 32 here, two of 16 on a GPU
