"""call_op: the launcher directly for plain eager calls without autograd (the custom op's
dispatch cost ~20 µs a launch on a CPU host), the custom op everywhere its semantics matter."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from fastmbconv.kernels._launch import call_op, count_launches
from fastmbconv.kernels.pointwise_gated import pointwise_gated

from ..helpers import DEVICE


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


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:DeprecationWarning")
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

        class Watch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Watch():  # a user's dispatch mode on plain tensors sees the op
            assert call_op(op, launcher, x) == "op"
        with torch.profiler.profile():  # the profiler names each kernel by its op's event
            assert call_op(op, launcher, x) == "op"
        traced = []
        torch.jit.trace(lambda t: traced.append(call_op(op, launcher, t)) or t * 1, (x,), check_trace=False)
        assert traced == ["op"]  # the trace records the op, never raw writes it cannot see


@pytest.mark.interpreter
def test_a_direct_in_place_launch_bumps_the_version_as_the_op_does():
    """affine_act_pool writes y in place: autograd must see y changed whichever way it ran."""
    from fastmbconv.kernels.affine_act_pool import affine_act_pool

    y = torch.randn(1, 16, 2, 2, device=DEVICE)
    scale, shift = torch.ones(16, device=DEVICE), torch.zeros(16, device=DEVICE)
    for grad in (False, True):
        before = y._version
        with torch.set_grad_enabled(grad):
            affine_act_pool(y, scale, shift)
        assert y._version > before


@pytest.mark.interpreter
def test_fake_tensors_get_the_fake_implementation_and_launch_nothing():
    with torch.no_grad(), FakeTensorMode() as mode, count_launches() as launches:
        x = mode.from_tensor(torch.randn(2, 16, 5, 3).contiguous(memory_format=torch.channels_last))
        w, b = mode.from_tensor(torch.randn(8, 16)), mode.from_tensor(torch.randn(8))
        out = pointwise_gated(x, w, b, act="silu")
    assert out.shape == (2, 8, 5, 3) and not launches
