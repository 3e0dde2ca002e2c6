"""The kernel benchmarks' cases (benchmarks/bench_kernels.py) run only on a GPU; here each op's
case is built and called at a tiny shape where the kernels run (a CPU: interpreted), so a stale
call or a weight layout other than the fused forward's fails before a GPU loan is spent on it."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from fastmbconv.kernels._launch import count_launches, record_launches

pytestmark = pytest.mark.interpreter
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_kernels():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("bench_kernels")
    finally:
        sys.path.remove(str(BENCH))


CASES = [  # (op, shape, impl): shapes as benchmarks/_providers.kernel_cases gives them
    ("dwconv_bn_act", (24, 9, 7, 3, 2, True), "triton"),
    ("dwconv_bn_act", (16, 6, 5, 5, 1, False), "triton"),
    ("dwconv_bn_act", (24, 9, 7, 3, 2, True), "torch"),
    ("squeeze_excite", (24, 4, 20), "triton"),
    ("pointwise_expand", (16, 48, 5, 3, False), "triton"),
    ("pointwise_project", (48, 16, 5, 3, True), "triton"),
    ("pointwise_project", (48, 24, 5, 3, False), "torch"),
]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("op,shape,impl", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_every_kernel_case_builds_and_runs(bench_kernels, device, pointwise_on_triton, monkeypatch, op, shape, impl,
                                           dtype):
    call, flops, nbytes, extra = bench_kernels._make(op, 2, dtype, shape, impl, torch.device(device))
    assert flops > 0 and nbytes > 0
    with count_launches() as launches:
        outs = [call(), call()]
    expected = {"dwconv_bn_act": "dwconv_bn_act", "squeeze_excite": "squeeze_excite_gate"}.get(op, "pointwise_gated")
    assert launches[expected] == (0 if impl == "torch" else 2), launches
    if impl == "torch":  # the stand-in ran
        assert launches[expected + "[torch]"] == 2, launches
    if op == "dwconv_bn_act" and impl == "torch":  # cuDNN's weights come in its layout: no conversion is timed
        from fastmbconv.kernels import dwconv_bn_act as dw

        def converted(*args):
            raise AssertionError("the benchmark's weights were converted inside the timed call")

        monkeypatch.setattr(dw, "taps_of", converted)
        call()
        assert launches["affine_act_pool"] == 2
    for out in outs:
        for t in out if isinstance(out, tuple) else (out,):
            assert torch.isfinite(t.float()).all()
    if "input_sets" in extra:  # consecutive calls read different inputs (no L2 reuse on a GPU)
        assert extra["input_sets"] > 1 and not torch.equal(outs[0][0] if isinstance(outs[0], tuple) else outs[0],
                                                           outs[1][0] if isinstance(outs[1], tuple) else outs[1])
    if op == "dwconv_bn_act" and impl == "triton":  # the fused forward's depthwise: tensor-core taps in fp16
        with record_launches() as recs:
            call()
        assert recs[0].constexprs["MMA"] == (dtype == "fp16")


def test_rotation_reads_four_l2_caches_per_pass(bench_kernels):
    made = []
    next_set, sets = bench_kernels._rotating(lambda: made.append(1) or len(made), 30 << 20, "cpu")
    assert sets == len(made) == 7  # ceil(4 x 50 MiB / 30 MiB)
    assert [next_set() for _ in range(8)] == [2, 3, 4, 5, 6, 7, 1, 2]
    assert bench_kernels._rotating(lambda: 0, 1 << 40, "cpu")[1] == 1
    assert bench_kernels._rotating(lambda: 0, 1, "cpu")[1] == bench_kernels.MAX_INPUT_SETS
    # B0's smallest expand input (192 x 7 x 7 fp16 at batch 32) still adds up to four L2 caches
    assert bench_kernels._rotating(lambda: 0, 192 * 49 * 32 * 2, "cpu")[1] * 192 * 49 * 32 * 2 >= 4 * (50 << 20)


def test_timed_calls_run_as_the_forward_does(bench_kernels):
    """Warm-up, sizing and the timed rounds all run under no_grad, where the launchers run
    directly: with autograd on, each call would time the custom op's dispatch as well."""
    grad_on = []

    class Benchmark:
        def pedantic(self, target, rounds, iterations, warmup_rounds):
            for _ in range((rounds + warmup_rounds) * iterations):
                target()

    bench_kernels.time_call(Benchmark(), lambda: grad_on.append(torch.is_grad_enabled()), torch.device("cpu"))
    assert len(grad_on) > 13 and not any(grad_on)


@pytest.mark.parametrize("op,shape", [("dwconv_bn_act", (24, 9, 7, 3, 2, True)), ("pointwise_expand", (16, 48, 5, 3, False)),
                                      ("pointwise_project", (48, 16, 5, 3, True)), ("squeeze_excite", (24, 4, 20))])
def test_case_flops_and_bytes_by_hand(bench_kernels, op, shape):
    """What a case divides by its time. From batch 1 to 3 the bytes grow by two images'
    activations (the weights cancel), each read or written once; pool and gate vectors are fp32."""
    def made(n):
        _, flops, nbytes, _ = bench_kernels._make(op, n, "fp16", shape, "torch" if op != "squeeze_excite" else "triton",
                                                  torch.device("cpu"))
        return flops, nbytes

    (f1, b1), (f3, b3) = made(1), made(3)
    if op == "dwconv_bn_act":
        c, h, w, k, s, _ = shape
        ho, wo = -(-h // s), -(-w // s)
        macs, image = c * k * k * ho * wo, c * (h * w + ho * wo) * 2 + c * 4
    elif op == "squeeze_excite":
        c, r, _ = shape
        macs, image = 2 * c * r, 2 * c * 4
    else:
        k_in, o, h, w, skip = shape
        project = op == "pointwise_project"
        macs = h * w * k_in * o
        image = h * w * (k_in + o + (o if project and skip else 0)) * 2 + (k_in * 4 if project else 0)
    assert (f1, f3) == (2 * macs, 2 * 3 * macs)
    assert b3 - b1 == 2 * image


def test_the_published_time_is_the_median(bench_kernels):
    import _providers

    inner = type("Stats", (), {"median": 2e-3, "mean": 3e-3, "min": 1e-3})()
    bench = type("Benchmark", (), {"stats": type("Metadata", (), {"stats": inner})()})()
    assert _providers.median_seconds(bench) == inner.median
