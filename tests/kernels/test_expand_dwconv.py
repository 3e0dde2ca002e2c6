"""expand_dwconv (the expand 1x1 and the depthwise conv in one kernel) against its pure-torch
twin over every (kernel, stride, padding) EfficientNet uses, dtypes, odd sizes, non-power-of-two
channels, ragged batches and bad inputs (its memory bounds: test_expand_dwconv_bounds.py).
Launches are counted.

Under the interpreter one work item covers a whole map and every item has a program of its own;
the ``gpu_like`` fixture forces what a GPU launch does instead: several tiles per image with
halos that overlap, several channel blocks, the halo's expand in several chunks, and fewer
programs than items, so each program reuses its two scratch slots in turn."""
import pytest
import torch

from fastmbconv.geometry import conv_padding
from fastmbconv.kernels import _expand_dw_tiles as tiles
from fastmbconv.kernels import expand_dwconv as module
from fastmbconv.kernels._launch import count_launches, record_launches
from fastmbconv.kernels.dwconv_bn_act import taps_diag
from fastmbconv.kernels.expand_dwconv import expand_dwconv, expand_dwconv_ref
from fastmbconv.kernels.testing import LOWP_ULP, assert_close_to_ref

from ..helpers import DEVICE, last_rows

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(N, C_in, C, H, W, k, dtype=torch.float32, channels_last=True, seed=0, taps="auto"):
    """Input, expand weights (in the input's dtype, as folded) and fp32 BN parameters; the
    depthwise taps as the fused model folds them (``taps="auto"``: fp16/bf16 in the tensor-core
    layout of taps_diag, fp32 taps-major) or ``"major"`` (fp32 taps-major: the FMA taps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C_in, H, W, generator=g).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w_expand = (torch.randn(C, C_in, generator=g) / C_in**0.5).to(DEVICE, dtype)
    b_expand = (torch.randn(C, generator=g) * 0.1).to(DEVICE)
    w_dw = (torch.randn(k * k, C, generator=g) * 0.3).to(DEVICE)
    if taps == "auto" and dtype != torch.float32:
        w_dw = taps_diag(w_dw, dtype)
    scale = (torch.rand(C, generator=g) + 0.5).to(DEVICE)
    shift = (torch.randn(C, generator=g) * 0.1).to(DEVICE)
    return x, (w_expand, b_expand, w_dw, scale, shift)


@pytest.fixture
def gpu_like(monkeypatch):
    """3x5-pixel tiles (15 pixels in 16 slots), 16-channel blocks, the halo in 32-pixel products
    and a 16-pixel tail (split_halo with 32) and 3 programs."""
    monkeypatch.setattr(module, "blocks_for", lambda h, w, c_in, c, k, s, dtype: (3, 5, 16, 16))
    monkeypatch.setattr(module, "halo_chunks", lambda halo: tiles.split_halo(halo, 32))
    monkeypatch.setattr(module, "persistent_programs", lambda device, tiles, c_blocks: min(tiles, 3))


def check(x, params, padding, stride, **kw):
    with count_launches() as launches:
        out, partials = expand_dwconv(x, *params, padding, stride, **kw)
    assert launches["expand_dwconv"] == 1 and sum(launches.values()) == 1, launches
    # the tensor-core taps read the expanded halo rounded to x's dtype, as the separate path stores it
    if params[2].ndim == 3:
        kw = {**kw, "expanded_dtype": x.dtype}
    ref, ref_pool = expand_dwconv_ref(x, *params, padding, stride, compute_dtype=torch.float64, **kw)
    lowp = None
    if x.dtype != torch.float32:  # torch at the input's precision, for the tolerance rule
        lowp = expand_dwconv_ref(x.cpu(), *(p.cpu() for p in params), padding, stride, compute_dtype=x.dtype,
                                 **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})[0]
    H_out, W_out = out.shape[-2:]
    tile_h, tile_w, _, _ = module.blocks_for(H_out, W_out, x.shape[1], params[0].shape[0], round(
        params[2].shape[0] ** 0.5), stride, x.dtype)
    n_tiles = -(-H_out // tile_h) * -(-W_out // tile_w)
    assert partials.dtype == torch.float32 and partials.shape == (x.shape[0], n_tiles, params[0].shape[0])
    if params[2].ndim == 3:  # sums of values computed from a halo rounded to x's dtype: an expanded
        # value on the other side of a rounding boundary than the reference's moves a sum by an ulp of it
        err = (partials.sum(1).double().cpu() - ref_pool.cpu()).abs()
        bound = LOWP_ULP[x.dtype] * ref.abs().sum((2, 3)).cpu() + 1e-4 * max(1.0, ref_pool.abs().max().item())
        assert (err <= bound).all(), f"pool sums: max |err| {err.max():.3g}, worst excess {(err - bound).max():.3g}"
    else:
        assert_close_to_ref(partials.sum(1), ref_pool, what="pool sums")
    assert out.dtype == x.dtype
    assert_close_to_ref(out, ref, lowp, what="expand_dwconv output")
    return out


@pytest.mark.parametrize("dtype,taps", [(torch.float32, "auto"), (torch.float16, "auto"), (torch.bfloat16, "auto"),
                                        (torch.float16, "major"), (torch.bfloat16, "major")], ids=str)
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_every_efficientnet_config(k, stride, pad_mode, dtype, taps):
    """Every (kernel, stride, padding) of B0-B7, with the SE pool sums, for both taps variants
    of fp16/bf16 (tensor cores from a halo in x's dtype, as folded; FMAs from an fp32 halo)."""
    x, params = make(2, 8, 40, 13, 10, k, dtype, taps=taps)
    out = check(x, params, conv_padding(13, 10, k, stride, pad_mode), stride)
    assert out.shape == (2, 40, -(-13 // stride), -(-10 // stride))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("k,stride,pad_mode,dtype,taps", [
    (3, 1, "symmetric", torch.float16, "auto"), (3, 2, "same", torch.float16, "auto"),
    (5, 1, "symmetric", torch.bfloat16, "auto"), (5, 2, "same", torch.float16, "auto"),
    (3, 2, "same", torch.bfloat16, "major"), (5, 1, "same", torch.float32, "auto"),
    (3, 2, "symmetric", torch.float32, "auto")], ids=str)
def test_gpu_like_tiling(gpu_like, k, stride, pad_mode, dtype, taps):
    """Tiles with overlapping halos over a 7x9 map (edge tiles on both sides), a flat tile with a
    slot past its pixels, 20 expanded channels in 16-channel blocks (a partial last block),
    halos in several products with a partial last one (3x3: a 16-pixel tail; 5x5 stride 2: a
    32-pixel chunk) and 3 programs looping over the items with their two slots in turn."""
    x, params = make(2, 12, 20, 7, 9, k, dtype, taps=taps)
    check(x, params, conv_padding(7, 9, k, stride, pad_mode), stride)


@pytest.mark.parametrize("tile_h,tile_w,block_c", [(5, 6, 32), (7, 9, 16)])
@pytest.mark.parametrize("k,stride,dtype", [(3, 1, torch.float16), (5, 2, torch.bfloat16)], ids=str)
def test_tensor_core_taps_split_a_tile_among_the_warps(k, stride, dtype, tile_h, tile_w, block_c, monkeypatch):
    """Fewer than 4 channel groups of 16 per item: the tile's slots split into 2 (32 channels)
    or 4 (16 channels) batches of 16, one per warp, whose SE sums add up per group; the last
    batch holds slots past the tile (30 of 32, 63 of 64), over a map with partial edge tiles.
    The split is what triton before 3.9 compiles (tiles.TAPS_WARPS_ON_BATCH); forced here."""
    monkeypatch.setattr(tiles, "TAPS_WARPS_ON_BATCH", True)
    monkeypatch.setattr(module, "blocks_for", lambda h, w, c_in, c, k, s, dt: (tile_h, tile_w, block_c, 16))
    monkeypatch.setattr(module, "persistent_programs", lambda device, tiles, c_blocks: min(tiles, 3))
    x, params = make(2, 12, 40, 11 * stride, 13 * stride, k, dtype)
    check(x, params, conv_padding(11 * stride, 13 * stride, k, stride, "same"), stride)


@pytest.mark.parametrize("C_in,C,H,W,k,stride,pad_mode", [
    (1, 6, 1, 1, 3, 2, "same"), (1, 6, 7, 7, 5, 1, "symmetric"), (5, 30, 1, 13, 5, 2, "same"),
    (5, 30, 15, 9, 3, 1, "symmetric"), (24, 144, 7, 7, 3, 2, "same"), (24, 144, 13, 1, 5, 1, "same")])
def test_odd_sizes(H, W, C_in, C, k, stride, pad_mode):
    x, params = make(2, C_in, C, H, W, k)
    check(x, params, conv_padding(H, W, k, stride, pad_mode), stride)


@pytest.mark.parametrize("act", ["identity", "relu6"])
def test_other_activations(act):
    x, params = make(1, 8, 24, 9, 11, 3)
    check(x * 4, params, (1, 1, 1, 1), 1, act=act)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nchw_input_gives_nchw_output(dtype):
    x, params = make(2, 8, 24, 9, 7, 5, dtype, channels_last=False)
    assert check(x, params, (1, 2, 1, 2), 2).is_contiguous()


def test_same_as_the_separate_kernels():
    """The fused op equals expand (pointwise_gated) then dwconv_bn_act, up to the fp16 rounding
    of the expanded tensor that the separate path stores and the fused one never makes."""
    from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act
    from fastmbconv.kernels.pointwise_gated import pointwise_gated

    x, params = make(2, 8, 40, 11, 9, 3, torch.float16)
    w_expand, b_expand, w_dw, scale, shift = params
    padding = conv_padding(11, 9, 3, 2, "same")
    h = pointwise_gated(x, w_expand, b_expand, act="silu")
    sep, sep_parts = dwconv_bn_act(h, w_dw, scale, shift, padding, 2, act="silu", with_pool=True)
    fused, parts = expand_dwconv(x, *params, padding, 2)
    rounded, rounded_pool = expand_dwconv_ref(x, *params, padding, 2, compute_dtype=torch.float64,
                                              expanded_dtype=torch.float16)
    lowp = expand_dwconv_ref(x, *params, padding, 2, compute_dtype=torch.float16)[0]
    assert_close_to_ref(sep, rounded, lowp, what="separate path vs the twin with a rounded expansion")
    assert_close_to_ref(sep_parts.sum(1), rounded_pool, what="separate pool sums")
    torch.testing.assert_close(fused.float(), sep.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(parts.sum(1), sep_parts.sum(1), atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
@pytest.mark.parametrize("k,stride,dtype", [(3, 2, torch.float32), (5, 1, torch.float32), (5, 2, torch.bfloat16)],
                         ids=str)
def test_ragged(gpu_like, k, stride, pad_mode, dtype):
    """Per-image valid sizes and padding: each image as if alone (its expanded halo is zero past
    its own valid size, not the slot's); invalid outputs are 0 and left out of the pool sums."""
    x, params = make(3, 8, 20, 9, 7, k, dtype)
    sizes = [(9, 7), (6, 5), (1, 1)]
    valid_hw = torch.tensor(sizes, dtype=torch.int32, device=DEVICE)
    pads = [conv_padding(h, w, k, stride, pad_mode) for h, w in sizes]
    pad_tl = torch.tensor([[p[0], p[2]] for p in pads], dtype=torch.int32, device=DEVICE)
    out = check(x, params, conv_padding(9, 7, k, stride, pad_mode), stride, valid_hw=valid_hw, pad_tl=pad_tl)
    alone, _ = expand_dwconv(x[1:2, :, :6, :5].contiguous(memory_format=torch.channels_last), *params, pads[1],
                             stride)
    ho, wo = alone.shape[-2:]
    torch.testing.assert_close(out[1, :, :ho, :wo], alone[0], atol=1e-5, rtol=1e-5)
    assert (out[1, :, ho:] == 0).all() and (out[1, :, :, wo:] == 0).all()


class FencedScratch:
    """The scratch as the middle of a larger buffer: NaN inside (a tap that reads a slot element
    no expand wrote turns the output NaN) and a sentinel around it (a store past the slots
    changes it)."""

    SENTINEL = -777.0

    def __init__(self):
        self.buffers = []
        self.shapes = []

    def __call__(self, shape, device, dtype):
        self.shapes.append(tuple(shape))
        flat = 1
        for n in shape:
            flat *= n
        buf = torch.full((flat + 64,), self.SENTINEL, dtype=dtype, device=device)
        buf[32:32 + flat] = float("nan")
        self.buffers.append(buf)
        return buf[32:32 + flat].view(shape)

    def assert_fences_untouched(self):
        assert self.buffers
        for buf in self.buffers:
            assert (buf[:32] == self.SENTINEL).all() and (buf[-32:] == self.SENTINEL).all(), \
                "a kernel stored outside its scratch"



@pytest.mark.parametrize("k,stride,tile_w,dtype", [(3, 2, 7, torch.float32), (5, 2, 6, torch.float16),
                                                  (3, 1, 14, torch.bfloat16), (5, 1, 5, torch.float32)], ids=str)
def test_halo_rows_with_a_power_of_two_pitch(k, stride, tile_w, dtype, monkeypatch):
    """Halo rows 15 wide in a pitch of 16 (their 16th pixel a zero no tap reads), 16 wide in 16,
    and 9 wide in 9 (16 would waste too much), inside a NaN-filled scratch with fences."""
    monkeypatch.setattr(module, "blocks_for", lambda h, w, c_in, c, k_, s, dt: (2, tile_w, 16, 16))
    monkeypatch.setattr(module, "halo_chunks", lambda halo: tiles.split_halo(halo, 32))
    monkeypatch.setattr(module, "persistent_programs", lambda device, tiles, c_blocks: min(tiles, 3))
    halo_w = (tile_w - 1) * stride + k
    assert tiles.halo_pitch(halo_w) == {15: 16, 16: 16, 9: 9}[halo_w]
    scratch = FencedScratch()
    monkeypatch.setattr(module, "alloc_scratch", scratch)
    W = tile_w * stride + 3  # two tiles across, the second partly past the map
    x, params = make(2, 12, 20, 5, W, k, dtype)
    check(x, params, conv_padding(5, W, k, stride, "same"), stride)
    scratch.assert_fences_untouched()
    halo_h = (2 - 1) * stride + k
    assert scratch.shapes[0][2:] == (halo_h * tiles.halo_pitch(halo_w), 16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C_in", [12, 14, 15, 16, 17, 128])
def test_bias_columns_in_and_after_the_last_input_step(gpu_like, C_in, dtype):
    """With 16-channel steps the fp16/bf16 bias columns (a high and a low part) share the last
    step (12 and 14 channels) or take a step of their own (15, 16, and 17 whose last step holds
    one channel); fp32, and fp16/bf16 over 128 channels in whole steps, start the accumulator
    at the bias and mask the halo after its SiLU."""
    assert tiles.bias_columns(C_in, 16, dtype) == (0 if dtype == torch.float32 or C_in == 128 else 2)
    x, params = make(2, C_in, 20, 7, 9, 3, dtype)
    check(x, params, conv_padding(7, 9, 3, 2, "same"), 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_expansion_is_exact_before_its_rounding(gpu_like, dtype, monkeypatch):
    """A centre tap of 1 and no activation make the output the expanded halo itself, which the
    tensor-core variant rounds to x's dtype once: it must equal the reference's rounded
    expansion (biases with low bits, which a bias rounded to x's dtype would lose). The expand's
    SiLU takes its exact tanh form (MATH 2) on a GPU too: ``tanh.approx``'s error alone would move
    a few percent of fp16 values across a rounding boundary."""
    monkeypatch.setattr(module, "silu_math", lambda dtype, device: 2)
    x, (w_expand, _, _, _, _) = make(2, 12, 20, 7, 9, 3, dtype)
    b_expand = torch.linspace(-3.1, 2.9, 20, device=DEVICE) + 1e-3 / 3
    taps = torch.zeros(9, 20, device=DEVICE)
    taps[4] = 1.0
    ones, zeros = torch.ones(20, device=DEVICE), torch.zeros(20, device=DEVICE)
    params = (w_expand, b_expand, taps_diag(taps, dtype), ones, zeros)
    out, _ = expand_dwconv(x, *params, (1, 1, 1, 1), 1, act="identity")
    ref, _ = expand_dwconv_ref(x, *params, (1, 1, 1, 1), 1, act="identity", compute_dtype=torch.float64,
                               expanded_dtype=dtype)
    differ = out.double() != ref
    assert differ.float().mean() < 0.01, f"{int(differ.sum())} of {differ.numel()} expanded values differ"


def test_partial_sums_are_bitwise_repeatable(gpu_like):
    x, params = make(1, 8, 20, 5, 7, 5)
    first = expand_dwconv(x, *params, (2, 2, 2, 2), 2)[1]
    assert all(torch.equal(expand_dwconv(x, *params, (2, 2, 2, 2), 2)[1], first) for _ in range(2))


def test_empty_batch_launches_nothing():
    x, params = make(0, 8, 24, 9, 9, 3)
    with count_launches() as launches:
        out, partials = expand_dwconv(x, *params, (1, 1, 1, 1), 2)
    assert out.shape == (0, 24, 5, 5) and partials.shape[0] == 0
    assert sum(launches.values()) == 0


def test_gpu_like_tiling_with_64_channel_blocks(monkeypatch):
    """The 64-channel blocks of 3x3 layers, a partial last block (100 channels), a 5x4 tile
    (20 pixels in 32 slots) whose 42-pixel halo is a 32- and a 16-pixel product and no whole
    one (split_halo with 64), 2 programs."""
    monkeypatch.setattr(module, "blocks_for", lambda h, w, c_in, c, k, s, dtype: (5, 4, 64, 16))
    monkeypatch.setattr(module, "halo_chunks", lambda halo: tiles.split_halo(halo, 64))
    monkeypatch.setattr(module, "persistent_programs", lambda device, tiles, c_blocks: min(tiles, 2))
    assert tiles.split_halo(7 * 6) == (64, 0, 32, 16)
    x, params = make(2, 12, 100, 7, 9, 3, torch.float16)
    check(x, params, conv_padding(7, 9, 3, 1, "same"), 1)


@pytest.mark.parametrize("k,stride,dtype", [(3, 1, torch.float32), (5, 2, torch.float32), (5, 1, torch.float16),
                                           (3, 2, torch.bfloat16)], ids=str)
def test_padded_taps_rows(gpu_like, k, stride, dtype):
    """Taps rows padded past C (pad_taps: whole channel blocks, loaded without a mask) give the
    unpadded result bit for bit. With FMA taps the padding never reaches an output or a sum
    (NaN there changes nothing); tensor-core taps need it zero (a row of a diagonal block meets
    every channel of its group in the dot), which pad_taps gives."""
    x, params = make(2, 12, 20, 7, 9, k, dtype)
    padding = conv_padding(7, 9, k, stride, "same")
    w_dw = params[2]
    padded = tiles.pad_taps(w_dw)
    assert padded.shape == (k * k, tiles.TAPS_ALIGN, *w_dw.shape[2:]) and padded.dtype == w_dw.dtype
    assert torch.equal(padded[:, :20], w_dw) and (padded[:, 20:] == 0).all()
    variants = [padded]
    if w_dw.ndim == 2:
        nan_padded = padded.clone()
        nan_padded[:, 20:] = float("nan")
        variants.append(nan_padded)
    with count_launches() as launches:
        plain = expand_dwconv(x, *params, padding, stride)
        results = [expand_dwconv(x, *params[:2], w, *params[3:], padding, stride) for w in variants]
    assert launches["expand_dwconv"] == 1 + len(variants)
    for out, partials in results:
        assert torch.equal(out, plain[0]) and torch.equal(partials, plain[1])
    check(x, (*params[:2], variants[-1], *params[3:]), padding, stride)


BAD_CASES = {
    "3-D input": (lambda x, p: ((x[0], *p), {}), ValueError, "4-D"),
    "int input": (lambda x, p: ((x.to(torch.int32), *p), {}), TypeError, "dtype"),
    "w_expand dtype": (lambda x, p: ((x, p[0].half(), *p[1:]), {}), TypeError, "w_expand dtype"),
    "w_expand channels": (lambda x, p: ((x, p[0][:, :3], *p[1:]), {}), ValueError, "input with 8 channels"),
    "w_dw shape": (lambda x, p: ((x, p[0], p[1], p[2][:, :5], *p[3:]), {}), ValueError, "w_dw"),
    "w_dw short": (lambda x, p: ((x, p[0], p[1], p[2][:, :23], *p[3:]), {}), ValueError, "padded past 24"),
    "w_dw 3-D not 16": (lambda x, p: ((x, p[0], p[1], p[2].reshape(9, 24, 1).expand(9, 24, 8), *p[3:]), {}),
                        ValueError, "taps_diag"),
    "diag taps with fp32 x": (lambda x, p: ((x, p[0], p[1], taps_diag(p[2], torch.float16), *p[3:]), {}), TypeError,
                              "fp16 or bf16 like x"),
    "fp16 taps-major": (lambda x, p: ((x, p[0], p[1], p[2].half(), *p[3:]), {}), TypeError, "must be fp32"),
    "kernel 7": (lambda x, p: ((x, p[0], p[1], torch.zeros(49, 24, device=x.device), *p[3:]), {}), ValueError,
                 "k 3 or 5"),
    "fp16 bias": (lambda x, p: ((x, p[0], p[1].half(), *p[2:]), {}), TypeError, "b_expand"),
    "short shift": (lambda x, p: ((x, *p[:4], p[4][:3]), {}), ValueError, "shift"),
    "stride 3": (lambda x, p: ((x, *p), {"stride": 3}), ValueError, "stride"),
    "bad act": (lambda x, p: ((x, *p), {"act": "gelu"}), ValueError, "gelu"),
    "valid_hw alone": (lambda x, p: ((x, *p), {"valid_hw": torch.ones(2, 2, dtype=torch.int32, device=x.device)}),
                       ValueError, "together"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_clear_error(case):
    build, exc, words = BAD_CASES[case]
    x, params = make(2, 8, 24, 9, 9, 3)
    args, kw = build(x, params)
    kw.setdefault("stride", 1)
    with count_launches() as launches, pytest.raises(exc, match=words):
        expand_dwconv(*args, (1, 1, 1, 1), **kw)
    assert sum(launches.values()) == 0


def test_out_of_range_valid_sizes():
    x, params = make(2, 8, 24, 9, 9, 3)
    too_big = torch.full((2, 2), 99, dtype=torch.int32, device=DEVICE)
    pad_tl = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="valid_hw must lie in"):
            expand_dwconv(x, *params, (1, 1, 1, 1), 1, valid_hw=too_big, pad_tl=pad_tl)
    else:
        full = torch.full((2, 2), 9, dtype=torch.int32, device=DEVICE)
        torch.testing.assert_close(expand_dwconv(x, *params, (1, 1, 1, 1), 1, valid_hw=too_big, pad_tl=pad_tl),
                                   expand_dwconv(x, *params, (1, 1, 1, 1), 1, valid_hw=full, pad_tl=pad_tl))


#: inputs past 2^31 elements: (N, C_in, H, W) and whether the kernel takes 64-bit offsets. The
#: kernel forms each image's base offset in 64 bits, so many images that each fit 32 bits keep
#: INT64 off; one image past 2^31 turns it on
PAST_2_31 = {"images": ((4100, 16, 184, 184), False), "one_image": ((1, 16, 11600, 11600), True)}


@pytest.mark.gpu
@pytest.mark.usefixtures("frees_cuda_memory")
@pytest.mark.parametrize("case", [  # one_image: not among the first stage's quick tests
    "images", pytest.param("one_image", marks=pytest.mark.slow)])
@pytest.mark.parametrize("taps", ["major", "auto"], ids=["fma", "mma"])
def test_more_than_2_31_elements_cuda(taps, case):
    """Input offsets past 2^31, with the FMA taps and with the tensor-core ones (what the fused
    model runs in fp16): the last two images, or the last rows of one image."""
    (N, C_in, H, W), int64 = PAST_2_31[case]
    x = torch.empty(N, C_in, H, W, device="cuda", dtype=torch.float16, memory_format=torch.channels_last).normal_()
    _, params = make(1, C_in, 32, 1, 1, 3, torch.float16, taps=taps)
    with record_launches() as planned:
        expand_dwconv(x, *params, (1, 1, 1, 1), 2)
    assert [(r.constexprs["MMA"], r.constexprs["INT64"]) for r in planned] == [(taps == "auto", int64)]
    out, partials = expand_dwconv(x, *params, (1, 1, 1, 1), 2)
    # the tensor-core taps read the expanded halo rounded to fp16, as check() says
    expanded_dtype = x.dtype if taps == "auto" else None
    if case == "images":
        ref, ref_pool = expand_dwconv_ref(x[-2:], *params, (1, 1, 1, 1), 2, expanded_dtype=expanded_dtype)
        torch.testing.assert_close(out[-2:].float(), ref, atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(partials[-2:].sum(1), ref_pool, atol=1.0, rtol=1e-3)
    else:  # the last 32 output rows read the last 65 input rows, of which about 30 lie past 2^31
        rows, padding = last_rows(x, (1, 1, 1, 1), 3, 2, 32)
        ref, _ = expand_dwconv_ref(rows, *params, padding, 2, expanded_dtype=expanded_dtype)
        torch.testing.assert_close(out[..., -32:, :].float(), ref, atol=2e-2, rtol=1e-2)
