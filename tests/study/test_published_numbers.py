"""The study's published numbers by their definitions, on inputs where the wrong statistic, unit
or comparison gives a different answer: median (not mean or min) of timings, CUDA event ms as
seconds, copy bandwidth as read + write bytes, per-image and per-second units, targets met at
exactly their thresholds, and every row and column of the written table."""
import csv
import re
import statistics
import types

import pytest
import torch

import fastmbconv as fm
from fastmbconv import roofline as rl
from fastmbconv import study
from fastmbconv.study import bandwidth as bandwidth_mod


def test_timing_is_the_median_and_inclusive_quartiles_of_skewed_times():
    times = [0.004, 0.001, 0.002, 0.003, 0.1]  # one outlier: median, mean and min all differ
    t = study.summarize(times)
    assert t.median_s == 0.003 != statistics.mean(times) and t.min_s == 0.001
    assert (t.q1_s, t.q3_s) == (0.002, 0.004) and t.iqr_s == pytest.approx(0.002)


class _Event:
    """torch.cuda.Event stand-in: elapsed_time is in milliseconds, as CUDA reports it."""
    clock = [0.0]

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self, stream=None):
        self.t = _Event.clock[0]
        _Event.clock[0] += 2.5  # ms between consecutive records

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return end.t - self.t


def test_cuda_event_milliseconds_become_seconds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    runner = types.SimpleNamespace(device=torch.device("cuda"), call=lambda: None)
    t = study.time_runner(runner, reps=5)
    assert t.reps == 5 and t.median_s == pytest.approx(2.5e-3)


def test_host_copy_bandwidth_is_read_plus_write_over_the_median(monkeypatch):
    durations = iter([0.3, 0.1, 0.2])  # seconds of the three timed copies
    clock = {"t": 0.0, "start": True}

    def perf_counter():
        if not clock["start"]:
            clock["t"] += next(durations)
        clock["start"] = not clock["start"]
        return clock["t"]

    monkeypatch.setattr(bandwidth_mod, "time", types.SimpleNamespace(perf_counter=perf_counter))
    nbytes = 1 << 20
    bw = study.measure_copy_bandwidth("cpu", nbytes=nbytes, iters=3)
    assert bw.bytes_per_s == pytest.approx(2 * nbytes / 0.2) and bw.gb_s == pytest.approx(2 * nbytes / 0.2 / 1e9)


def test_metrics_units_at_a_batch_above_one():
    batch, seconds, res = 4, 2e-3, 64
    bw = study.Bandwidth(1e12, "test", "device copy (HBM)", 1, "given")
    m = study.metrics("b0", res, batch, "fp16", seconds, bw)
    flops = fm.count_flops(fm.efficientnet_b0(), res, batch=batch)  # the whole batch, counted at once
    assert m["flops"] == flops and m["gflops_per_image"] == pytest.approx(flops / batch / 1e9)
    assert m["tflops"] == pytest.approx(flops / seconds / 1e12)
    assert m["images_per_s"] == pytest.approx(batch / seconds)
    roof = rl.roofline("b0", res, batch, "fp16")
    for level in rl.LEVELS:
        nb = roof.bytes(level)
        assert m[f"mb_per_image_{level}"] == pytest.approx(nb / batch / 1e6)
        assert m[f"gb_s_{level}"] == pytest.approx(nb / seconds / 1e9)


def _row(provider, seconds, batch=256, model="efficientnet_b0", **kw):
    return {"model": model, "resolution": 224, "batch": batch, "dtype": "fp16", "provider": provider,
            "median_s": seconds, **kw}


def test_each_target_is_met_at_exactly_its_threshold():
    """The descriptions promise ">=": a ratio equal to the threshold meets it."""
    from fastmbconv.study.targets import depthwise_target_shapes

    th = {t.name: t.threshold for t in study.TARGETS}
    rows = [_row("fused", 1.0, floor_fraction_layer_fused=th["fused_layer_fused_floor"]),
            _row("eager", th["fused_vs_eager"]), _row("compile_max_autotune", th["fused_vs_max_autotune"]),
            _row("eager", th["fused_b0_vs_eager_resnet50"], model="resnet50"),
            _row("cudagraph_fused", 1.0, batch=1), _row("compile_reduce_overhead", th["cudagraph_vs_reduce_overhead"], batch=1)]
    kernels = [{"op": "dwconv_bn_act", "model": "efficientnet_b0", "batch": 256, "dtype": "fp16", "impl": "triton",
                "shape": list(s), "median_s": 1e-4, "floor_fraction": th["depthwise_vs_copy"]}
               for s in depthwise_target_shapes()]
    got = study.evaluate_targets(rows, kernels)
    assert len(got) == len(study.TARGETS)
    for t in got:
        assert t["value"] == t["threshold"] and t["met"] is True and t["status"] == "MET", t


