"""pointwise_gated's torch fallback (``impl="torch"``: cuBLAS on a GPU) against the same
pure-torch twin as the kernel: its result, the pool's clamped sizes, autocast, and dynamo."""
import pytest
import torch

from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels.pointwise_gated import pointwise_gated, pointwise_gated_ref

from ..helpers import DEVICE
from .test_pointwise_gated import DTYPES, make

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_fallback_matches(dtype):
    x, w, bias, gate, res = make(2, 40, 24, 5, 7, dtype)
    for kw in ({"gate": gate, "residual": res}, {"act": "silu", "pool_only": True}):
        with count_launches() as launches:
            got = pointwise_gated(x, w, bias, impl="torch", **kw)
        assert launches["pointwise_gated[torch]"] == 1 and launches["pointwise_gated"] == 0
        ref = pointwise_gated_ref(x, w, bias, compute_dtype=torch.float64, **kw)
        if dtype == torch.float32:
            torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-4)
        else:
            torch.testing.assert_close(got, ref.to(dtype), atol=5e-2, rtol=2e-2)


def test_torch_fallback_pool_clamps_sizes_as_the_kernel(monkeypatch):
    """Sizes the host check does not see (CUDA ones; here the check is switched off to act as
    one): 0 gives a mean of 0, not a division by zero, and a size past the map the clamped
    size's mean, as the kernel computes. On the CPU such sizes are refused by name first."""
    from fastmbconv.kernels import pointwise_gated as module

    x, w, bias, _, _ = make(2, 24, 16, 5, 7, torch.float32)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="valid_hw must lie in"):
            pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="torch",
                            valid_hw=torch.tensor([[6, 7], [5, 7]], dtype=torch.int32))
    monkeypatch.setattr(module, "check_valid_sizes", lambda *args: None)
    sizes = torch.tensor([[0, 3], [9, 7]], dtype=torch.int32, device=DEVICE)
    got = pointwise_gated(x, w, bias, act="silu", pool_only=True, valid_hw=sizes, impl="torch")
    ref = pointwise_gated_ref(x, w, bias, act="silu", pool_only=True, valid_hw=sizes, compute_dtype=torch.float64)
    assert torch.isfinite(got).all() and (got[0] == 0).all()
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-4)


def test_torch_fallback_computes_in_its_inputs_dtype_under_autocast():
    x, w, bias, gate, res = make(2, 40, 24, 5, 7, torch.float32)
    with torch.no_grad():
        plain = pointwise_gated(x, w, bias, gate=gate, residual=res, impl="torch")
        device_type = torch.device(DEVICE).type
        with torch.autocast(device_type, dtype=torch.float16 if device_type == "cuda" else torch.bfloat16):
            under = pointwise_gated(x, w, bias, gate=gate, residual=res, impl="torch")
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain)


def test_torch_fallback_compiles_without_graph_breaks():
    """The torch fallback is traced inline by dynamo; its launch bookkeeping (the counter's
    lock) must not break the graph."""
    x, w, bias, gate, res = make(2, 24, 40, 5, 7)

    def fallback(inp):
        return pointwise_gated(inp, w, bias, gate=gate, residual=res, impl="torch")

    torch._dynamo.reset()
    compiled = torch.compile(fallback, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), fallback(x))
    torch._dynamo.reset()
