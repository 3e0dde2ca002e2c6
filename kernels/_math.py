"""Elementwise math shared by the kernels' epilogues, and each image's extent in a ragged batch.

SiLU is applied to every output of the stem, expand, depthwise and head convs, so its cost per
element matters, in issue slots and in the special-function unit (MUFU: 16 lanes per SM and
cycle on sm_90, an eighth of the issue rate). ``MATH`` (:func:`._utils.silu_math`) picks its
form; bit 1 of the code is the tanh form, bit 0 the GPU's approximate MUFU instructions:

- 0/1 (fp32 activations): ``y * sigmoid(y)``; on a GPU (1) from ``ex2`` and ``rcp`` in their
  flush-to-zero approximate forms (2 ulp): 5 instructions, 2 of them MUFU, where
  ``tl.sigmoid`` compiles to ~14 (a denormal-safe ``exp2`` and a range-checked division).
- 2/3 (fp16/bf16 activations): ``silu(y) = h + h * tanh(h)`` with ``h = y / 2``, the halving
  folded into the step before (:func:`bias_activation`, :func:`affine_activation`; the fused
  expand halves its weights: exact, but for fp16 weights below 2^-13, which move by at most
  2^-25). On a GPU (3) ``tanh.approx.f32``: 2 instructions, 1 of them MUFU. The PTX ISA bounds
  its relative error by 2^-10.987, which keeps B0 within the project's tolerance rule
  (``tests/kernels/test_silu_math.py``) though not every single fp16 output below y = -4;
  published measurements (Turing) are near 1.1e-5, which does. That file's SiLU sweep decides
  it on a GPU. fp32 keeps the sigmoid form: its tolerance (1e-4) has no room for the error.

The interpreter cannot run inline PTX: there (2) the tanh form runs with an exact tanh, so CPU
tests still exercise the halving folded into the step before.
"""
import triton
import triton.language as tl


@triton.jit
def _ex2_ftz(x):
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _rcp_ftz(x):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _tanh_approx(x):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def activation(y, ACT: tl.constexpr, MATH: tl.constexpr):
    """``ACT``: 0 identity, 1 SiLU, 2 ReLU6 (the codes of ``_utils.ACT_CODES``), on fp32 ``y``;
    for SiLU in the tanh forms (``MATH >= 2``) ``y`` is the argument halved (see the module)."""
    if ACT == 1:
        if MATH == 3:
            y = y + y * _tanh_approx(y)
        elif MATH == 2:
            y = y + y * (1.0 - 2.0 / (tl.exp(2.0 * y) + 1.0))
        elif MATH == 1:
            y = y * _rcp_ftz(1.0 + _ex2_ftz(y * -1.4426950408889634))
        else:
            y = y * tl.sigmoid(y)
    elif ACT == 2:
        y = tl.minimum(tl.maximum(y, 0.0), 6.0)
    return y


@triton.jit
def bias_activation(acc, bias, ACT: tl.constexpr, MATH: tl.constexpr):
    """``act(acc + bias)`` of a (rows, channels) tile and its (channels,) bias; SiLU's tanh form
    takes the sum halved, folded into the add (exact)."""
    if ACT == 1 and MATH >= 2:
        y = acc * 0.5 + (bias * 0.5)[None, :]
    else:
        y = acc + bias[None, :]
    return activation(y, ACT, MATH)


@triton.jit
def affine_activation(acc, scale, shift, ACT: tl.constexpr, MATH: tl.constexpr):
    """``act(acc * scale + shift)`` (shapes broadcast as given); SiLU's tanh form takes the
    result halved, folded into ``scale`` and ``shift`` (exact)."""
    if ACT == 1 and MATH >= 2:
        scale = scale * 0.5
        shift = shift * 0.5
    return activation(acc * scale + shift, ACT, MATH)


@triton.jit
def group_channels(G: tl.constexpr, CB: tl.constexpr):
    """Offsets 0 .. G * CB of a channel block split in G groups of CB: as (G, 1, CB) (tap and
    epilogue tiles), (G, CB, 1) (rows of diagonal weight blocks) and (G, CB) (per-tile sums).
    Built by broadcasting, not ``tl.reshape``: through a reshape triton 3.6 loses that a group's
    CB channels are contiguous, and its loads and stores of them become scalar."""
    g = tl.arange(0, G) * CB
    c = tl.arange(0, CB)
    return g[:, None, None] + c[None, None, :], g[:, None, None] + c[None, :, None], g[:, None] + c[None, :]


@triton.jit
def round_to_bf16(x):
    """fp32 ``x`` rounded to the nearest bf16 (ties to even), still as fp32; NaN stays NaN. For
    the interpreter, whose fp32 -> bf16 store truncates where a GPU rounds: rounded first, the
    store is exact on both."""
    b = x.to(tl.uint32, bitcast=True)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(x != x, x, r)


@triton.jit
def image_extent(valid_ptr, padtl_ptr, n, H, W, pad_top, pad_left, RAGGED: tl.constexpr):
    """(height, width, top, left) of image ``n``: its own valid size and padding in a ragged
    batch (sizes clamped into [0, H] x [0, W], so a bad size can never read outside the buffer:
    the kernels test 0 <= i < size unsigned, where a negative size would pass everything; CUDA
    inputs skip the host check), else the whole map's."""
    if RAGGED:
        h_img = tl.maximum(tl.minimum(tl.load(valid_ptr + 2 * n), H), 0)
        w_img = tl.maximum(tl.minimum(tl.load(valid_ptr + 2 * n + 1), W), 0)
        top = tl.load(padtl_ptr + 2 * n)
        left = tl.load(padtl_ptr + 2 * n + 1)
    else:
        h_img = H
        w_img = W
        top = pad_top
        left = pad_left
    return h_img, w_img, top, left
