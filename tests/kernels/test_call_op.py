"""call_op: the launcher directly for plain eager calls without autograd (the custom op's
dispatch cost ~20 µs a launch on a CPU host), the custom op everywhere its semantics matter."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastmbconv.kernels._launch import call_op, count_launches
from fastmbconv.kernels.pointwise_gated import pointwise_gated


def op(x):
    return "op"


def launcher(x):
    return "launcher"


def test_plain_eager_without_autograd_calls_the_launcher():
    x = torch.ones(2)
    with torch.no_grad():
        assert call_op(op, launcher, x) == "launcher"
    with torch.inference_mode():
        assert call_op(op, launcher, x) == "launcher"


def test_autograd_fake_tensors_and_functorch_keep_the_custom_op():
    x = torch.ones(2)
    assert call_op(op, launcher, x) == "op"  # grad mode on: the op raises clearly where a gradient is asked for
    with torch.no_grad():
        with FakeTensorMode() as mode:
            assert call_op(op, launcher, mode.from_tensor(x)) == "op"
        assert call_op(op, launcher, torch.ones(2, device="meta")) == "op"  # shapes only: the fake implementation
        seen = []
        torch.func.vmap(lambda t: seen.append(call_op(op, launcher, t)) or t)(torch.ones(3, 2))
        assert seen == ["op"]


@pytest.mark.interpreter
def test_fake_tensors_get_the_fake_implementation_and_launch_nothing():
    with torch.no_grad(), FakeTensorMode() as mode, count_launches() as launches:
        x = mode.from_tensor(torch.randn(2, 16, 5, 3).contiguous(memory_format=torch.channels_last))
        w, b = mode.from_tensor(torch.randn(8, 16)), mode.from_tensor(torch.randn(8))
        out = pointwise_gated(x, w, b, act="silu")
    assert out.shape == (2, 8, 5, 3) and not launches
