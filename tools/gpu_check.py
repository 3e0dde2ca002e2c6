#!/usr/bin/env python3
"""GPU check stages: one command per stage turns a short, offline GPU loan into files.

    make gpu-check STAGE=first|verify|speed|profile|all OUT=<dir> [DRY=1] [CACHE_FROM=<archive>] [BUDGET_S=540]
    python3 tools/gpu_check.py --stage first --out <dir> [--dry] [--cache-from <archive>] [--budget-s 540]
    python3 tools/gpu_check.py --check-out <dir> --stage first       # the file set and limits of an OUT

Every stage starts with an offline install (the interpreter running this script, which ``make``
picks as ``python3`` or else ``python``; ``pip install --no-index --no-build-isolation
--no-deps -e .``, which also builds the CUDA extension; a missing package fails with its name,
nothing is ever downloaded), restores the kernel cache when ``--cache-from`` names an archive,
and records versions to ``OUT/env.json``. Then:

* ``first``: the one command of a 15-minute loan (device time, the machine's start included):
  the CUDA tests but the slow ones (``-m "gpu and not slow"``, those written for a GPU first)
  with ``FASTMBCONV_AUTOTUNE=0`` (170 s), the warm-up (120 s), the headline benchmarks without
  max-autotune (150 s; the compiled providers last) and their merge, so one 540 s call brings back
  correctness and the headline speed ratios. Same files as ``speed``.
* ``verify``: the CUDA tests (``-m gpu``) with ``FASTMBCONV_AUTOTUNE=0`` first, so a kernel
  bug shows in a minute or two (every entry of each autotune config list is launched
  explicitly there); ``compute-sanitizer --tool memcheck`` over the kernel and extension tests,
  round-robin across their modules until its time is up, and ``--tool racecheck`` over a few;
  a warm-up of the fused B0 at 224 px (compiles and autotunes every B0 layer shape into the
  cache, checks the output against the reference); the autotuned run. JUnit XML per run.
* ``speed``: the warm-up; the headline benchmarks (B0 224 fp16 channels_last, batch 256 and 1,
  every provider, ResNet-50); kernel-level cases at B0 shapes; ``torch.compile(max-autotune)``
  of B0 at batch 256 in a step of its own; B0-B7 at batch 32 if time is left (the README plot's points). Writes the
  merged pytest-benchmark JSON and the benchmark ``summary.json`` / ``summary.md``.
* ``profile``: the warm-up; the fused forward's host time at batch 1, timed and under cProfile;
  the copy bandwidth; ``ncu`` over one fused and one eager B0 forward
  (batch 256, fp16), each limited to an NVTX range; a per-kernel table (time, DRAM GB/s,
  fraction of the copy bandwidth, registers, occupancy).
* ``all``: ``verify``, ``speed`` and ``profile`` in a row (default budget 3 x 540 s), plus the
  study (``--study``).

Each step's timeout comes out of what is left of the budget (``BUDGET_S``, default 540 s, minus
a reserve for writing the files); a step that runs over is interrupted (SIGINT first, so pytest
still writes its JUnit XML), and steps that no longer fit are reported as skipped. ``OUT``
always receives the same files for a stage, written at the start and refreshed after every
step, so a crash or a kill still leaves the logs: ``env.json``, ``report.md``, ``report.json``,
``logs.tar.gz``, ``gpu-cache.tar.gz`` (+ ``pytest-benchmark.json``, ``summary.json``,
``summary.md`` for first and speed): at most 8 files, each under 16 MiB (enforced here).

``--dry`` runs the same pipeline on a CPU: Triton's interpreter, tiny shapes, a handful of tests
(``-m "interpreter and not slow"``, sampled across modules), the CPU benchmark case; ncu and
compute-sanitizer are stripped from their command lines, which are printed as what would run;
steps with nothing to run on a CPU record their exact command. The install step never
re-points the interpreter's installed fastmbconv in dry mode (it builds the extension in place
instead). Layout, timings and file meanings: benchmarks/results/README.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpucheck.check import Check, stop  # noqa: E402
from gpucheck.outfiles import DEFAULT_BUDGET_S, STAGES, check_out, load_json, stage_files  # noqa: E402
from gpucheck.setup_steps import probe_env_main  # noqa: E402
from gpucheck.speed_steps import merge_bench_main  # noqa: E402
from gpucheck.stages import stage_steps  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--out", help="output folder (the device's $OUT)")
    p.add_argument("--dry", action="store_true", help="CPU dry run of the same pipeline")
    p.add_argument("--budget-s", type=float, default=float(os.environ["BUDGET_S"]) if os.environ.get("BUDGET_S") else None,
                   help=f"stop before this many seconds (default: BUDGET_S or {DEFAULT_BUDGET_S:.0f}; all: 3x)")
    p.add_argument("--cache-from", default=os.environ.get("CACHE_FROM") or None, help="gpu-cache.tar.gz of an earlier stage")
    p.add_argument("--commit", default=os.environ.get("COMMIT") or None, help="commit to record when there is no .git")
    p.add_argument("--study", action="store_true", help="speed: also run python -m fastmbconv.study --quick")
    p.add_argument("--only", default=os.environ.get("GPU_CHECK_ONLY"), help="comma list of step names to run")
    p.add_argument("--skip", default=os.environ.get("GPU_CHECK_SKIP"), help="comma list of step names to skip")
    p.add_argument("--check-out", metavar="DIR", help="check an OUT folder's file set and limits, then exit")
    p.add_argument("--probe-env", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--merge-bench", metavar="WORK", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not (a.probe_env or a.merge_bench) and (not a.stage or not (a.out or a.check_out)):
        p.error("--stage and --out (or --check-out) are required")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.probe_env:
        return probe_env_main(a.probe_env)
    if a.merge_bench:
        return merge_bench_main(a.merge_bench)
    if a.check_out:
        problems = check_out(Path(a.check_out), a.stage)
        print("\n".join(problems) if problems else f"{a.check_out}: the {a.stage} file set, "
              f"{len(stage_files(a.stage))} files, each under 16 MiB: OK")
        return 1 if problems else 0
    c = Check(a)
    try:
        steps, build_error = stage_steps(c), None
    except Exception as exc:  # noqa: BLE001 - the run below raises it again, to record it in OUT
        steps, build_error = None, exc
    names = {s.name for s in steps or []}
    unknown = sorted((c.only | c.skip) - names) if steps is not None else []
    if unknown:  # a misspelt step would skip silently and spend a GPU loan on nothing
        shutil.rmtree(c.work, ignore_errors=True)
        print(f"gpu_check: --only/--skip name no step of the {a.stage} stage: {', '.join(unknown)} "
              f"(its steps: {', '.join(sorted(names))})", file=sys.stderr)
        return 2

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if build_error is not None:
            raise build_error
        c.steps = steps
        c.write_files(final=False)  # the whole file set exists from the first second on
        for step in c.steps:
            c.run(step)
    except BaseException as exc:  # noqa: BLE001 - including KeyboardInterrupt: the files come first
        c.crashed = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if c.current is not None:
            stop(c.current)
    finally:
        # A stop signal now would abort the final write half way (a .tmp left in OUT, a report
        # still saying RUNNING): the write is bounded (the cache pack by PACK_DEADLINE_S), so it
        # finishes first.
        previous = [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)]
        try:
            c.write_files(final=True)
        finally:
            for s, handler in zip((signal.SIGTERM, signal.SIGINT), previous):
                signal.signal(s, handler)
            if not c.keep_work:
                shutil.rmtree(c.work, ignore_errors=True)
    report = load_json(c.out / "report.json") or {}
    print("\n" + (c.out / "report.md").read_text().split("## Files")[0].rstrip())
    problems = check_out(c.out, c.stage)
    if problems:
        print("OUT check failed:\n" + "\n".join(problems), file=sys.stderr)
        return 3
    if c.result("preflight") is not None and c.result("preflight").status != "ok":
        return 2
    return 1 if report.get("status") == "FAILED" else 0


if __name__ == "__main__":
    sys.exit(main())
