"""Numbers the GPU check publishes from its files, on inputs the fixtures of
test_gpu_check_files.py do not cover: every unit ncu may print, the kernel table's row cut, the
README table's batch-1 rows and their speedups, the quartiles of a rebuilt row, sessions merged
without losing rows, and the test counts of report.md."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "tools" / "gpu_check.py").is_file())
sys.path.insert(0, str(REPO / "tools"))
import ncu_table  # noqa: E402
from gpucheck import outfiles, report, speed_steps  # noqa: E402

SI = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@pytest.mark.parametrize("unit,scale", [(f"{p}second", SI[p]) for p in ("n", "u", "m", "")]
                         + [(f"{p}byte", SI[p]) for p in ("", "K", "M", "G", "T")]
                         + [(f"{p}ibyte", 2.0 ** (10 * e)) for e, p in enumerate(("K", "M", "G"), 1)])
def test_every_ncu_unit_in_base_units(unit, scale):
    assert ncu_table._number("1,234.5", unit) == pytest.approx(1234.5 * scale)


def _launch(i, kernel, us):
    return {"id": i, "name": kernel, "block": "", "grid": "",
            "metrics": {ncu_table.TIME: us * 1e-6, ncu_table.DRAM_READ: 1e6, ncu_table.DRAM_WRITE: 1e6}}


def test_kernel_table_shows_the_top_kernels_and_counts_the_rest():
    launches = [_launch(i, f"k{i}", 10.0 - i) for i in range(5)]
    rows = ncu_table.launch_rows(launches, 3000.0)
    groups = ncu_table.by_kernel(rows, 3000.0)
    md = ncu_table.markdown(groups, ncu_table.summarize(rows, 3000.0), "t", top=3)
    shown = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert [ln.split("`")[1] for ln in shown] == ["k0", "k1", "k2"] and "| (2 more kernels) |" in md


def test_readme_table_keeps_batch_one_and_compares_each_batch_with_its_own_eager(tmp_path):
    import render_results

    def case(provider, batch, median, q1, q3):
        info = {"provider": provider, "model": "efficientnet_b0", "resolution": 224, "batch": batch, "dtype": "fp16",
                "device": "cuda", "device_name": "Test GPU"}
        stats = {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "min": q1, "rounds": 9}
        return {"name": f"{provider}-{batch}", "extra_info": info, "stats": stats}

    cases = [("eager", 256, 0.040, 0.039, 0.042), ("fused", 256, 0.016, 0.015, 0.017),
             ("eager", 1, 0.004, 0.0039, 0.0042), ("cudagraph_fused", 1, 0.001, 0.0009, 0.0012)]
    (tmp_path / "pytest-benchmark.json").write_text(json.dumps({"benchmarks": [case(*c) for c in cases]}))
    result = render_results.result_from_folder(tmp_path)
    for row, (_, _, median, q1, q3) in zip(result["rows"], cases):
        assert (row["median_s"], row["q1_s"], row["q3_s"]) == (median, q1, q3)
    table = render_results.readme_table(result)
    for provider, batch, median, _, _ in cases:
        eager = next(c[2] for c in cases if c[0] == "eager" and c[1] == batch)
        assert (f"| b0 | {batch} | {provider} | {median * 1e3:.3f} | {batch / median:,.0f} | "
                f"{eager / median:.2f}x |") in table, (provider, batch)


def test_merged_sessions_keep_every_row(tmp_path):
    sessions = {"bench-headline": 2, "bench-kernels": 3}
    for name, n in sessions.items():
        rows = [{"case": f"{name}-{i}", "median_s": 0.01} for i in range(n)]
        kernels = [{"op": "dwconv_bn_act", "case": f"{name}-{i}"} for i in range(n)]
        host = [{"op": "dwconv_bn_act", "way": f"{name}-{i}"} for i in range(n)]
        bench = {"benchmarks": [{"name": f"{name}-{i}"} for i in range(n)], "datetime": "now"}
        outfiles.dump_json(tmp_path / "bench" / f"{name}.json", bench)
        outfiles.dump_json(tmp_path / "bench" / name / "summary.json", {"results": rows, "kernels": kernels,
                                                                         "host": host})
    assert speed_steps.merge_bench_main(str(tmp_path)) == 0
    merged = outfiles.load_json(tmp_path / "merged" / "summary.json")
    total = sum(sessions.values())
    assert len(merged["results"]) == len(merged["kernels"]) == len(merged["host"]) == total
    bench = outfiles.load_json(tmp_path / "merged" / "pytest-benchmark.json")
    assert len(bench["benchmarks"]) == total


def test_report_md_labels_each_test_count():
    tests = {"passed": 11, "failures": 3, "errors": 2, "skipped": 5, "failed": []}
    step = {"name": "tests-quick", "status": "failed", "seconds": 1.0, "details": {"tests": tests}, "note": "",
            "would_run": ""}
    r = {"stage": "verify", "dry": False, "status": "FAILED", "device": "GPU", "commit": "c", "started": "s",
         "finished": "f", "elapsed_s": 1.0, "budget_s": 540.0, "reserve_s": 40.0, "steps": [step], "not_reached": [],
         "cache": {}, "notes": [], "file_notes": [], "files": {}}
    line = next(ln for ln in report.format_report(r).splitlines() if ln.startswith("| tests-quick |"))
    assert "11 passed, 3 failed, 2 errors, 5 skipped" in line
