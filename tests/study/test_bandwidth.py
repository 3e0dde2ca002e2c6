"""The measured memory ceiling and floor fractions."""
import math

import pytest

from fastmbconv import study


def test_measured_host_bandwidth_and_floor():
    bw = study.measure_copy_bandwidth("cpu", nbytes=8 << 20, iters=3)
    assert bw.bytes_per_s > 1e8 and "host" in bw.kind and bw.gb_s == pytest.approx(bw.bytes_per_s / 1e9)
    assert study.floor_seconds(1e9, 1e9) == 1.0
    assert study.floor_seconds(3e9, bw) == pytest.approx(3e9 / bw.bytes_per_s)
    assert study.floor_fraction(2.0, 1e9, 1e9) == 0.5
    assert math.isnan(study.floor_fraction(0.0, 1e9, 1e9))


def test_metrics_of_a_case_use_the_same_floor():
    bw = study.Bandwidth(1e12, "test", "device copy (HBM)", 1, "given")
    m = study.metrics("efficientnet_b0", 64, 2, "fp16", 1e-3, bw)
    for level in ("eager", "layer_fused", "whole_block"):
        assert m[f"floor_fraction_{level}"] == pytest.approx(m[f"bytes_{level}"] / 1e12 / 1e-3)
    assert m["images_per_s"] == pytest.approx(2000) and m["bandwidth_gb_s"] == 1000
