"""``python -m fastmbconv.kernel_report --model efficientnet_b0 --batch 256 --dtype fp16
[--resolution R] [--json PATH] [--md PATH] [--jobs N] [--cache-dir DIR] [--top N]
[--plan-table [PATH]]``

Prints the totals and the top launches by modelled time; writes the full report as JSON and/or
markdown. With ``TRITON_INTERPRET=1`` in the environment it re-runs itself without it (the
launchers must pick their GPU configs and triton must compile, not interpret).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastmbconv.kernel_report",
                                description="Static sm_90 report of every kernel launch of one fused forward.")
    p.add_argument("--model", default="efficientnet_b0", help="efficientnet_b0 ... efficientnet_b7 (or b0 ... b7)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's own)")
    p.add_argument("--json", dest="json_path", default=None, help="write the full report as JSON here")
    p.add_argument("--md", dest="md_path", default=None, help="write the markdown report here")
    p.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per core)")
    p.add_argument("--cache-dir", default=None,
                   help="analysis cache (default: $FASTMBCONV_REPORT_CACHE or ~/.cache/fastmbconv/kernel_report)")
    p.add_argument("--configs", default="all", choices=["all", "fixed"],
                   help="all: every autotune config (default); fixed: only the FASTMBCONV_AUTOTUNE=0 configs "
                        "(a quick smoke run)")
    p.add_argument("--top", type=int, default=10, help="launches to print, by modelled time")
    p.add_argument("--plan-table", nargs="?", const="default", default=None, metavar="PATH",
                   help="report the forward with every block's expand + depthwise fused and separate, and "
                        "write each block's modelled times both ways into the plan table (default: "
                        "fastmbconv/fused/expand_dw_plan.json)")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "fastmbconv.kernel_report", *argv], env=env)
    args = parse_args(argv)
    from .build import build_report
    from .report import STATIC_NOTE, top_table, totals_table, write_json, write_markdown

    t0 = time.perf_counter()
    if args.plan_table:
        return plan_table_main(args)
    report = build_report(args.model, args.batch, args.dtype, args.resolution, jobs=args.jobs,
                          cache_dir=args.cache_dir, configs=args.configs,
                          progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    report["seconds"]["total"] = time.perf_counter() - t0
    if args.json_path:
        write_json(report, args.json_path)
    if args.md_path:
        write_markdown(report, args.md_path)
    print(f"{report['model']} batch {report['batch']} {report['dtype']} {report['resolution'][0]}px, "
          f"triton {report['triton_version']}. {STATIC_NOTE}\n")
    print(totals_table(report))
    print(f"\nTop {args.top} launches by modelled time:\n")
    print(top_table(report["launches"], args.top))
    c = report["cache"]
    print(f"\n{c['variants']} specialisations: {c['compiled']} compiled, {c['disk_hits']} from the disk cache, "
          f"{c['memo_hits']} repeats; {report['seconds']['total']:.1f} s", file=sys.stderr)
    return 0


def plan_table_main(args) -> int:
    from fastmbconv.fused.layer_plan import TABLE

    from .plan_table import build_plan_table, merge_into

    table = build_plan_table(args.model, args.batch, args.dtype, args.resolution, jobs=args.jobs,
                             cache_dir=args.cache_dir, configs=args.configs,
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    path = TABLE if args.plan_table == "default" else args.plan_table
    merge_into(path, table)
    print(f"{len(table['entries'])} block geometries written to {path}. Static model, not a measurement.\n")
    print("| block | triton | fused µs | separate µs | choice |\n|---|---|---|---|---|")
    for entry in table["entries"].values():
        for release, record in entry["modelled"].items():
            m = record["modelled_us"]
            print(f"| {', '.join(entry['layers'])} | {release} | {m['fused']:.1f} | {m['separate']:.1f} | "
                  f"{record['choice']} |")
    for source, both in table["totals"].items():
        print(f"\n{source}: whole forward modelled "
              + ", ".join(f"{c} everywhere {t['modelled_ms']:.3f} ms ({t['hbm_bytes'] / 1e6:.0f} MB HBM)"
                          for c, t in both.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
