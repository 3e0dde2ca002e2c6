"""``python -m fastmbconv.study``: the FLOPs-vs-latency study on the device present."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .bandwidth import device_name
from .plan import make_plan, run_plan
from .providers import DTYPES, PROVIDERS
from .report import roofline_table, write_outputs
from .targets import format_targets


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastmbconv.study",
        description="EfficientNet B0-B7 and ResNet-50: latency vs FLOPs vs memory floor, per provider")
    p.add_argument("--out", default="study_out", help="output directory (default: study_out/)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if present)")
    p.add_argument("--quick", action="store_true", help="a smaller sweep (CPU: seconds; GPU: a few minutes)")
    p.add_argument("--full", action="store_true", help="GPU: every model, batch, dtype and provider")
    p.add_argument("--models", default=None, help="comma list, e.g. b0,b4,resnet50")
    p.add_argument("--batches", default=None, help="comma list, e.g. 1,32,256")
    p.add_argument("--dtypes", default=None, help=f"comma list of {','.join(DTYPES)}")
    p.add_argument("--providers", default=None, help=f"comma list of {','.join(PROVIDERS)}")
    p.add_argument("--resolution", type=int, default=None, help="override every model's resolution")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _split(s):
    return [v.strip() for v in s.split(",") if v.strip()] if s else None


def _checked_plan(p: argparse.ArgumentParser, a: argparse.Namespace):
    """The run's plan; a bad argument is an argparse error (usage, message, exit status 2)."""
    try:
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        p.error(f"--device: {exc}")
    if device.type not in ("cuda", "cpu"):
        p.error(f"--device must be cuda, cuda:N or cpu, got {a.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but no CUDA GPU is available")
    try:
        batches = [int(b) for b in _split(a.batches)] if a.batches else None
    except ValueError:
        p.error(f"--batches must be a comma list of integers, got {a.batches!r}")
    if batches is not None and (not batches or min(batches) < 1):
        p.error(f"--batches must be positive integers, got {a.batches!r}")
    if a.resolution is not None and a.resolution < 1:
        p.error(f"--resolution must be positive, got {a.resolution}")
    dtypes = _split(a.dtypes)
    bad = [d for d in dtypes or () if d not in DTYPES]
    if bad or (a.dtypes is not None and not dtypes):
        p.error(f"--dtypes: unknown {bad or a.dtypes!r}; expected a comma list of {','.join(DTYPES)}")
    try:
        return make_plan(device, quick=a.quick, full=a.full, models=_split(a.models), batches=batches,
                         dtypes=dtypes, providers=_split(a.providers), resolution=a.resolution)
    except ValueError as exc:  # an unknown model or provider
        p.error(str(exc))


def main(argv=None) -> dict:
    p = _parser()
    a = p.parse_args(argv)
    plan = _checked_plan(p, a)
    device = plan.device
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
    if len(failed) == len(result["rows"]):
        why = "every case failed" if failed else "no case could run here (see the skipped cases in results.md)"
        raise SystemExit(f"python -m fastmbconv.study: nothing was measured: {why}")
    return result


if __name__ == "__main__":
    main()
