"""Elementwise math shared by the kernels' epilogues.

SiLU is applied to every output of the stem, expand, depthwise and head convs, so its cost per
element matters: ``y * tl.sigmoid(y)`` compiles to ~14 SASS instructions on sm_90 (a
denormal-safe ``exp2`` and a range-checked division). With ``FAST`` it is 5: ``ex2`` and
``rcp`` in their flush-to-zero approximate forms (2 ulp), then multiplies. The interpreter
cannot run inline PTX, so launchers pass ``FAST=False`` there.
"""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _ex2_ftz(x):
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _rcp_ftz(x):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def activation(y, ACT: tl.constexpr, FAST: tl.constexpr):
    """``ACT``: 0 identity, 1 SiLU, 2 ReLU6 (the codes of ``_utils.ACT_CODES``), on fp32 ``y``."""
    if ACT == 1:
        if FAST:
            y = y * _rcp_ftz(1.0 + _ex2_ftz(y * -1.4426950408889634))
        else:
            y = y * tl.sigmoid(y)
    elif ACT == 2:
        y = tl.minimum(tl.maximum(y, 0.0), 6.0)
    return y
