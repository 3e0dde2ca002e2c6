"""stem_conv_bn_act (the stem conv + folded BN + SiLU as one patch-matrix product) against its
pure-torch twin: both padding conventions, input layouts and dtypes as images come, output
dtypes, ragged batches, GPU-style tiling, bad input."""
import pytest
import torch

from fastmbconv.geometry import conv_padding
from fastmbconv.kernels import stem_conv_bn_act as module
from fastmbconv.kernels._launch import count_launches, record_launches
from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act, stem_conv_bn_act_ref, taps_major
from fastmbconv.kernels.testing import FencedOutputs, assert_close_to_ref, nan_fenced, nan_fenced_dense

from ..helpers import DEVICE, assert_unchecked_sizes_clamped, interpreter_memcheck

pytestmark = pytest.mark.interpreter


def make(N, H, W, C_out=32, C_in=3, dtype=torch.float32, channels_last=False, seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C_in, H, W, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C_out, C_in, k, k, generator=g) * 0.3 * (27 / (k * k * C_in)) ** 0.5).to(DEVICE)
    bias = (torch.randn(C_out, generator=g) * 0.1).to(DEVICE)
    return x, w, bias


def check(x, w, bias, padding, out_dtype=None, fenced=False, **kw):
    out_dtype = out_dtype or x.dtype
    with count_launches() as launches:
        out = stem_conv_bn_act(x, w, bias, padding, 2, out_dtype=out_dtype, **kw)
    assert launches["stem_conv_bn_act"] == 1
    assert out.dtype == out_dtype and (fenced or out.is_contiguous(memory_format=torch.channels_last))
    ref = stem_conv_bn_act_ref(x, w, bias, padding, 2, compute_dtype=torch.float64, **kw)
    lowp = None
    if out_dtype != torch.float32:  # the image cast to the compute dtype, conv at that precision
        lowp = stem_conv_bn_act_ref(x.to(out_dtype).cpu(), w.to(out_dtype).cpu(), bias.cpu(), padding, 2,
                                    compute_dtype=out_dtype,
                                    **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    assert_close_to_ref(out, ref, lowp, what="stem output")
    return out


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
@pytest.mark.parametrize("hw", [(32, 32), (33, 20), (1, 1), (7, 2)])
def test_matches_ref(hw, pad_mode, out_dtype):
    x, w, bias = make(2, *hw)
    check(x, w, bias, conv_padding(*hw, 3, 2, pad_mode), out_dtype)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k,C_in", [(7, 3), (5, 16), (7, 16), (1, 5)])
def test_patches_wider_than_a_step(k, C_in, out_dtype):
    """Patches of more than MAX_BLOCK_K columns (7x7x3: 147 in three steps, 7x7x16: 784 in
    thirteen) are summed over steps, each with its own column masks; whole patches that wide
    did not fit an sm_90 program's shared memory."""
    x, w, bias = make(2, 13, 11, C_out=24, C_in=C_in, k=k, seed=1)
    with record_launches() as planned:
        stem_conv_bn_act(x, w, bias, conv_padding(13, 11, k, 2, "same"), 2, out_dtype=out_dtype)
    assert planned[0].constexprs["BLOCK_K"] == max(16, min(module.next_pow2(k * k * C_in), module.MAX_BLOCK_K))
    check(x, w, bias, conv_padding(13, 11, k, 2, "same"), out_dtype)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_output_channels_past_a_block(out_dtype, monkeypatch):
    """More output channels than MAX_BLOCK_CO (150: two full blocks and a tail of 22) over a
    patch of three steps (7x7x3): each block of channels is its own program, with its own masks
    (reads and writes fenced); all of them at once did not fit an sm_90 program's shared memory.
    A weight read past the last channel would only reach accumulator columns that are never
    stored: the fence cannot see it, the interpreter's memcheck (and compute-sanitizer's) does."""
    x, w, bias = make(2, 13, 11, C_out=150, k=7, seed=2)
    with record_launches() as planned:
        stem_conv_bn_act(x, w, bias, conv_padding(13, 11, 7, 2, "same"), 2, out_dtype=out_dtype)
    assert planned[0].constexprs["BLOCK_CO"] == module.MAX_BLOCK_CO == 64 and planned[0].grid[1] == 3
    fence = FencedOutputs()
    monkeypatch.setattr(module, "_empty_out", lambda x, c, h, w, dtype: fence(x, (x.shape[0], c, h, w), dtype))
    with interpreter_memcheck():
        check(nan_fenced(x), nan_fenced_dense(taps_major(w)), bias, conv_padding(13, 11, 7, 2, "same"), out_dtype,
              fenced=True)
    fence.assert_untouched()


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16], ids=str)
def test_reads_images_as_they_come(layout, in_dtype):
    """An fp32 NCHW image, an fp16 channels_last batch, a strided crop: no copy is needed."""
    x, w, bias = make(2, 23, 30, dtype=in_dtype, channels_last=layout == "nhwc")
    if layout == "strided":
        x = x[:, :, 1::2, 2:]
    check(x, w, bias, conv_padding(*x.shape[-2:], 3, 2, "same"), torch.float16)


