"""Benchmark: the host time of one kernel call, the launch overhead that bounds the fused forward
outside a CUDA graph (on the H200, B0's 52 launches at batch 1 took about 10 ms of host time,
against 0.46 ms for the same forward replayed as a CUDA graph).

Each op at a tiny shape, two ways: through its custom op (``torch.ops.fastmbconv.*``, what
``torch.compile``, autograd and the profiler see) and through its launcher directly (the path
``_launch.call_op`` takes for plain eager calls without autograd). Rounds are many back-to-back
calls and one synchronise, so the per-call time is the host's:

* on a GPU every call launches its kernel (whose own time, a few µs here, hides behind the host);
* on a CPU the Triton launch itself is stubbed (taken, not run: the interpreter would time
  Python kernels), so the figure is the project's own Python per call, Triton's excluded.

``extra_info`` holds the op, the way, the device and µs per call; the session's summary
tabulates them.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from fastmbconv import study
from fastmbconv.kernels._launch import count_launches

from _providers import median_seconds, pedantic

ITERATIONS = 200
ROUNDS = 20
WAYS = ("op", "direct")


def _case(name: str, device: torch.device):
    """(module, custom op, launcher, args) of one op at a tiny fp16 shape on ``device``."""
    from fastmbconv.kernels import affine_act_pool as aap
    from fastmbconv.kernels import dwconv_bn_act as dw
    from fastmbconv.kernels import pointwise_gated as pg
    from fastmbconv.kernels import squeeze_excite as se

    g = torch.Generator().manual_seed(0)
    h = torch.float16
    x = torch.randn(2, 32, 8, 8, generator=g).to(device, h).contiguous(memory_format=torch.channels_last)
    fp32 = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    if name == "pointwise_gated":
        res = torch.randn(2, 16, 8, 8, generator=g).to(device, h).contiguous(memory_format=torch.channels_last)
        args = (x, fp32(16, 32).to(h), fp32(16), fp32(2, 32).sigmoid(), res, "identity", False, None)
        return pg, torch.ops.fastmbconv.pointwise_gated, pg.pointwise_gated_launch, args
    if name == "dwconv_bn_act":
        args = (x, dw.taps_diag(fp32(32, 1, 3, 3), h), fp32(32).abs(), fp32(32), [1, 1, 1, 1], 1, "silu", True, None,
                None)
        return dw, torch.ops.fastmbconv.dwconv_bn_act, dw.dwconv_bn_act_launch, args
    if name == "squeeze_excite_gate":
        args = (fp32(2, 4, 32), fp32(8, 32).to(h), fp32(8), fp32(32, 8).to(h), fp32(32), None, 64)
        return se, torch.ops.fastmbconv.squeeze_excite_gate, se.squeeze_excite_gate_launch, args
    # scale below 1: the call rewrites x in place thousands of times and must not overflow it
    args = (x, torch.rand(32, generator=g).to(device) * 0.5 + 0.25, fp32(32) * 0.1, "silu", True)
    return aap, torch.ops.fastmbconv.affine_act_pool, aap.affine_act_pool_launch, args


@contextlib.contextmanager
def _stubbed_launch(module, on_cpu: bool):
    """On a CPU: the module's Triton launches counted but not run. Yields the list of the ops
    the stub took (empty on a GPU, where every launch is real)."""
    taken: list = []
    if not on_cpu:
        yield taken
        return
    real = module.launch

    def stub(op, kernel, grid, args, constexprs, on):
        taken.append(op)

    module.launch = stub
    try:
        yield taken
    finally:
        module.launch = real


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("name", ["pointwise_gated", "dwconv_bn_act", "squeeze_excite_gate", "affine_act_pool"])
def test_host_time_per_call(benchmark, host_results, name, way):
    pytest.importorskip("triton")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module, op, launcher, args = _case(name, device)
    call = op if way == "op" else launcher
    with _stubbed_launch(module, device.type == "cpu") as stubbed, torch.no_grad():
        with count_launches() as launches:  # one launch a call: real on a GPU, stubbed on a CPU
            call(*args)
        assert (len(stubbed), sum(launches.values())) == ((1, 0) if device.type == "cpu" else (0, 1)), launches
        if device.type == "cuda":
            for _ in range(3):  # compile and load the kernel, untimed
                call(*args)
        benchmark.group = f"host-{device.type}"  # before pedantic: pytest-benchmark reads it when it makes the stats
        pedantic(benchmark, lambda: call(*args), device, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)
    median = median_seconds(benchmark)
    info = {"op": name, "way": way, "device": device.type, "device_name": study.device_name(device),
            "launch": "real" if device.type == "cuda" else "stubbed (Triton's own launch excluded)",
            "us_per_call": median * 1e6 if median else None}
    benchmark.extra_info.update(info)
    host_results.append(info)
