"""The expand half of :mod:`.expand_dwconv`: a work item's halo through the expand 1x1 (folded
BN, bias, SiLU) into the program's scratch slot, in products of ``tl.dot``, and what the
program computes once for it (the B tiles of its channel block, each product's halo pixels)."""
import triton
import triton.language as tl

from ._math import activation, round_to_bf16


@triton.jit
def expand_weights(we_ptr, offs_c, c_ok, bias, C_IN: tl.constexpr, BLOCK_K: tl.constexpr, NB: tl.constexpr,
                   HALF: tl.constexpr):
    """The expand's B tiles of one channel block, one per K step (``BLOCK_K`` input channels;
    see :func:`expand_chunk` for the bias columns, in the last step or a 16-row step of their
    own), halved for SiLU's tanh form (``HALF``). Loaded once per program: its items share them."""
    LAST: tl.constexpr = (C_IN - 1) // BLOCK_K * BLOCK_K  # the last step's first channel
    ROOM: tl.constexpr = C_IN - LAST + NB <= BLOCK_K  # the bias columns fit in the last step
    tiles = ()
    for k0 in tl.static_range(0, C_IN, BLOCK_K):
        tiles = tiles + (_weight_tile(we_ptr, offs_c, c_ok, bias, k0, BLOCK_K, NB > 0 and ROOM and k0 == LAST, NB,
                                      C_IN, HALF),)
    if NB > 0 and not ROOM:
        tiles = tiles + (_weight_tile(we_ptr, offs_c, c_ok, bias, C_IN, 16, True, NB, C_IN, HALF),)
    return tiles


@triton.jit
def _weight_tile(we_ptr, offs_c, c_ok, bias, k0, KW: tl.constexpr, WITH_BIAS: tl.constexpr, NB: tl.constexpr,
                 C_IN: tl.constexpr, HALF: tl.constexpr):
    """One K step's (KW, BLOCK_C) B tile: the weights of input channels ``k0 .. k0 + KW``,
    zero past C_IN, and ``WITH_BIAS`` the bias's high and low parts in the two rows after."""
    ks = k0 + tl.arange(0, KW)
    k_ok = ks < C_IN
    b = tl.load(we_ptr + offs_c[None, :] * C_IN + ks[:, None], mask=k_ok[:, None] & c_ok[None, :], other=0.0)
    if HALF:
        b = (b.to(tl.float32) * 0.5).to(b.dtype)
    if WITH_BIAS:
        hi = bias.to(b.dtype)
        lo = (bias - hi.to(tl.float32)).to(b.dtype)
        b = tl.where((ks == C_IN)[:, None], hi[None, :], tl.where((ks == C_IN + 1)[:, None], lo[None, :], b))
    return b