def test_gpu_style_tiles_and_prepared_weights(monkeypatch):
    """Many 2x8 tiles per image (edge tiles included), 40 output channels (a masked tail)."""
    monkeypatch.setattr(module, "tile_for", lambda h, w, width: (2, 8))
    x, w, bias = make(3, 19, 21, C_out=40)
    out = check(x, w, bias, conv_padding(19, 21, 3, 2, "same"), torch.float32)
    torch.testing.assert_close(stem_conv_bn_act(x, taps_major(w), bias, conv_padding(19, 21, 3, 2, "same")), out)


def test_gpu_tiles_take_128_pixels_where_the_output_is_at_most_32_channels(monkeypatch):
    """Stems of at most 32 channels (B0-B2's; 32 im2col columns) may take 128-pixel tiles,
    which halve the per-program index math; wider ones (B3-B7's 40-64) at most 64. The tile
    still fits the map first: no 128-pixel tile divides B1's 120 x 120."""
    monkeypatch.setattr(module, "interpreting", lambda: False)
    assert module.tile_for(112, 112, 32) == (8, 16)  # B0 224 px
    assert module.tile_for(120, 120, 32) == (8, 8)  # B1 240 px
    assert module.tile_for(112, 112, 64) == (4, 16)
    assert module.tile_for(14, 14, 32) == (2, 16)  # 8 x 16 would leave 40% of the slots idle
    assert module.tile_for(1, 1, 32) == (1, 32)


@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_ragged(pad_mode):
    x, w, bias = make(3, 21, 17)
    sizes = [(21, 17), (10, 5), (1, 1)]
    valid = torch.tensor(sizes, dtype=torch.int32, device=DEVICE)
    pads = [conv_padding(h, wd, 3, 2, pad_mode) for h, wd in sizes]
    pad_tl = torch.tensor([[p[0], p[2]] for p in pads], dtype=torch.int32, device=DEVICE)
    out = check(x, w, bias, conv_padding(21, 17, 3, 2, pad_mode), valid_hw=valid, pad_tl=pad_tl)
    alone = stem_conv_bn_act(x[1:2, :, :10, :5], w, bias, pads[1], 2)
    torch.testing.assert_close(out[1:2, :, :5, :3], alone, atol=1e-5, rtol=1e-5)
    assert (out[1, :, 5:] == 0).all() and (out[1, :, :, 3:] == 0).all()


def test_memory_fences(monkeypatch):
    fence = FencedOutputs()
    monkeypatch.setattr(module, "_empty_out", lambda x, c, h, w, dtype: fence(x, (x.shape[0], c, h, w), dtype))
    x, w, bias = make(2, 13, 11, channels_last=True)
    check(nan_fenced(x), w, bias, conv_padding(13, 11, 3, 2, "same"), fenced=True)
    fence.assert_untouched()


