"""``python -m fastmbconv.study``: the FLOPs-vs-latency study on the device present."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .bandwidth import device_name
from .plan import make_plan, run_plan
from .providers import PROVIDERS
from .report import roofline_table, write_outputs
from .targets import format_targets


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m fastmbconv.study",
        description="EfficientNet B0-B7 and ResNet-50: latency vs FLOPs vs memory floor, per provider")
    p.add_argument("--out", default="study_out", help="output directory (default: study_out/)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present)")
    p.add_argument("--quick", action="store_true", help="a smaller sweep (CPU: seconds; GPU: a few minutes)")
    p.add_argument("--full", action="store_true", help="GPU: every model, batch, dtype and provider")
    p.add_argument("--models", default=None, help="comma list, e.g. b0,b4,resnet50")
    p.add_argument("--batches", default=None, help="comma list, e.g. 1,32,256")
    p.add_argument("--dtypes", default=None, help="comma list of fp16,bf16,fp32")
    p.add_argument("--providers", default=None, help=f"comma list of {','.join(PROVIDERS)}")
    p.add_argument("--resolution", type=int, default=None, help="override every model's resolution")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA GPU is available")
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()] if s else None  # noqa: E731
    plan = make_plan(device, quick=a.quick, full=a.full, models=split(a.models),
                     batches=[int(b) for b in split(a.batches)] if a.batches else None,
                     dtypes=split(a.dtypes), providers=split(a.providers), resolution=a.resolution)
    print(f"fastmbconv study on {device_name(device)}\n{plan.description}\n"
          f"{len(plan.cases)} cases, {len(plan.skipped)} skipped; writing to {a.out}/")
    t0 = time.perf_counter()
    result = run_plan(plan, progress=not a.no_progress)
    result["roofline_table"] = roofline_table(plan)
    paths = write_outputs(result, Path(a.out), plot=not a.no_plots)
    print("\n" + format_targets(result["targets"]))
    failed = [r for r in result["rows"] if r.get("median_s") is None]
    if failed:
        print(f"\n{len(failed)} case(s) failed; see results.md")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s; wrote " + ", ".join(str(p) for p in paths))
    return result


if __name__ == "__main__":
    main()