@triton.jit
def _expand_step(acc, rows, in_img, b, k0, KW: tl.constexpr, WITH_BIAS: tl.constexpr, NB: tl.constexpr,
                 C_IN: tl.constexpr, SXC: tl.constexpr, INT64: tl.constexpr, DOT_FP32: tl.constexpr):
    """One K step of a halo product against its B tile: input channels ``k0 .. k0 + KW`` and,
    ``WITH_BIAS``, the bias columns after the last one (see :func:`expand_chunk`)."""
    ks = k0 + tl.arange(0, KW)
    if INT64:
        k_off = ks.to(tl.int64) * SXC
    else:
        k_off = ks * SXC
    a = tl.load(rows[:, None] + k_off[None, :], mask=in_img[:, None] & (ks < C_IN)[None, :], other=0.0)
    if DOT_FP32:
        a = a.to(tl.float32)
    if WITH_BIAS:
        is_bias = (ks >= C_IN) & (ks < C_IN + NB)
        a = tl.where(in_img[:, None] & is_bias[None, :], 1.0, a).to(a.dtype)
    if DOT_FP32:
        return tl.dot(a, b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def halo_pixels(h0, CH: tl.constexpr, HALO: tl.constexpr, HALO_W: tl.constexpr, HALO_PITCH: tl.constexpr,
                SXH: tl.constexpr, SXW: tl.constexpr, INT64: tl.constexpr):
    """(row, column, offset in the image) in the halo of slot pixels ``h0 .. h0 + CH``. A pixel
    no tap reads (past the halo's width in its row's pitch, or past the halo) gets a row past
    any image, so the image bounds mask it. The same for every item: computed once per program."""
    hp = h0 + tl.arange(0, CH)
    hr = hp // HALO_PITCH  # with a power-of-two pitch a shift, no division
    hc = hp % HALO_PITCH
    if INT64:
        off = hr.to(tl.int64) * SXH + hc.to(tl.int64) * SXW
    else:
        off = hr * SXH + hc * SXW
    unread = hp >= HALO
    if HALO_W < HALO_PITCH:
        unread = unread | (hc >= HALO_W)
    return tl.where(unread, 1 << 30, hr), hc, off


@triton.jit
def expand_chunk(x_img, wb, we_ptr, offs_e, e_ok, bias, geo, offs_l, slot, ih0, iw0, h_img, w_img,
                 SXH: tl.constexpr, h0, CH: tl.constexpr, HALO: tl.constexpr, HALO_W: tl.constexpr,
                 HALO_PITCH: tl.constexpr, C_IN: tl.constexpr, SXC: tl.constexpr, SXW: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr, DOT_FP32: tl.constexpr,
                 MATH: tl.constexpr, ROUND_BF16: tl.constexpr, NB: tl.constexpr, W_ONCE: tl.constexpr):
    """Halo pixels ``h0 .. h0 + CH`` of one item: the expand conv, SiLU'd and zero outside the
    image, into the slot: fp32 for the FMA taps (no conversions, never rounded), else in the
    activations' fp16/bf16 for the tensor-core taps (rounded as the separate path stores the
    expanded tensor).

    With tensor-core products (``NB`` = 2) the bias is part of the product: past the input's
    C_IN channels, A holds 1 for pixels in the image (0 outside) and B the bias as a high and a
    low part in the weights' fp16/bf16 (together within about 2^-21 of the bias in fp16, 2^-16
    in bf16). A pixel outside the image then sums to exactly 0, whose SiLU is 0, so the
    epilogue needs no mask and no per-pixel index math of its own. The fp32 product (``NB`` =
    0) runs as FMAs, where a column costs as much as an input channel: there the bias starts the
    accumulator and the epilogue masks. SiLU's tanh form (``MATH`` >= 2, fp16/bf16) takes the
    product halved: the caller halves the bias and :func:`_weight_tile` the weights, so that
    costs no instruction per pixel."""
    hp = h0 + tl.arange(0, CH)
    hr, hc, off = geo
    in_img = ((ih0 + hr).to(tl.uint32) < h_img.to(tl.uint32)) & ((iw0 + hc).to(tl.uint32) < w_img.to(tl.uint32))
    rows = x_img + off  # x_img: the halo's top left pixel, maybe outside the image (never read there)
    if NB == 0:
        acc = tl.zeros((CH, BLOCK_C), dtype=tl.float32) + bias[None, :]
    else:
        acc = tl.zeros((CH, BLOCK_C), dtype=tl.float32)
    LAST: tl.constexpr = (C_IN - 1) // BLOCK_K * BLOCK_K  # the last step's first channel
    ROOM: tl.constexpr = C_IN - LAST + NB <= BLOCK_K  # the bias columns fit in the last step
    for i in tl.static_range(0, (C_IN + BLOCK_K - 1) // BLOCK_K):
        if W_ONCE:
            b = wb[i]
        else:
            b = _weight_tile(we_ptr, offs_e, e_ok, bias, i * BLOCK_K, BLOCK_K, False, NB, C_IN, MATH >= 2)
        acc = _expand_step(acc, rows, in_img, b, i * BLOCK_K, BLOCK_K, NB > 0 and ROOM and i * BLOCK_K == LAST,
                           NB, C_IN, SXC, INT64, DOT_FP32)
    if NB > 0 and not ROOM:  # a 16-channel step of its own (NB > 0: the weights were loaded once)
        acc = _expand_step(acc, rows, in_img, wb[(C_IN + BLOCK_K - 1) // BLOCK_K], C_IN, 16, True, NB, C_IN, SXC,
                           INT64, DOT_FP32)
    e = activation(acc, 1, MATH)
    if NB == 0:
        e = tl.where(in_img[:, None], e, 0.0)
    dst = slot + (hp[:, None] * BLOCK_C + offs_l[None, :])
    if ROUND_BF16:
        e = round_to_bf16(e)
    e = e.to(slot.dtype.element_ty)
    if h0 + CH > HALO:
        tl.store(dst, e, mask=(hp < HALO)[:, None])
    else:
        tl.store(dst, e)