@pytest.mark.parametrize("case,exc,words", [
    ("3-D input", ValueError, "4-D"),
    ("weight shape", ValueError, "weight"),
    ("fp16 bias", TypeError, "bias"),
    ("stride 3", ValueError, "stride"),
    ("padding", ValueError, "padding"),
    ("out dtype", TypeError, "out_dtype"),
    ("too many channels", ValueError, "at most 16"),
    ("fp16 taps-major weight", TypeError, "fp32"),
])
def test_bad_input(case, exc, words):
    x, w, bias = make(2, 9, 9)
    args, kw = [x, w, bias, (1, 1, 1, 1), 2], {}
    if case == "3-D input":
        args[0] = x[0]
    elif case == "weight shape":
        args[1] = w[:, :2]
    elif case == "fp16 bias":
        args[2] = bias.half()
    elif case == "stride 3":
        args[4] = 3
    elif case == "padding":
        args[3] = (1, 1)
    elif case == "out dtype":
        kw["out_dtype"] = torch.int8
    elif case == "fp16 taps-major weight":  # the fp32 dot needs both operands fp32 (a Triton error on a GPU)
        args[1] = module.taps_major(w).half()
    else:
        x, w, bias = make(1, 9, 9, C_in=20)
        args[:3] = x, w, bias
    with count_launches() as launches, pytest.raises(exc, match=words):
        stem_conv_bn_act(*args, **kw)
    assert sum(launches.values()) == 0


@pytest.mark.parametrize("bad", [(0, 5), (-1, 5), (9, 99)], ids=["zero", "negative", "too_big"])
def test_out_of_range_valid_sizes_are_a_clear_error(bad):
    """As the depthwise kernels: sizes outside [1, H] x [1, W] are rejected on the host for CPU
    tensors (CUDA skips the check, which would sync every call, and the kernel clamps them into
    [0, H] x [0, W]: the result is that of the clamped sizes)."""
    x, w, bias = make(2, 9, 8)
    valid_hw = torch.tensor([[9, 8], list(bad)], dtype=torch.int32, device=DEVICE)
    pad_tl = torch.zeros(2, 2, dtype=torch.int32, device=DEVICE)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="valid_hw must lie in"):
            stem_conv_bn_act(x, w, bias, (0, 1, 0, 1), 2, valid_hw=valid_hw, pad_tl=pad_tl)
        return
    clamped = valid_hw.clone()
    clamped[:, 0].clamp_(0, 9)
    clamped[:, 1].clamp_(0, 8)
    ref = stem_conv_bn_act_ref(x, w, bias, (0, 1, 0, 1), 2, valid_hw=clamped, pad_tl=pad_tl,
                               compute_dtype=torch.float64)
    assert_close_to_ref(stem_conv_bn_act(x, w, bias, (0, 1, 0, 1), 2, valid_hw=valid_hw, pad_tl=pad_tl), ref,
                        what=f"stem with valid sizes {list(bad)} clamped")


def test_unchecked_valid_sizes_are_clamped_into_the_map(monkeypatch):
    """As in dwconv_bn_act: with the host check off (as for CUDA tensors), a size past the map
    computes as the whole map and a negative one as an empty image, reading nothing outside the
    image (NaN-fenced, every load checked under the interpreter)."""
    monkeypatch.setattr(module, "check_valid_sizes", lambda *args: None)
    x, w, bias = make(2, 9, 8, C_out=24)
    x = nan_fenced(x)
    pad_tl = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)

    def run(sizes):
        with interpreter_memcheck():
            return stem_conv_bn_act(x, w, bias, (1, 1, 1, 1), 2, pad_tl=pad_tl,
                                    valid_hw=torch.tensor(sizes, dtype=torch.int32, device=DEVICE))

    assert_unchecked_sizes_clamped(run, 9, 8)
