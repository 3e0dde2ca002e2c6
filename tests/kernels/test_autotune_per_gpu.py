"""An autotuner's picks are kept per kind of GPU: Triton keys its picks by shapes and dtypes
alone, so in a process with an H100 and an A100 a block tuned on one would be launched on the
other. The autotuner here is Triton's own, around a stand-in kernel; the GPU kind of the launch
is faked, so the test runs on a CPU."""
import pytest
import torch
import triton

from fastmbconv.kernels import _launch

H100, A100 = (9, 0), (8, 0)
FASTEST = {H100: 64, A100: 16}  # the block each kind's benchmark finds fastest


class StandInKernel:
    """What the autotuner needs of a JITFunction: its argument names and a run()."""

    arg_names = ["x", "K", "BLOCK"]

    def __init__(self):
        self.fn = lambda: None
        self.blocks = []

    def run(self, *args, BLOCK, **kwargs):
        self.blocks.append(BLOCK)


@pytest.fixture
def gpu(monkeypatch):
    """Which kind of GPU the launches are on: set ``gpu.kind``."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors are launchable

    class Gpu:
        kind = H100
        benchmarks = 0

    monkeypatch.setattr(_launch, "gpu_kind", lambda t: Gpu.kind)
    return Gpu


def make_autotuner(gpu):
    kernel = StandInKernel()

    def bench(kernel_call, quantiles):
        gpu.benchmarks += 1
        kernel_call()
        block = kernel.blocks[-1]
        return [1.0 if block == FASTEST.get(gpu.kind, 64) else 2.0] * 3

    tuned = triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32, 64)], key=["K"],
                            do_bench=bench)(kernel)
    return tuned, kernel


def test_each_kind_of_gpu_launches_its_own_pick(gpu):
    tuned, kernel = make_autotuner(gpu)
    on = torch.empty(1)

    def launched_block():
        _launch.launch("probe", tuned, (1,), {"x": None, "K": 1}, {}, on)
        return kernel.blocks[-1]

    assert launched_block() == 64 and gpu.benchmarks == 3  # tuned on the H100
    gpu.kind = A100
    assert launched_block() == 16 and gpu.benchmarks == 6  # the same shape tuned again
    gpu.kind = H100
    assert launched_block() == 64 and gpu.benchmarks == 6  # each kind's pick kept
    gpu.kind = A100
    assert launched_block() == 16 and gpu.benchmarks == 6


def test_off_cuda_the_autotuner_keeps_tritons_own_picks(gpu):
    gpu.kind = None
    tuned, kernel = make_autotuner(gpu)
    picks = tuned.cache
    _launch.launch("probe", tuned, (1,), {"x": None, "K": 1}, {}, torch.empty(1))
    assert tuned.cache is picks and len(picks) == 1 and kernel.blocks[-1] == 64
