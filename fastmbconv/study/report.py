"""The study's table, JSON, CSV and per-layer file (plots in :mod:`.plots`)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .. import roofline as rl
from .plan import Plan
from .providers import ALL_MODELS, RESNET, short_name
from .targets import format_targets


CSV_FIELDS = ("model", "resolution", "batch", "dtype", "provider", "median_s", "q1_s", "q3_s", "iqr_s", "min_s",
              "reps", "images_per_s", "gflops_per_image", "tflops", "mb_per_image_eager",
              "mb_per_image_layer_fused", "mb_per_image_expand_dw_fused", "mb_per_image_whole_block", "gb_s_eager",
              "gb_s_layer_fused", "floor_fraction_eager", "floor_fraction_layer_fused",
              "floor_fraction_expand_dw_fused", "floor_fraction_whole_block",
              "model_source", "error")


def fmt(v, spec=".2f", none="—") -> str:
    """``v`` formatted with ``spec``, or ``none`` for a missing or NaN value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def format_markdown(result: dict) -> str:
    meta = result["meta"]
    bw = meta["bandwidth"]
    out = [
        "# fastmbconv study", "",
        f"- device: **{meta['device']}**; torch {meta['torch']}; {meta['created']}",
        f"- plan: {meta['plan']}",
        f"- memory ceiling measured in this run: {bw['gb_s']:.1f} GB/s, {bw['kind']} ({bw['method']})",
        "- latency: median of synchronised calls after untimed warm-up (compile/autotune excluded); "
        "spread = interquartile range. Floor fraction = (analytic bytes at that fusion level / measured "
        "bandwidth) / measured time; 1.0 means at the floor.", "",
        "| model | res | batch | dtype | provider | median ms | IQR ms | img/s | GFLOP/img | TFLOP/s | "
        "GB/s (eager bytes) | GB/s (layer-fused bytes) | floor frac eager | floor frac layer-fused | "
        "floor frac expand-dw fused | floor frac whole-block |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("median_s") is None:
            out.append(f"| {short_name(r['model'])} | {r['resolution']} | {r['batch']} | {r['dtype']} | "
                       f"{r['provider']} | failed: {r.get('error', '?')} ||||||||||| |")
            continue
        out.append(
            f"| {short_name(r['model'])} | {r['resolution']} | {r['batch']} | {r['dtype']} | {r['provider']} | "
            f"{r['median_s'] * 1e3:.3f} | {r['iqr_s'] * 1e3:.3f} | {r['images_per_s']:,.1f} | "
            f"{r['gflops_per_image']:.3f} | {fmt(r['tflops'], '.3f')} | {fmt(r.get('gb_s_eager'), '.1f')} | "
            f"{fmt(r.get('gb_s_layer_fused'), '.1f')} | {fmt(r.get('floor_fraction_eager'), '.3f')} | "
            f"{fmt(r.get('floor_fraction_layer_fused'), '.3f')} | {fmt(r.get('floor_fraction_expand_dw_fused'), '.3f')} | "
            f"{fmt(r.get('floor_fraction_whole_block'), '.3f')} |")
    if meta["skipped"]:
        reasons: dict[str, int] = {}
        for s in meta["skipped"]:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        out += ["", "Skipped cases:"] + [f"- {n} x {why}" for why, n in reasons.items()]
    out += ["", "## Targets (H100, fp16, B0 at 224, batch 256 unless stated)", "", format_targets(result["targets"])]
    for b in result["breakdown"]:
        out += ["", f"## Where the time goes: {short_name(b['model'])} {b.get('resolution', '')} px, "
                    f"batch {b.get('batch', '')}, {b.get('dtype', '')}, {b['provider']}", ""]
        if "error" in b:
            out.append(f"failed: {b['error']}")
            continue
        out += [f"Wall {b['wall_ms']:.3f} ms per call under the profiler; op times are {b['time_source']}; "
                f"FLOPs and bytes are the analytic {b['bytes_level']} counts.", "",
                "| category | ms | share | GFLOP | MB | FLOP/byte |", "|---|---:|---:|---:|---:|---:|"]
        for row in b["rows"]:
            out.append(f"| {row['category']} | {row['ms']:.3f} | {row['share'] * 100:.1f}% | {row['gflops']:.3f} | "
                       f"{row['mb']:.2f} | {fmt(row['flop_per_byte'], '.2f')} |")
    roofs = result.get("roofline_table")
    if roofs:
        out += ["", "## Analytic HBM traffic per image (batch and dtype of the first cases)", "", roofs]
    return "\n".join(out) + "\n"


def write_outputs(result: dict, out_dir: Path, plot: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    written.append(out_dir / "results.json")
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in result["rows"]:
            w.writerow(r)
    written.append(out_dir / "results.csv")
    (out_dir / "results.md").write_text(format_markdown(result))
    written.append(out_dir / "results.md")
    written.append(_write_layers_csv(result, out_dir / "b0_layers.csv"))
    if plot:
        from .plots import write_plots  # matplotlib only when plotting

        written += write_plots(result, out_dir)
    return written


def _write_layers_csv(result: dict, path: Path) -> Path:
    rows = [r for r in result["rows"] if r["model"] == "efficientnet_b0"]
    res = rows[0]["resolution"] if rows else 224
    batch = rows[0]["batch"] if rows else 1
    dtype = rows[0]["dtype"] if rows else "fp16"
    roof = rl.roofline("efficientnet_b0", res, batch, dtype)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["level", "layer", "kind", "mflops", "kb_read", "kb_written", "flop_per_byte"])
        for level in rl.LEVELS:
            for op in roof.ops[level]:
                w.writerow([level, op.layer, op.kind, f"{op.flops / 1e6:.3f}", f"{op.read / 1e3:.1f}",
                            f"{op.written / 1e3:.1f}", f"{op.intensity:.3f}"])
    return path



def roofline_table(plan: Plan) -> str:
    if not plan.cases:
        return ""
    _, _, batch, dtype, _ = plan.cases[0]
    models = sorted({(c[0], c[1]) for c in plan.cases if c[0] != RESNET}, key=lambda mr: (ALL_MODELS.index(mr[0]), mr[1]))
    return rl.format_table([rl.roofline(m, r, batch, dtype) for m, r in models])
