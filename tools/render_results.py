#!/usr/bin/env python3
"""Regenerate the README's results table and plots from a committed results folder.

    python tools/render_results.py benchmarks/results/<gpu>/ [--no-plots]

Reads ``<dir>/study/results.json`` when a study run was committed, else builds the same result
rows from ``<dir>/pytest-benchmark.json`` (the speed stage's merged sessions; round statistics
become median / interquartile range) with the copy bandwidth from ``<dir>/summary.json``, and
writes through :func:`fastmbconv.study.write_outputs`:

* ``<dir>/study/``: ``results.md`` / ``.json`` / ``.csv``, ``b0_layers.csv``, and the plots
  (``latency_vs_flops.png`` is the README's main plot);
* ``<dir>/README-table.md``: the headline table (B0 224 fp16 at batch 256 and 1 under every
  provider, ResNet-50) and the targets, printed too, to paste into the README.

Nothing is measured here: every number comes from the committed files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ncu_table import fmt  # noqa: E402


def rows_from_benchmarks(bench: dict) -> list[dict]:
    """Model rows (one per pytest-benchmark case of ``test_model``) in the study's row format."""
    rows = []
    for b in bench.get("benchmarks", []):
        info, st = b.get("extra_info") or {}, b.get("stats") or {}
        if "provider" not in info or "model" not in info or not st.get("median"):
            continue  # kernel cases, or timing disabled
        rows.append({**info, "median_s": st["median"], "q1_s": st.get("q1"), "q3_s": st.get("q3"),
                     "iqr_s": st.get("iqr"), "min_s": st.get("min"), "reps": st.get("rounds")})
    return rows


def result_from_folder(folder: Path) -> dict:
    """The study-format result for ``folder``: its study/results.json, or one built from its
    pytest-benchmark.json + summary.json (+ env.json for the versions)."""
    from fastmbconv import study

    committed = folder / "study" / "results.json"
    if committed.exists():
        return json.loads(committed.read_text())
    bench = json.loads((folder / "pytest-benchmark.json").read_text())
    rows = rows_from_benchmarks(bench)
    if not rows:
        raise SystemExit(f"{folder}/pytest-benchmark.json has no timed model case")
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    env = json.loads((folder / "env.json").read_text()) if (folder / "env.json").exists() else {}
    bws = summary.get("bandwidth") or {}
    bw = bws.get(rows[0].get("device", "cuda")) or next(iter(bws.values()), None) or {
        "gb_s": rows[0].get("bandwidth_gb_s") or float("nan"), "kind": rows[0].get("bandwidth_kind", "?"),
        "method": "as recorded in the benchmark rows"}
    return {
        "meta": {"created": bench.get("datetime", "?"), "device": rows[0].get("device_name", "?"),
                 "device_type": rows[0].get("device", "?"), "torch": env.get("torch", "?"),
                 "plan": "pytest-benchmark sessions of a gpu-check stage (benchmarks/): "
                         f"{', '.join(s['step'] for s in bench.get('gpu_check_sessions', [])) or 'one session'}",
                 "bandwidth": bw, "skipped": []},
        "rows": rows, "targets": study.evaluate_targets(rows, summary.get("kernels") or ()), "breakdown": [],
    }


def readme_table(result: dict) -> str:
    """B0 224 fp16 at batch 256 and 1 under every provider, and ResNet-50, with the targets."""
    from fastmbconv import study

    rows = [r for r in result["rows"] if r.get("median_s") and r.get("dtype") == "fp16" and r.get("resolution") == 224
            and r.get("model") in ("efficientnet_b0", "resnet50") and r.get("batch") in (256, 1)]
    eager = {r["batch"]: r["median_s"] for r in rows if r["model"] == "efficientnet_b0" and r["provider"] == "eager"}
    out = [f"Measured on {result['meta']['device']} ({result['meta']['created']}), fp16, channels_last, 224 px; "
           f"copy bandwidth {fmt(result['meta']['bandwidth'].get('gb_s'), ',.0f')} GB/s.", "",
           "| model | batch | provider | median ms | img/s | vs B0 eager | fraction of layer-fused floor |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (-r["batch"], r["model"] != "efficientnet_b0", r["median_s"])):
        speedup = eager.get(r["batch"]) / r["median_s"] if eager.get(r["batch"]) else None
        out.append(f"| {study.short_name(r['model'])} | {r['batch']} | {r['provider']} | {r['median_s'] * 1e3:.3f} | "
                   f"{r['batch'] / r['median_s']:,.0f} | {fmt(speedup, '.2f')}x | "
                   f"{fmt(r.get('floor_fraction_layer_fused'), '.2f')} |")
    out += ["", study.format_targets(result["targets"])]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a results folder, e.g. benchmarks/results/h100-sxm")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    from fastmbconv import study

    result = result_from_folder(a.folder)
    paths = study.write_outputs(result, a.folder / "study", plot=not a.no_plots)
    table = readme_table(result)
    (a.folder / "README-table.md").write_text(table)
    print(table)
    print("wrote " + ", ".join(str(x) for x in [*paths, a.folder / "README-table.md"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