def test_thresholds_are_the_ones_their_descriptions_state():
    for t in study.TARGETS:
        (num, unit), = re.findall(r">= ([\d.]+)(x|%)", t.description)
        assert t.threshold == pytest.approx(float(num) / (100 if unit == "%" else 1)), t


def test_targets_table_puts_each_value_in_its_column():
    rows = [_row("fused", 1.0), _row("eager", 2.75)]
    table = study.format_targets(study.evaluate_targets(rows))
    line = next(ln for ln in table.splitlines() if "fused >= 2x reference eager" in ln)
    _, measured, threshold, status = [c.strip() for c in line.strip("|").split("|")]
    assert measured.startswith("2.75 ") and threshold == "2" and status == "MET"


def _result(rows):
    bw = {"gb_s": 1000.0, "kind": "device copy (HBM)", "method": "given"}
    return {"meta": {"device": "test", "torch": torch.__version__, "created": "now", "plan": "test",
                     "bandwidth": bw, "skipped": []},
            "rows": rows, "targets": study.evaluate_targets(rows), "breakdown": []}


def _timed_row(batch, median):
    bw = study.Bandwidth(1e12, "test", "device copy (HBM)", 1, "given")
    q1, q3 = median * 0.9, median * 1.3
    return {**_row("eager", median, batch=batch), "resolution": 64, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1,
            "min_s": median * 0.8, "reps": 7, **study.metrics("b0", 64, batch, "fp16", median, bw)}


def test_markdown_and_csv_keep_every_row_and_number(tmp_path):
    rows = [_timed_row(batch, median) for batch, median in [(1, 0.004), (4, 0.010), (2, 0.006)]]
    md = study.format_markdown(_result(rows))
    lines = [ln for ln in md.splitlines() if ln.startswith("| b0 | 64 |")]
    assert len(lines) == len(rows)
    for r, line in zip(rows, lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == str(r["batch"]) and cells[5] == f"{r['median_s'] * 1e3:.3f}"
        assert cells[6] == f"{r['iqr_s'] * 1e3:.3f}" and cells[7] == f"{r['batch'] / r['median_s']:,.1f}"
        assert cells[8] == f"{r['gflops_per_image']:.3f}" and cells[9] == f"{r['tflops']:.3f}"
    study.write_outputs(_result(rows), tmp_path, plot=False)
    written = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(written) == len(rows)
    for key in ("median_s", "iqr_s", "images_per_s", "gflops_per_image", "tflops",
                *(f"mb_per_image_{lv}" for lv in rl.LEVELS), *(f"floor_fraction_{lv}" for lv in rl.LEVELS)):
        assert [float(w[key]) for w in written] == pytest.approx([r[key] for r in rows]), key


def test_layers_csv_is_the_roofline_op_for_op(tmp_path):
    rows = [_timed_row(2, 0.01)]
    study.write_outputs(_result(rows), tmp_path, plot=False)
    written = list(csv.DictReader(open(tmp_path / "b0_layers.csv")))
    roof = rl.roofline("efficientnet_b0", 64, 2, "fp16")
    ops = [(lv, op) for lv in rl.LEVELS for op in roof.ops[lv]]
    assert len(written) == len(ops)
    for w, (lv, op) in zip(written, ops):
        assert (w["level"], w["layer"], w["kind"]) == (lv, op.layer, op.kind)
        assert float(w["kb_read"]) == pytest.approx(op.read / 1e3, abs=0.05)
        assert float(w["kb_written"]) == pytest.approx(op.written / 1e3, abs=0.05)
        assert float(w["mflops"]) == pytest.approx(op.flops / 1e6, abs=5e-4)


class _NoEvents:
    def __init__(self, *a, **kw):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def events(self):
        return []


def test_breakdown_flops_per_category_by_hand(monkeypatch):
    """The breakdown's GFLOP column: the head conv and the classifier are 1x1 work, the stem its own."""
    import torch.profiler

    from .. import b0_by_hand as hand

    monkeypatch.setattr(torch.profiler, "profile", _NoEvents)
    runner = study.make_runner("eager", "b0", 1, "fp32", "cpu", 32)
    runner.call = lambda: None
    got = {r["category"]: r["gflops"] for r in study.profile_breakdown(runner, iters=1)["rows"]}
    for category, macs in hand.macs(32).items():
        assert got[category] == pytest.approx(2 * macs / 1e9), category
