"""bf16 products: fp32 operands are rounded to bf16 before the dot, as a GPU's tensor cores take
them (``_utils.round_bf16``). Under the interpreter the dot itself runs in fp32, so each kernel
that casts an fp32 value for a bf16 dot (the stem's image and weights, the gated 1x1's rows, the
SE gate's means and hidden vector) must round it first or compute something the GPU does not.

Each case is built so that rounding decides the answer: ``A`` rounds to 1 in bf16, and a weight
row (1, -1) takes ``A - 1``, which is 0 on a GPU and 0.0023 without the rounding. On a GPU the
same tests check that the tensor cores do round."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels._math import round_to_bf16
from fastmbconv.kernels.pointwise_gated import pointwise_gated
from fastmbconv.kernels.squeeze_excite import squeeze_excite_gate
from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act

from ..helpers import DEVICE

pytestmark = pytest.mark.interpreter

A = 1.0 + 0.3 * 2.0**-7  # bf16 keeps 7 fraction bits: this rounds to 1.0
bf16 = torch.bfloat16


def rounded(t: torch.Tensor) -> torch.Tensor:
    return t.to(bf16).double()


def test_the_rounding_decides_these_cases():
    assert rounded(torch.tensor(A)).item() == 1.0 and A - 1.0 > 2e-3


def test_stem_rounds_an_fp32_image_and_its_weights():
    x = torch.zeros(1, 3, 9, 7)
    x[:, 0], x[:, 1] = A, 1.0
    w = torch.zeros(16, 3, 3, 3)
    w[:, 0, 1, 1], w[:, 1, 1, 1] = 1.0, -1.0  # the centre tap: always inside the image
    w[:, 2] = torch.randn(16, 3, 3)  # channel 2 is 0: adds nothing
    bias = torch.zeros(16)
    with count_launches() as launches:
        out = stem_conv_bn_act(x.to(DEVICE), w.to(DEVICE), bias.to(DEVICE), (1, 1, 1, 1), 2, act="identity",
                               out_dtype=bf16)
    assert launches["stem_conv_bn_act"] == 1
    gpu = F.conv2d(rounded(x), rounded(w), stride=2, padding=1)
    assert gpu.abs().max() == 0 and F.conv2d(x.double(), w.double(), stride=2, padding=1).abs().min() > 2e-3
    assert out.dtype == bf16 and out.abs().max().item() == 0.0


def test_gated_1x1_rounds_its_gated_rows():
    x = torch.ones(2, 2, 3, 5, dtype=bf16)
    gate = torch.tensor([[A, 1.0], [1.0, A]])
    w = torch.tensor([[1.0, -1.0]] * 16, dtype=bf16)
    bias = torch.zeros(16)
    with count_launches() as launches:
        out = pointwise_gated(x.to(DEVICE), w.to(DEVICE), bias.to(DEVICE), gate=gate.to(DEVICE), impl="triton")
    assert launches["pointwise_gated"] == 1
    assert out.dtype == bf16 and out.abs().max().item() == 0.0


def test_se_gate_rounds_its_means():
    C = 16
    sums = torch.zeros(3, C)
    sums[:, 0], sums[:, 1] = A, 1.0
    w_r = torch.zeros(2, C, 1, 1, dtype=bf16)
    w_r[:, 0], w_r[:, 1] = 1.0, -1.0
    b_r = torch.zeros(2, dtype=bf16)
    w_e = torch.ones(C, 2, 1, 1, dtype=bf16)
    b_e = torch.zeros(C, dtype=bf16)
    with count_launches() as launches:
        gate = squeeze_excite_gate(*(t.to(DEVICE) for t in (sums, w_r, b_r, w_e, b_e)), hw=1)
    assert launches["squeeze_excite_gate"] == 1
    # a GPU: the reduce FC gives 0, silu(0) = 0, the gate sigmoid(0); unrounded 0.50029
    assert gate.dtype == torch.float32 and (gate.cpu() == 0.5).all(), gate


@triton.jit
def _round_to_bf16_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(out_ptr + offs, round_to_bf16(tl.load(x_ptr + offs, mask=ok, other=0.0)), mask=ok)


def test_round_to_bf16_is_torchs_cast_bit_for_bit():
    """``_math.round_to_bf16``, the kernels' stand-in under the interpreter for a GPU's fp32 ->
    bf16 cast, is torch's cast (round to nearest, ties to even) for every case that decides a
    rounding: ties below an even and an odd last bit, a bit under and over half way, negative
    values, subnormals, the largest finite values (to inf), infinities, zeros, and random bits;
    NaN stays NaN."""
    deciding = [0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F817FFF, 0x3F808001, 0x3F818001, 0xBF808000, 0xBF818000,
                0xBF817FFF, 0x00008000, 0x00018000, 0x00017FFF, 0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF,
                0x7F800000, 0xFF800000, 0x00000000, 0x80000000, 0x7FC00000, 0xFFFFFFFF, 0x7F800001]
    bits = torch.cat([torch.from_numpy(np.array(deciding, dtype=np.uint32).view(np.int32)),
                      torch.randint(-2**31, 2**31, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.int64).to(torch.int32)])
    x = bits.view(torch.float32)
    out = torch.empty_like(x, device=DEVICE)
    _round_to_bf16_kernel[(1,)](x.to(DEVICE), out, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    want, got = x.to(bf16).float(), out.cpu()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), want[~nan].view(torch.int32))


@triton.jit
def _store_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=ok, other=0.0), mask=ok)


def test_a_bf16_store_rounds_to_nearest_even():
    """An fp32 value stored to bf16 rounds as torch's cast (and a GPU's) does: under the
    interpreter, through the conftest's fix of its truncating cast."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    out = torch.empty(x.shape, dtype=bf16, device=DEVICE)
    _store_kernel[(1,)](x.to(DEVICE), out, x.numel(), BLOCK=x.numel())
    assert torch.equal(out.cpu().view(torch.int16), x.to(bf16).view(torch.int16))
