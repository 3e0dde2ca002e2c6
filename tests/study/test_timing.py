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
