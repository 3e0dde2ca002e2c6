"""Median and interquartile range of repeated timings."""
import math

from fastmbconv import study


def test_timing_summary():
    t = study.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert t.median_s == 3.0 and t.min_s == 1.0 and t.q1_s == 2.0 and t.q3_s == 4.0 and t.reps == 5
    assert not math.isnan(study.summarize([1.0]).iqr_s)
