"""bf16 products: fp32 operands are rounded to bf16 before the dot, as a GPU's tensor cores take
them (``_utils.round_bf16``). Under the interpreter the dot itself runs in fp32, so each kernel
that casts an fp32 value for a bf16 dot (the stem's image and weights, the gated 1x1's rows, the
SE gate's means and hidden vector) must round it first or compute something the GPU does not.

Each case is built so that rounding decides the answer: ``A`` rounds to 1 in bf16, and a weight
row (1, -1) takes ``A - 1``, which is 0 on a GPU and 0.0023 without the rounding. On a GPU the
same tests check that the tensor cores do round."""
import pytest
import torch
import torch.nn.functional as F

from fastmbconv.kernels._launch import count_launches
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
