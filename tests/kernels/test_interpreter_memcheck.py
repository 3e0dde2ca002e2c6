"""The tests' memcheck for the interpreter (``tests.helpers.interpreter_memcheck``) is live: a
load past the end of a launch's tensor fails inside it, and the same launch in bounds passes.
It patches private interpreter internals, so a Triton that stopped calling them would
otherwise leave every memchecked test passing while checking nothing."""
import pytest
import torch
import triton
import triton.language as tl

from fastmbconv.kernels._utils import interpreting

from ..helpers import DEVICE, interpreter_memcheck

pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(not interpreting(), reason="the memcheck runs only under the interpreter")]


@triton.jit
def _copy_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs))  # unmasked: every lane is checked


def test_a_load_past_the_tensor_fails_and_one_inside_passes():
    storage = torch.arange(32, dtype=torch.float32, device=DEVICE)
    x, out = storage[:16], torch.empty(32, device=DEVICE)  # the 16 elements past x are still storage
    with interpreter_memcheck():
        _copy_kernel[(1,)](x, out, BLOCK=16)
        assert torch.equal(out[:16], x)
        with pytest.raises(Exception, match="a load of 16 elements outside every tensor of the launch"):
            _copy_kernel[(1,)](x, out, BLOCK=32)
    _copy_kernel[(1,)](x, out, BLOCK=32)  # outside the block, nothing is checked: it reads storage
    assert torch.equal(out, storage)
