"""Median and interquartile range of repeated timings."""
import math

from fastmbconv import study


def test_timing_summary():
    t = study.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert t.median_s == 3.0 and t.min_s == 1.0 and t.q1_s == 2.0 and t.q3_s == 4.0 and t.reps == 5
    assert not math.isnan(study.summarize([1.0]).iqr_s)


def test_timing_settings_are_set_inside_and_restored_after():
    import torch

    b = torch.backends
    before = (b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    b.cudnn.allow_tf32 = True
    try:
        with study.timing_settings() as flags:
            assert (b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == (True, False, False)
            assert flags == {"cudnn_benchmark": True, "cudnn_allow_tf32": False, "matmul_allow_tf32": False}
        assert b.cudnn.allow_tf32 is True and b.cudnn.benchmark == before[0]
    finally:
        b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = before


def test_gpu_timings_are_recorded_on_the_timed_gpus_stream(monkeypatch):
    """A runner on cuda:1 while cuda:0 is current: its events go on cuda:1's stream, which its
    work is queued on (on cuda:0's, the synchronise would not wait for that work); the same for
    the copy bandwidth."""
    import torch

    from fastmbconv.study import bandwidth

    recorded = []

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 2.0

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream of", torch.device(device or "cuda:0")))
    runner = type("Runner", (), {"device": torch.device("cuda", 1), "call": staticmethod(lambda: None)})()
    timing = study.time_runner(runner, reps=4)
    assert timing.median_s == 0.002 and timing.reps == 4
    assert recorded == [("stream of", torch.device("cuda", 1))] * 8

    recorded.clear()
    copies = []
    buffer = type("Buffer", (), {"random_": lambda self, a, b: self, "copy_": lambda self, src: copies.append(1)})()
    monkeypatch.setattr(torch, "empty", lambda *a, **k: buffer)
    monkeypatch.setattr(torch, "empty_like", lambda t: buffer)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(bandwidth, "device_name", lambda device: "fake")
    bw = study.measure_copy_bandwidth("cuda:1", nbytes=1 << 20, iters=5)
    assert bw.bytes_per_s == 2 * (1 << 20) / 0.002 and len(copies) == 3 + 5
    assert recorded == [("stream of", torch.device("cuda", 1))] * 10
