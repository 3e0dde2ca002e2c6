"""The CUDA-graph rules of the launch layer, on a CPU: a shape never tuned outside a capture
takes the heuristic config inside one (benchmarking there fails), only real launches count as
tuned, and a kernel first launched inside a capture fails with an error that names the fix."""
import pytest
import torch

from fastmbconv.kernels import _launch, _utils
from fastmbconv.kernels import pointwise_gated as pointwise
from fastmbconv.kernels._launch import record_launches, select_kernel

TUNED, PLAIN, HEURISTIC = "tuned", "plain", {"BLOCK_M": 16}
CPU = torch.zeros(1)


@pytest.fixture
def gpu(monkeypatch):
    """Autotuning on, and a switch for 'a CUDA graph is being captured'."""
    monkeypatch.setattr(_utils, "use_autotune", lambda: True)
    monkeypatch.setattr(_launch, "_tuned_keys", set())
    state = {"capturing": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    return state


def test_untuned_shape_takes_the_heuristic_inside_a_capture(gpu):
    gpu["capturing"] = True
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=CPU) == (PLAIN, HEURISTIC)


def test_shape_tuned_before_the_capture_keeps_the_autotuner(gpu):
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=CPU) == (TUNED, {})
    gpu["capturing"] = True
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=CPU) == (TUNED, {})
    assert select_kernel(TUNED, PLAIN, ("op", 2), HEURISTIC, on=CPU) == (PLAIN, HEURISTIC)


def test_a_shape_counts_as_tuned_per_kind_of_gpu(gpu, monkeypatch):
    """The picks are kept per kind of GPU, so a shape tuned on an H100 is untuned on an A100:
    capturing it there must take the heuristic, not benchmark inside the capture."""
    h100, a100 = torch.zeros(1), torch.zeros(2)
    monkeypatch.setattr(_launch, "gpu_kind", lambda t: (9, 0) if t is h100 else (8, 0))
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=h100) == (TUNED, {})
    gpu["capturing"] = True
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=h100) == (TUNED, {})
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=a100) == (PLAIN, HEURISTIC)


def test_a_recorded_launch_tunes_nothing(gpu):
    with record_launches():  # the kernel report records launches without running them
        assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=CPU) == (TUNED, {})
    gpu["capturing"] = True
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC, on=CPU) == (PLAIN, HEURISTIC)


def test_pool_key_holds_the_row_block(monkeypatch):
    """The pool-only autotuner keys on BLOCK_M (from the rows N*H*W); two batches of one size
    bucket with different row blocks must not share a 'tuned' key."""
    keys = []

    def spy(tuned, plain, key, heuristic, on):
        keys.append(key)
        return plain, heuristic

    monkeypatch.setattr(pointwise, "select_kernel", spy)
    monkeypatch.setattr(pointwise, "interpreting", lambda: False)  # the GPU's row blocks: 16 and 32 here
    monkeypatch.setattr(pointwise, "launch", lambda *a, **k: None)
    w, b = torch.randn(16, 8), torch.zeros(16)
    for n in (2, 8):  # 8 and 32 rows of a 2x2 map
        pointwise.pointwise_gated_launch(torch.randn(n, 8, 2, 2), w, b, act="silu", pool_only=True)
    assert pointwise.batch_bucket(2) == pointwise.batch_bucket(8)
    assert keys[0] != keys[1]


FIRST_LAUNCH_IN_CAPTURE = "first launched inside a CUDA-graph capture"


class _Kernel:
    """A stand-in for a Triton kernel whose launch raises ``error``."""

    def __init__(self, error):
        self.error = error

    def __getitem__(self, grid):
        def run(**kwargs):
            raise self.error
        return run


def test_a_first_launch_inside_a_capture_names_the_fix(monkeypatch):
    """Triton loads a kernel's module on its first launch; CUDA refuses that during a capture
    with 'operation not permitted when stream is capturing', which says nothing of the fix."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    raw = RuntimeError("Triton Error [CUDA]: operation not permitted when stream is capturing")
    with pytest.raises(RuntimeError, match=FIRST_LAUNCH_IN_CAPTURE) as caught:
        _launch.launch("op", _Kernel(raw), (1,), {}, {}, on=torch.zeros(1))
    assert "same shapes, dtypes, memory format and valid_sizes" in str(caught.value)
    assert "capture_error_mode='thread_local'" in str(caught.value)  # another thread's capture
    assert caught.value.__cause__ is raw


def test_other_launch_errors_pass_through_unchanged(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    raw = RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")
    with pytest.raises(RuntimeError) as caught:
        _launch.launch("op", _Kernel(raw), (1,), {}, {}, on=torch.zeros(1))
    assert caught.value is raw


CAPTURE_WITHOUT_WARM_UP = """
import json, torch
from fastmbconv.kernels import pointwise_gated as pointwise
from fastmbconv.kernels.testing import assert_close_to_ref
torch.manual_seed(0)
x = torch.randn(3, 44, 9, 7, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
w, b = torch.randn(28, 44, 1, 1, device="cuda", dtype=torch.float16) / 8, torch.randn(28, device="cuda")
torch.cuda.synchronize()
errors = []
try:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pointwise.pointwise_gated(x, w, b, act="silu", impl="triton")
except Exception as error:
    while error is not None and len(errors) < 6:
        errors.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
if not errors:
    graph.replay()
    torch.cuda.synchronize()
    assert_close_to_ref(out, pointwise.pointwise_gated_ref(x, w, b, act="silu", compute_dtype=torch.float64),
                        pointwise.pointwise_gated_ref(x, w, b, act="silu", compute_dtype=torch.float16))
print(json.dumps(errors))
"""


@pytest.mark.gpu
@pytest.mark.subprocess
def test_cuda_capture_without_warm_up():
    """A capture in a fresh process, whose 1x1 kernel was never launched: it either works (the
    output matches) or fails with the error that names the fix, never with Triton's bare CUDA
    error alone. Its own process, because a failed capture can leave the process's current
    stream on the capture stream."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", CAPTURE_WITHOUT_WARM_UP], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert not errors or any(FIRST_LAUNCH_IN_CAPTURE in e for e in errors), errors


def test_every_autotuner_keeps_its_picks_on_disk(monkeypatch):
    """A new process reuses the picks an earlier one measured (where Triton can keep them,
    3.4 and later): every autotuned kernel is built through ``_autotune.autotune``."""
    import triton

    from fastmbconv.kernels import _autotune
    from fastmbconv.kernels import dwconv_bn_act as dw

    seen = []
    monkeypatch.setattr(triton, "autotune", lambda **kw: seen.append(kw) or (lambda fn: fn))
    _autotune.autotune(configs=[], key=["n"])
    assert seen == [{"configs": [], "key": ["n"], **({"cache_results": True} if _autotune.CACHES_RESULTS else {})}]
    # every autotuner in the kernels is built through the helper (the interpreter turns the
    # cache off, so the flag itself is only visible on a GPU)
    import inspect

    for module in (pointwise, dw):
        assert "triton.autotune(" not in inspect.getsource(module)
