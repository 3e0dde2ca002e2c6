"""Every op takes its weights, biases and BN vectors as any strided views (a slice of a larger
parameter, a transposed weight) and gives exactly what it gives for contiguous copies: the
kernels index parameters as dense arrays, so a launcher that passed a view through would read
the wrong elements and return a silent wrong answer."""
import pytest
import torch

from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act, taps_diag, taps_major
from fastmbconv.kernels.expand_dwconv import expand_dwconv
from fastmbconv.kernels.pointwise_gated import pointwise_gated
from fastmbconv.kernels.squeeze_excite import squeeze_excite_gate
from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act, taps_major as stem_taps_major

from ..helpers import DEVICE

pytestmark = pytest.mark.interpreter


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


def every_other(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as a view with stride 2 along the last dimension (the same values, not
    contiguous)."""
    fill = float("nan") if t.is_floating_point() else -1
    buf = torch.full((*t.shape[:-1], 2 * t.shape[-1]), fill, dtype=t.dtype, device=t.device)
    view = buf[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous() and torch.equal(view, t)
    return view


def channels_last(x):
    return x.contiguous(memory_format=torch.channels_last)


def assert_same(strided, dense):
    for a, b in zip(strided if isinstance(strided, tuple) else (strided,),
                    dense if isinstance(dense, tuple) else (dense,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["taps", "mma"])
def test_dwconv_bn_act(layout):
    C = 20
    dtype = torch.float16 if layout == "mma" else torch.float32
    x = channels_last(rand(2, C, 7, 6, dtype=dtype))
    taps = taps_major(rand(C, 1, 3, 3, seed=1) * 0.3)
    w = taps_diag(taps, dtype) if layout == "mma" else taps
    w_view = w.transpose(-1, -2).contiguous().transpose(-1, -2)  # the same values, column-major
    scale, shift = rand(C, seed=2).abs() + 0.5, rand(C, seed=3) * 0.1
    args = ((1, 1, 1, 1), 2, "silu", True)
    assert_same(dwconv_bn_act(x, w_view, every_other(scale), every_other(shift), *args),
                dwconv_bn_act(x, w, scale, shift, *args))


def test_expand_dwconv():
    C_in, C = 12, 20
    x = channels_last(rand(2, C_in, 7, 6))
    w_expand, b_expand = rand(C, C_in, seed=1) * 0.3, rand(C, seed=2) * 0.1
    w_dw = taps_major(rand(C, 1, 3, 3, seed=3) * 0.3)
    scale, shift = rand(C, seed=4).abs() + 0.5, rand(C, seed=5) * 0.1
    args = ((1, 1, 1, 1), 1, "silu")
    assert_same(expand_dwconv(x, w_expand.t().contiguous().t(), every_other(b_expand),
                              w_dw.t().contiguous().t(), every_other(scale), every_other(shift), *args),
                expand_dwconv(x, w_expand, b_expand, w_dw, scale, shift, *args))


@pytest.mark.parametrize("pool_only", [False, True])
def test_pointwise_gated(pool_only):
    K, O = 12, 20
    x = channels_last(rand(2, K, 5, 3))
    weight, bias = rand(O, K, seed=1) * 0.3, rand(O, seed=2) * 0.1
    gate = rand(2, K, seed=3).sigmoid()
    kw = dict(act="silu", pool_only=pool_only, impl="triton")
    assert_same(pointwise_gated(x, weight.t().contiguous().t(), every_other(bias), every_other(gate), **kw),
                pointwise_gated(x, weight, bias, gate, **kw))


def test_stem_conv_bn_act():
    x = channels_last(rand(2, 3, 9, 8))
    weight = stem_taps_major(rand(16, 3, 3, 3, seed=1) * 0.3)
    bias = rand(16, seed=2) * 0.1
    args = ((0, 1, 0, 1), 2, "silu")
    assert_same(stem_conv_bn_act(x, weight.t().contiguous().t(), every_other(bias), *args),
                stem_conv_bn_act(x, weight, bias, *args))


def test_squeeze_excite_gate():
    N, T, C, R = 3, 2, 20, 8
    partials = rand(N, T, C)
    w_reduce, b_reduce = rand(R, C, seed=1) * 0.3, rand(R, seed=2) * 0.1
    w_expand, b_expand = rand(C, R, seed=3) * 0.3, rand(C, seed=4) * 0.1
    count = torch.tensor([12, 7, 30], dtype=torch.int32, device=DEVICE)
    assert_same(squeeze_excite_gate(partials, w_reduce.t().contiguous().t(), every_other(b_reduce),
                                    w_expand.t().contiguous().t(), every_other(b_expand), every_other(count)),
                squeeze_excite_gate(partials, w_reduce, b_reduce, w_expand, b_expand, count))
