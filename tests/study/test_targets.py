"""The speed targets: computed only from cases measured side by side, never reported as met otherwise."""
import pytest

from fastmbconv import study


def _row(provider, seconds, batch=256, model="efficientnet_b0", **kw):
    return {"model": model, "resolution": 224, "batch": batch, "dtype": "fp16", "provider": provider,
            "median_s": seconds, **kw}


def test_targets_from_rows():
    rows = [_row("fused", 1.0, floor_fraction_layer_fused=0.6), _row("eager", 2.5),
            _row("compile_max_autotune", 1.2), _row("eager", 3.0, model="resnet50"),
            _row("cudagraph_fused", 0.001, batch=1), _row("compile_reduce_overhead", 0.0011, batch=1)]
    got = {t["target"]: t for t in study.evaluate_targets(rows)}
    assert got["fused_vs_eager"]["value"] == pytest.approx(2.5) and got["fused_vs_eager"]["met"]
    assert got["fused_vs_max_autotune"]["value"] == pytest.approx(1.2) and got["fused_vs_max_autotune"]["met"] is False
    assert got["fused_b0_vs_eager_resnet50"]["value"] == pytest.approx(3.0) and not got["fused_b0_vs_eager_resnet50"]["met"]
    assert got["fused_layer_fused_floor"]["met"]
    assert got["cudagraph_vs_reduce_overhead"]["value"] == pytest.approx(1.1)
    assert "NOT MET" in study.format_targets(list(got.values()))
    # nothing measured: never reported as met
    assert all(t["met"] is None and "not measured" in t["status"] for t in study.evaluate_targets([]))


