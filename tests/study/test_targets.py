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


def _dw(shape, fraction, batch=256, model="efficientnet_b0", dtype="fp16"):
    return {"op": "dwconv_bn_act", "model": model, "batch": batch, "dtype": dtype, "impl": "triton",
            "shape": list(shape), "median_s": 1e-4, "floor_fraction": fraction}


def test_depthwise_target_is_the_worst_shape_of_its_stages_and_needs_them_all():
    from fastmbconv.study.targets import depthwise_target_shapes

    shapes = sorted(depthwise_target_shapes())
    assert (144, 56, 56, 5, 2) in shapes and (480, 14, 14, 3, 1) in shapes and len(shapes) == 4
    kernels = [_dw(s, 0.9 - 0.1 * i) for i, s in enumerate(shapes)]
    noise = [_dw(shapes[0], 0.1, batch=32), _dw(shapes[0], 0.1, dtype="bf16"), _dw((32, 112, 112, 3, 1), 0.1),
             {**_dw(shapes[0], 0.05), "impl": "torch"},  # cuDNN's depthwise: not the kernel under test
             {"op": "pointwise_expand", "model": "efficientnet_b0", "batch": 256, "dtype": "fp16", "median_s": 1.0}]

    def target(rows):
        return next(t for t in study.evaluate_targets([], rows) if t["target"] == "depthwise_vs_copy")

    got = target(kernels + noise)
    assert got["value"] == pytest.approx(0.6) and got["met"] is False
    assert target([_dw(s, 0.75) for s in shapes])["met"] is True
    missing = target(kernels[1:] + noise)  # one shape unmeasured: never a verdict from the rest
    assert missing["value"] is None and missing["met"] is None and "not measured" in missing["status"]
