"""select_kernel's CUDA-graph rule, on a CPU: a shape never tuned outside a capture takes the
heuristic config inside one (benchmarking there fails), and only real launches count as tuned."""
import pytest
import torch

from fastmbconv.kernels import _launch, _utils
from fastmbconv.kernels import pointwise_gated as pointwise
from fastmbconv.kernels._launch import record_launches, select_kernel

TUNED, PLAIN, HEURISTIC = "tuned", "plain", {"BLOCK_M": 16}


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
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC) == (PLAIN, HEURISTIC)


def test_shape_tuned_before_the_capture_keeps_the_autotuner(gpu):
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC) == (TUNED, {})
    gpu["capturing"] = True
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC) == (TUNED, {})
    assert select_kernel(TUNED, PLAIN, ("op", 2), HEURISTIC) == (PLAIN, HEURISTIC)


def test_a_recorded_launch_tunes_nothing(gpu):
    with record_launches():  # the kernel report records launches without running them
        assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC) == (TUNED, {})
    gpu["capturing"] = True
    assert select_kernel(TUNED, PLAIN, ("op", 1), HEURISTIC) == (PLAIN, HEURISTIC)


def test_pool_key_holds_the_row_block(monkeypatch):
    """The pool-only autotuner keys on BLOCK_M (from the rows N*H*W); two batches of one size
    bucket with different row blocks must not share a 'tuned' key."""
    keys = []

    def spy(tuned, plain, key, heuristic):
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


@pytest.mark.gpu
def test_cuda_capture_of_a_shape_never_run_before():
    """Inside a capture a shape never tuned takes the heuristic config, whose kernel may never
    have been compiled either: Triton then compiles and loads it during the capture. Whether
    the driver allows that in torch's default (global) capture mode is what this checks; if it
    does not, select_kernel must refuse with a clear error instead."""
    # a shape no other test runs
    x = torch.randn(3, 44, 9, 7, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(28, 44, 1, 1, device="cuda", dtype=torch.float16) / 8, torch.randn(28, device="cuda")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pointwise.pointwise_gated(x, w, b, act="silu", impl="triton")
    graph.replay()
    torch.cuda.synchronize()
    ref = pointwise.pointwise_gated_ref(x, w, b, act="silu", compute_dtype=torch.float64)
    from fastmbconv.kernels.testing import assert_close_to_ref

    assert_close_to_ref(out, ref, pointwise.pointwise_gated_ref(x, w, b, act="silu", compute_dtype=torch.float16))
