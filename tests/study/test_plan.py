"""``python -m fastmbconv.study``: the quick CPU run writes its table, JSON, CSV and plots; the
GPU plan lists every provider (checked without a GPU)."""
import csv
import json

import pytest
import torch

from fastmbconv import study


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_out")
    result = study.main(["--quick", "--device", "cpu", "--out", str(out), "--models", "b0,b2,resnet50",
                         "--no-progress"])
    return out, result


@pytest.mark.slow
def test_quick_cpu_run_writes_every_output(quick_run):
    out, result = quick_run
    for name in ("results.md", "results.json", "results.csv", "b0_layers.csv",
                 "latency_vs_flops.png", "throughput_vs_batch.png", "b0_breakdown.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "CPU small version" in md and "48x48" in md  # the header says what was run
    assert "## Targets" in md and "not measured" in md
    assert "Where the time goes" in md and "FLOP/byte" in md
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["bandwidth"]["kind"].startswith("host memcpy")
    assert data["meta"]["settings"] == {"cudnn_benchmark": True, "cudnn_allow_tf32": False, "matmul_allow_tf32": False}
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["model"], r["batch"]) for r in rows} == {
        (m, b) for m in ("efficientnet_b0", "efficientnet_b2", "resnet50") for b in ("1", "4")}
    assert all(float(r["median_s"]) > 0 and r["provider"] == "eager" for r in rows)
    assert all(r["floor_fraction_layer_fused"] for r in rows if r["model"] != "resnet50")


def test_quick_cpu_results_are_consistent(quick_run):
    _, result = quick_run
    for r in result["rows"]:
        assert r.get("error") is None, r
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["median_s"])
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"]
    b0 = next(r for r in result["rows"] if r["model"] == "efficientnet_b0" and r["batch"] == 1)
    b2 = next(r for r in result["rows"] if r["model"] == "efficientnet_b2" and r["batch"] == 1)
    assert b0["gflops_per_image"] < b2["gflops_per_image"]
    assert b0["mb_per_image_eager"] > b0["mb_per_image_layer_fused"] > b0["mb_per_image_whole_block"]
    (bd,) = result["breakdown"]
    cats = {row["category"]: row for row in bd["rows"]}
    assert set(cats) == set(study.CATEGORIES)
    assert cats["depthwise"]["ms"] > 0 and cats["1x1"]["ms"] > 0 and cats["se"]["ms"] > 0
    assert cats["depthwise"]["flop_per_byte"] < cats["1x1"]["flop_per_byte"]
    assert sum(row["share"] for row in bd["rows"]) == pytest.approx(1.0)


def test_gpu_plan_lists_every_provider():
    plan = study.make_plan(torch.device("cuda"))
    cases = plan.cases + [c for c, _ in plan.skipped]
    b0 = {(c[2], c[4]) for c in cases if c[0] == "efficientnet_b0" and c[3] == "fp16"}
    assert {p for _, p in b0} == set(study.PROVIDERS)
    assert (1, "cudagraph_fused") in b0 and (256, "compile_max_autotune") in b0
    assert {c[1] for c in cases if c[0] == "efficientnet_b7"} == {600}
    assert "GPU default" in plan.description


