#!/usr/bin/env python3
"""GPU check stages: one command per stage turns a short, offline GPU loan into files.

    make gpu-check STAGE=verify|speed|profile|all OUT=<dir> [DRY=1] [CACHE_FROM=<archive>] [BUDGET_S=540]
    python3 tools/gpu_check.py --stage verify --out <dir> [--dry] [--cache-from <archive>] [--budget-s 540]
    python3 tools/gpu_check.py --check-out <dir> --stage verify      # the file set and limits of an OUT

Every stage starts with an offline install (the interpreter running this script, which ``make``
picks as ``python`` or else ``python3``; ``pip install --no-index --no-build-isolation
--no-deps -e .``, which also builds the CUDA extension; a missing package fails with its name,
nothing is ever downloaded), restores the kernel cache when ``--cache-from`` names an archive,
and records versions to ``OUT/env.json``. Then:

* ``verify``: the CUDA tests (``-m gpu``) with ``FASTMBCONV_AUTOTUNE=0`` first, so a kernel
  bug shows in a minute or two; a warm-up of the fused B0 at 224 px (compiles and autotunes every
  B0 layer shape into the cache, checks the output against the reference); the autotuned run;
  ``compute-sanitizer --tool memcheck`` over the CUDA tests (``-m "gpu and not slow and not
  subprocess"``). JUnit XML per run.
* ``speed``: the warm-up; the headline benchmarks (B0 224 fp16 channels_last, batch 256 and 1,
  every provider, ResNet-50); kernel-level cases at B0 shapes; ``torch.compile(max-autotune)``
  in a step of its own; B0-B7 at batch 32 if time is left (the README plot's points). Writes the
  merged pytest-benchmark JSON and the benchmark ``summary.json`` / ``summary.md``.
* ``profile``: the warm-up; the copy bandwidth; ``ncu`` over one fused and one eager B0 forward
  (batch 256, fp16), each limited to an NVTX range; a per-kernel table (time, DRAM GB/s,
  fraction of the copy bandwidth, registers, occupancy).
* ``all``: the three in a row (default budget 3 x 540 s), plus the study (``--study``).

Each step's timeout comes out of what is left of the budget (``BUDGET_S``, default 540 s, minus
a reserve for writing the files); a step that runs over is interrupted (SIGINT first, so pytest
still writes its JUnit XML), and steps that no longer fit are reported as skipped. ``OUT``
always receives the same files for a stage, written at the start and refreshed after every
step, so a crash or a kill still leaves the logs: ``env.json``, ``report.md``, ``report.json``,
``logs.tar.gz``, ``gpu-cache.tar.gz`` (+ ``pytest-benchmark.json``, ``summary.json``,
``summary.md`` for speed): at most 8 files, each under 16 MiB (enforced here).

``--dry`` runs the same pipeline on a CPU: Triton's interpreter, tiny shapes, a handful of tests
(``-m "interpreter and not slow"``, sampled across modules), the CPU benchmark case; ncu and
compute-sanitizer are stripped from their command lines, which are printed as what would run;
steps with nothing to run on a CPU record their exact command. The install step never
re-points the interpreter's installed fastmbconv in dry mode (it builds the extension in place
instead). Layout, timings and file meanings: benchmarks/results/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata as md
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
import gpu_cache  # noqa: E402
import ncu_table  # noqa: E402

# ---------------------------------------------------------------------- the promised files
MAX_FILES = 8
MAX_BYTES = 16 * 2**20  # each file must stay under this
SAFE_BYTES = MAX_BYTES - 512 * 2**10  # what we aim for
LOG_KEEP_HEAD, LOG_KEEP_TAIL = 256 * 2**10, 3 * 2**20  # a longer log is cut in the middle
COMMON_FILES = ("env.json", "report.md", "report.json", "logs.tar.gz", "gpu-cache.tar.gz")
BENCH_FILES = ("pytest-benchmark.json", "summary.json", "summary.md")
STAGES = ("verify", "speed", "profile", "all")
ALL_FILE_NAMES = COMMON_FILES + BENCH_FILES


def stage_files(stage: str) -> tuple[str, ...]:
    return COMMON_FILES + (BENCH_FILES if stage in ("speed", "all") else ())


DEFAULT_BUDGET_S = 540.0
RESERVE_S = 40.0  # kept back for interrupting a step (up to 25 s) and writing the files

# ---------------------------------------------------------------------- what the stages select
GPU_MARK = os.environ.get("GPU_CHECK_MARK", "gpu")
MEMCHECK_MARK = os.environ.get("GPU_CHECK_MEMCHECK_MARK", "gpu and not slow and not subprocess")
DRY_MARK = os.environ.get("GPU_CHECK_DRY_MARK", "interpreter and not slow")
DRY_SAMPLE = int(os.environ.get("GPU_CHECK_DRY_SAMPLE", "6"))
DRY_SECONDS = os.environ.get("GPU_CHECK_DRY_SECONDS")  # overrides each dry test run's time cap
HEADLINE = "(gpu-b0-224-bs256- or gpu-b0-224-bs1- or gpu-resnet50-224-)"
BENCH_K = {
    "bench-headline": f"test_model and {HEADLINE} and not compile_max_autotune",
    "bench-kernels": "test_kernel and b0-bs",
    "bench-max-autotune": f"test_model and {HEADLINE} and compile_max_autotune",
    "bench-models-bs32": "test_model and gpu- and -bs32- and not compile_max_autotune",
}
DRY_BENCH_K = "test_model and cpu-b0-64-bs2-"  # the benchmarks' CPU smoke case
MEMCHECK_ERRORS = re.compile(r"ERROR SUMMARY:\s*([\d,]+)\s+error")


# ---------------------------------------------------------------------- small helpers
def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def dump_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def load_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def quiet(cmd: list[str], timeout: float = 20.0) -> str | None:
    """stdout of a short command, or None if it is missing or fails."""
    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def version_tuple(v: str | None) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v or "")[:3])


def git_info(commit_arg: str | None) -> dict:
    """Commit of the checkout (a device copy may have no .git: then --commit / COMMIT)."""
    head = quiet(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    if head:
        dirty = quiet(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        return {"commit": head, "dirty": bool(dirty), "source": "git"}
    if commit_arg:
        return {"commit": commit_arg, "dirty": None, "source": "--commit / COMMIT"}
    return {"commit": None, "dirty": None,
            "source": "unknown: no .git in this copy; pass COMMIT=<sha> (the tree fingerprint identifies the sources)"}


def tree_fingerprint() -> str:
    """sha256 over the project's source files, so results trace to sources without git."""
    h = hashlib.sha256()
    roots = ["fastmbconv", "kernels", "csrc", "tests", "benchmarks", "tools", "setup.py", "pyproject.toml",
             "Makefile", "conftest.py"]
    for root in roots:
        base = REPO / root
        paths = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
        for p in paths:
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc"):
                h.update(p.relative_to(REPO).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def junit_summary(path: Path) -> dict | None:
    """Counts and the first failures of a JUnit XML file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0) or 0) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["time_s"] = round(sum(float(s.get("time", 0) or 0) for s in suites), 1)
    failed = []
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            bad = case.find(tag)
            if bad is not None:
                name = f"{case.get('classname', '')}::{case.get('name', '')}"
                failed.append({"test": name, "kind": tag, "message": (bad.get("message") or "")[:300]})
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    total["failed"] = failed[:40]
    return total


def _shrink_text(data: bytes) -> bytes:
    if len(data) <= LOG_KEEP_HEAD + LOG_KEEP_TAIL:
        return data
    cut = len(data) - LOG_KEEP_HEAD - LOG_KEEP_TAIL
    return data[:LOG_KEEP_HEAD] + f"\n\n[... gpu-check cut {cut:,} bytes here ...]\n\n".encode() + data[-LOG_KEEP_TAIL:]


def pack_dir(src: Path, archive: Path, cap: int = SAFE_BYTES) -> list[str]:
    """tar.gz of ``src`` under ``cap``: long logs keep their head and tail; if still too big, the
    largest members are left out. Returns notes on what was cut or left out."""
    import io

    notes: list[str] = []
    files = sorted((p for p in Path(src).rglob("*") if p.is_file()), key=lambda p: p.as_posix()) if Path(src).is_dir() else []
    dropped: set[Path] = set()
    while True:
        tmp = archive.with_name(f".{archive.name}.tmp")
        with tarfile.open(tmp, "w:gz") as tf:
            for p in files:
                if p in dropped:
                    continue
                data = p.read_bytes()
                if len(data) > LOG_KEEP_HEAD + LOG_KEEP_TAIL and p.suffix in (".log", ".txt", ".csv", ".xml"):
                    data = _shrink_text(data)
                info = tarfile.TarInfo(p.relative_to(src).as_posix())
                info.size, info.mtime = len(data), int(p.stat().st_mtime)
                tf.addfile(info, io.BytesIO(data))
            if dropped:
                note = "left out to stay under the size cap: " + ", ".join(
                    f"{p.relative_to(src)} ({p.stat().st_size:,} B)" for p in sorted(dropped))
                data = note.encode()
                info = tarfile.TarInfo("LEFT_OUT.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        os.replace(tmp, archive)
        if archive.stat().st_size < cap or len(dropped) == len(files):
            break
        biggest = max((p for p in files if p not in dropped), key=lambda p: p.stat().st_size)
        dropped.add(biggest)
    if dropped:
        notes.append(f"{archive.name}: left out {len(dropped)} file(s) to stay under the cap (see LEFT_OUT.txt)")
    return notes


# ---------------------------------------------------------------------- steps
@dataclass
class Step:
    """One command of a stage. ``cmd`` runs on the GPU machine; ``dry`` is what runs in dry mode
    (an argv, ``None`` = only record ``cmd``, or a callable ``(check) -> argv | None``). A ``tool``
    prefix (ncu, compute-sanitizer) is stripped in dry mode and printed. ``fn`` is an in-process
    step ``(check) -> (status, details)``."""

    name: str
    cmd: list[str] | None = None
    dry: list[str] | Callable | None = None
    tool: list[str] | None = None
    fn: Callable | None = None
    cap_s: float = 120.0
    min_s: float = 15.0
    env: dict = field(default_factory=dict)
    junit: Path | None = None
    needs: tuple = ("preflight", "install")
    needs_tool: str | None = None
    essential: bool = False  # runs whatever the budget and --only/--skip say (quick bookkeeping)
    dry_note: str = "nothing to run on a CPU; the command is recorded"
    what: str = ""


@dataclass
class Result:
    name: str
    status: str  # ok | failed | timed out | empty | dry (recorded) | skipped (...)
    seconds: float = 0.0
    rc: int | None = None
    command: str = ""
    would_run: str = ""
    log: str = ""
    details: dict = field(default_factory=dict)
    note: str = ""


class Check:
    """One run of one stage: the steps, the budget, the files."""

    def __init__(self, a):
        self.stage, self.dry, self.study = a.stage, a.dry, a.study or a.stage == "all"
        self.out = Path(a.out).resolve()
        self.budget_s = a.budget_s if a.budget_s is not None else DEFAULT_BUDGET_S * (3 if a.stage == "all" else 1)
        self.t0 = time.monotonic()
        self.started = now_iso()
        self.py = sys.executable
        self.cache_root = Path(os.environ.get("GPU_CHECK_CACHE_DIR") or REPO / "build" / "gpu-cache").resolve()
        self.cache_from = Path(a.cache_from).resolve() if a.cache_from else None
        self.commit_arg = a.commit
        self.only = set(filter(None, (a.only or "").split(",")))
        self.skip = set(filter(None, (a.skip or "").split(",")))
        self.work = Path(tempfile.mkdtemp(prefix=f"gpu-check-{self.stage}-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.keep_work = os.environ.get("GPU_CHECK_KEEP_WORK") == "1"
        self.results: list[Result] = []
        self.env_info: dict = {"stage": self.stage, "dry": self.dry, "created": self.started}
        self.cache: dict = {}
        self.notes: list[str] = []
        self.file_notes: list[str] = []
        self.current: subprocess.Popen | None = None
        self.crashed: str | None = None
        self.steps: list[Step] = []
        self.profile_data: dict | None = None
        self.install_env = {"MAX_JOBS": str(os.cpu_count() or 4)}  # + TORCH_CUDA_ARCH_LIST from preflight

    # -------------------------------------------------------------- budget
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed() - RESERVE_S

    # -------------------------------------------------------------- environment of every step
    def step_env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                   HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
        # this checkout first (as `python -m pytest` has it), then the tools (the pytest plugin)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(TOOLS), os.environ.get("PYTHONPATH")]))
        env.update(gpu_cache.env_for(self.cache_root))
        if self.dry:
            env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        env.update(extra or {})
        return env

    # -------------------------------------------------------------- running
    def result(self, name: str) -> Result | None:
        return next((r for r in self.results if r.name == name), None)

    def blocked_by(self, step: Step) -> str | None:
        for need in step.needs:
            r = self.result(need)
            if r is not None and r.status not in ("ok", "empty", "dry (recorded)") and not r.status.startswith("skipped (not selected"):
                return need
        return None

    def run(self, step: Step) -> Result:
        res = Result(step.name, "not run")
        self.results.append(res)
        t0 = time.monotonic()
        try:
            self._run(step, res)
        except Exception as exc:  # a bug in this script must not lose the files
            res.status = "failed"
            res.note = f"gpu-check error: {type(exc).__name__}: {exc}"
            (self.logs / f"{len(self.results):02d}-{step.name}.error.txt").write_text(traceback.format_exc())
        res.seconds = round(res.seconds or (time.monotonic() - t0), 1)
        print(f"[gpu-check {self.stage}{' dry' if self.dry else ''}] {step.name}: {res.status} "
              f"({res.seconds:.1f} s){' - ' + res.note if res.note else ''}", flush=True)
        self.write_files(final=False)
        return res

    def _run(self, step: Step, res: Result) -> None:
        if not step.essential and ((self.only and step.name not in self.only) or step.name in self.skip):
            res.status = "skipped (not selected: --only/--skip)"
            return
        left = step.cap_s if step.essential else self.left()
        if left < step.min_s:
            res.status = "skipped (budget)"
            res.note = f"{max(left, 0):.0f} s left of the budget, the step needs at least {step.min_s:.0f} s"
            return
        blocker = self.blocked_by(step)
        if blocker:
            res.status = f"skipped ({blocker} did not succeed)"
            return
        if step.needs_tool and not self.dry and not shutil.which(step.needs_tool):
            res.status = f"skipped ({step.needs_tool} not found on PATH)"
            return
        if step.fn is not None:
            res.status, res.details = step.fn(self)
            res.note = str(res.details.get("error") or res.details.get("note") or "")[:300]
            return
        gpu_cmd = (step.tool or []) + (step.cmd or [])
        res.command = shlex.join(gpu_cmd)
        if self.dry:
            argv = step.dry(self) if callable(step.dry) else step.dry
            if argv != gpu_cmd:
                res.would_run = res.command
            if argv is None:
                res.status = "dry (recorded)"
                res.note = step.dry_note
                (self.logs / f"{len(self.results):02d}-{step.name}.log").write_text(f"dry: would run: {res.command}\n")
                res.log = f"{len(self.results):02d}-{step.name}.log"
                return
            res.command = shlex.join(argv)
        else:
            argv = gpu_cmd
        self.execute(step, res, argv, timeout=min(step.cap_s, left))

    def execute(self, step: Step, res: Result, argv: list[str], timeout: float) -> None:
        log_name = f"{len(self.results):02d}-{step.name}.log"
        res.log = log_name
        before = gpu_cache.inventory(self.cache_root)
        env = self.step_env(step.env)
        t0 = time.monotonic()
        with open(self.logs / log_name, "w") as log:
            log.write(f"# {step.name}: {shlex.join(argv)}\n# timeout {timeout:.0f} s; env: "
                      + " ".join(f"{k}={v}" for k, v in sorted(step.env.items())) + "\n")
            if res.would_run:
                log.write(f"# dry run{' without ' + step.tool[0] if step.tool else ''}; on a GPU this step runs: "
                          f"{res.would_run}\n")
            log.flush()
            try:
                self.current = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                res.status, res.note = "failed", f"could not start: {exc}"
                return
            try:
                res.rc = self.current.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                stop(self.current)
                res.rc = self.current.returncode
            self.current = None
        res.seconds = time.monotonic() - t0
        after = gpu_cache.inventory(self.cache_root)
        res.details["cache_new_kernels"] = after["kernels"] - before["kernels"]
        res.details["cache_new_autotune_results"] = after["autotune_results"] - before["autotune_results"]
        if step.junit is not None:
            res.details["tests"] = junit_summary(step.junit)
        text = (self.logs / log_name).read_text(errors="replace")
        if timed_out:
            res.status = "timed out"
            res.note = f"stopped after {timeout:.0f} s (its share of the budget); what it wrote is kept"
        elif res.rc == 0:
            res.status = "ok"
        elif res.rc == 5 and step.junit is not None:
            res.status = "empty" if self.dry else "failed"
            res.note = "no test selected: no test carries the marker(s) yet"
        else:
            res.status = "failed"
            res.note = f"exit code {res.rc}; last line: {last_line(text)}"
        if step.name == "memcheck":
            counts = [int(m.replace(",", "")) for m in MEMCHECK_ERRORS.findall(text)]
            res.details["memcheck_errors"] = sum(counts) if counts else None
            if not self.dry and res.status == "failed" and counts and sum(counts) == 0 and res.rc in (1,):
                res.status, res.note = "ok", "0 memcheck errors; some tests failed under the sanitizer (see the log)"
            elif counts and sum(counts) > 0:
                res.status, res.note = "failed", f"{sum(counts)} memcheck error(s)"

    # -------------------------------------------------------------- files
    def write_files(self, final: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ALL_FILE_NAMES:  # files of another stage from an earlier run into this OUT
            if name not in stage_files(self.stage) and (self.out / name).is_file():
                (self.out / name).unlink()
        self.env_info["finished"] = now_iso() if final else None
        dump_json(self.out / "env.json", self.env_info)
        if self.stage in ("speed", "all"):
            self.write_bench_files()
        if final:
            self.pack_cache()
        elif not (self.out / "gpu-cache.tar.gz").exists():
            gpu_cache.pack(self.work / "empty-cache", self.out / "gpu-cache.tar.gz", SAFE_BYTES,
                           {"stage": self.stage, "note": "placeholder: the stage has not finished"})
        self.file_notes = [n for n in self.file_notes if not n.startswith("logs.tar.gz")]
        self.file_notes += pack_dir(self.logs, self.out / "logs.tar.gz")
        for name in stage_files(self.stage):
            if name not in ("report.md", "report.json"):
                self.fit(self.out / name)
        report = self.report()
        dump_json(self.out / "report.json", report)
        write_atomic(self.out / "report.md", format_report(report))
        self.fit(self.out / "report.json")
        self.fit(self.out / "report.md")

    def fit(self, path: Path) -> None:
        """Keep a file under the cap: archives are rebuilt smaller by their writers, text is cut."""
        if not path.exists() or path.stat().st_size < SAFE_BYTES:
            return
        size = path.stat().st_size
        data = load_json(path) if path.name == "pytest-benchmark.json" else None
        if data and data.get("benchmarks"):  # first drop the raw per-round times, keep the stats
            for b in data["benchmarks"]:
                (b.get("stats") or {}).pop("data", None)
            dump_json(path, {**data, "gpu_check_note": "per-round times left out to stay under 16 MiB"})
            if path.stat().st_size < SAFE_BYTES:
                self.file_notes.append(f"{path.name}: {size:,} B was over the cap; per-round times left out")
                return
        if path.suffix == ".json":
            dump_json(path, {"truncated": True, "original_bytes": size,
                             "note": "over the 16 MiB cap of a returned file; the full file was not kept"})
        elif path.name.endswith(".tar.gz"):
            path.unlink()
            gpu_cache.pack(self.work / "empty-cache", path, SAFE_BYTES, {"note": f"{size:,} B archive over the cap"})
        else:
            data = path.read_bytes()
            write_atomic(path, data[: SAFE_BYTES - 4096] + b"\n\n[gpu-check: cut here to stay under 16 MiB]\n")
        self.file_notes.append(f"{path.name}: {size:,} B was over the cap and was cut")

    def write_bench_files(self) -> None:
        merged = self.work / "merged"
        for name in BENCH_FILES:
            src = merged / name
            if src.exists():
                shutil.copyfile(src, self.out / name)
            elif name.endswith(".json"):
                dump_json(self.out / name, {"note": "no benchmark session has finished in this run; see report.md",
                                            "benchmarks" if name == "pytest-benchmark.json" else "results": []})
            else:
                write_atomic(self.out / name, "# fastmbconv benchmark summary\n\nNo benchmark session has "
                             "finished in this run; see report.md.\n")

    def pack_cache(self) -> None:
        manifest = {"stage": self.stage, "dry": self.dry, "gpu_name": self.env_info.get("nvidia_smi_name"),
                    "torch": self.env_info.get("torch"), "triton": self.env_info.get("triton"),
                    "commit": (self.env_info.get("git") or {}).get("commit")}
        t0 = time.monotonic()
        try:
            info = gpu_cache.pack(self.cache_root, self.out / "gpu-cache.tar.gz", SAFE_BYTES, manifest)
            info["picks"] = gpu_cache.autotune_picks(self.cache_root)[:200]
        except Exception as exc:  # never lose the other files over the cache
            self.notes.append(f"packing the kernel cache failed: {type(exc).__name__}: {exc}")
            info = gpu_cache.pack(self.work / "empty-cache", self.out / "gpu-cache.tar.gz", SAFE_BYTES,
                                  {**manifest, "note": "packing failed; see report.md"})
        info["seconds"] = round(time.monotonic() - t0, 1)
        self.cache["packed"] = info

    # -------------------------------------------------------------- report
    def report(self) -> dict:
        bad = [r for r in self.results if r.status in ("failed",)]
        incomplete = [r for r in self.results if r.status.startswith("skipped (budget") or r.status == "timed out"]
        status = "FAILED" if bad or self.crashed else ("INCOMPLETE" if incomplete else "OK")
        finished = bool(self.env_info.get("finished"))
        planned = [s.name for s in self.steps]
        reached = {r.name for r in self.results}
        return {
            "stage": self.stage, "dry": self.dry, "status": status if finished else f"RUNNING ({status} so far)",
            "started": self.started, "finished": self.env_info.get("finished"),
            "budget_s": self.budget_s, "elapsed_s": round(self.elapsed(), 1), "reserve_s": RESERVE_S,
            "device": self.env_info.get("gpu_name") or ("CPU (dry run)" if self.dry else None),
            "commit": (self.env_info.get("git") or {}).get("commit"),
            "steps": [r.__dict__ for r in self.results],
            "not_reached": [n for n in planned if n not in reached],
            "cache": self.cache, "notes": self.notes, "file_notes": self.file_notes,
            "files": {p.name: p.stat().st_size for p in sorted(self.out.iterdir()) if p.is_file()},
            "warm": load_json(self.logs / "warm.json"),
            "bandwidth": load_json(self.logs / "bandwidth.json"),
            "profile": getattr(self, "profile_data", None),
            "benchmarks": load_json(self.work / "merged" / "targets.json"),
            "crash": self.crashed,
        }


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# ")]
    return (lines[-1] if lines else "")[:200]


def stop(proc: subprocess.Popen) -> None:
    """Interrupt a step's whole process group: SIGINT (pytest then writes its JUnit XML and
    summary), then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------- in-process steps
def preflight(c: Check):
    """Interpreter, packages, tools and the GPU, checked without importing torch."""
    need = {"torch": None, "triton": None, "numpy": None, "pytest": None, "setuptools": "64", "wheel": None, "pip": None}
    if c.stage in ("speed", "all"):
        need["pytest-benchmark"] = None
    found = {name: version_of(name) for name in [*need, "pytest-benchmark", "timm", "torchvision", "matplotlib"]}
    missing = [n for n, lo in need.items() if found[n] is None or (lo and version_tuple(found[n]) < version_tuple(lo))]
    tools = {t: shutil.which(t) for t in ("nvcc", "ncu", "compute-sanitizer", "nvidia-smi", "git", "make")}
    d = {"python": c.py, "python_version": sys.version.split()[0], "packages": found, "tools": tools}
    c.env_info.update(python=c.py, python_version=d["python_version"], packages=found, tools=tools,
                      git=git_info(c.commit_arg), tree_fingerprint=tree_fingerprint(), cpu_count=os.cpu_count())
    if not c.dry:
        smi = quiet(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"])
        if not smi:
            return "failed", {**d, "error": "no NVIDIA GPU answered nvidia-smi; on a machine without a GPU use DRY=1"}
        name, driver, cap, mem = [s.strip() for s in smi.splitlines()[0].split(",")][:4]
        c.env_info.update(gpu_name=name, nvidia_smi_name=name, driver_version=driver, compute_capability=cap,
                          gpu_memory=mem)
        if cap and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            c.install_env["TORCH_CUDA_ARCH_LIST"] = cap  # build the extension for this GPU only
        full = quiet(["nvidia-smi", "-q"])
        if full:
            (c.logs / "nvidia-smi.txt").write_text(full + "\n")
        for t in ("nvcc", "ncu", "compute-sanitizer"):
            c.env_info[f"{t}_version"] = last_line(quiet([t, "--version"]) or "") or None
        if not tools["nvcc"]:
            c.notes.append("nvcc not found: the extension builds without its CUDA kernels (prepare_images GPU tests skip)")
    if missing:
        return "failed", {**d, "error": f"missing Python package(s): {', '.join(missing)} (setuptools must be >= 64). "
                                       "This check never downloads anything: install them on the machine beforehand "
                                       "(or carry wheels) and run it again."}
    return "ok", d


def restore_cache(c: Check):
    if c.cache_from is None:
        c.cache["restored"] = None
        return "ok", {"note": "no --cache-from / CACHE_FROM: starting from what is in " + str(c.cache_root)}
    if not c.cache_from.is_file():
        c.cache["restored"] = {"error": f"{c.cache_from} does not exist"}
        return "failed", c.cache["restored"]
    info = gpu_cache.restore(c.cache_from, c.cache_root, gpu_name=c.env_info.get("nvidia_smi_name"))
    c.cache["restored"] = info
    return "ok", info


def extension_is_stale() -> bool:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    ext = REPO / "fastmbconv" / f"_C{suffix}"
    if not ext.exists():
        return True
    sources = [p for p in (REPO / "csrc").glob("*") if p.is_file()] + [REPO / "setup.py"]
    return max((p.stat().st_mtime for p in sources), default=0) > ext.stat().st_mtime


def installed_checkout() -> Path | str | None:
    """Where this interpreter's fastmbconv is pip-installed from: a folder (editable or local
    install), "" (installed some other way), or None (not installed)."""
    try:
        dist = md.distribution("fastmbconv")
    except md.PackageNotFoundError:
        return None
    url = (json.loads(dist.read_text("direct_url.json") or "{}") or {}).get("url", "")
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).resolve() if url.startswith("file://") else ""


def dry_install(c: Check):
    """Dry mode: with nothing installed (a clean CPU machine), the same offline pip install as
    on a GPU; with this checkout installed, only an in-place build of a stale extension; with
    another checkout installed, never pip (that would re-point the interpreter at this one):
    the in-place build and a warning, as ``fastmbconv.kernels`` will come from the other one."""
    where = installed_checkout()
    if where is None:
        return [c.py, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "-e", "."]
    if where != REPO:
        c.notes.append(f"fastmbconv is pip-installed from {where or 'a non-editable install'}, not from this checkout "
                       f"{REPO}: dry mode does not re-point it, so fastmbconv.kernels comes from there; run "
                       "`pip install -e . --no-build-isolation` here, or use a venv, for a faithful dry run")
    return [c.py, "setup.py", "build_ext", "--inplace"] if extension_is_stale() else None


def probe_env(c: Check):
    """Versions from inside the step environment (imports torch): ``--probe-env``."""
    path = c.logs / "env-probe.json"
    argv = [c.py, str(TOOLS / "gpu_check.py"), "--probe-env", str(path)]
    r = subprocess.run(argv, cwd=REPO, env=c.step_env(), capture_output=True, text=True, timeout=120)
    (c.logs / "env-probe.log").write_text(r.stdout + r.stderr)
    probe = load_json(path, {})
    c.env_info.update(probe)
    if probe.get("warning"):
        c.notes.append(probe["warning"])
    if not c.dry and not probe.get("cuda_available"):
        return "failed", {"error": "torch does not see a CUDA GPU", **probe}
    return ("ok" if r.returncode == 0 else "failed"), probe


def ncu_tables(c: Check):
    bw = (load_json(c.logs / "bandwidth.json") or {}).get("gb_s")
    data = {"copy_bandwidth_gb_s": bw, "providers": {}}
    for provider in ("fused", "eager"):
        src = c.logs / "profile" / f"ncu-{provider}.csv"
        if not src.exists():
            data["providers"][provider] = {"note": "no ncu CSV (dry run, or the ncu step did not run)"}
            continue
        t = ncu_table.table(src.read_text(errors="replace"), bw, f"B0 {provider}, one forward")
        ncu_table.write_csv(t["rows"], c.logs / "profile" / f"ncu-kernels-{provider}.csv")
        (c.logs / "profile" / f"ncu-kernels-{provider}.md").write_text(t["markdown"])
        data["providers"][provider] = {"total": t["total"], "kernels": t["kernels"][:40], "markdown": t["markdown"]}
    c.profile_data = data
    got = [p for p, v in data["providers"].items() if "total" in v]
    if not got:
        return ("ok" if c.dry else "failed"), {"note": "no ncu CSV to read"}
    return "ok", {"providers": got}


# ---------------------------------------------------------------------- the stages
def pytest_cmd(c: Check, name: str, mark: str, where: str = "tests", extra: list[str] | None = None) -> tuple[list, Path]:
    junit = c.logs / f"junit-{name}.xml"
    argv = [c.py, "-m", "pytest", where, "-m", mark, "-p", "gpu_check_plugin", "-p", "no:cacheprovider",
            "-q", "-rfE", "--durations=10", f"--junitxml={junit}", *(extra or [])]
    return argv, junit


def dry_sample(n: int, seconds: float) -> list[str]:
    """A few marked tests, round-robin across modules, and no new test after ``seconds``."""
    return ["--gc-sample", str(n), "--gc-seconds", DRY_SECONDS or str(seconds)]


def test_step(c: Check, name: str, autotune: bool, cap: float) -> Step:
    gpu, junit = pytest_cmd(c, name, GPU_MARK)
    # dry: the interpreter never autotunes, so the second run only proves the plumbing again
    dry, _ = pytest_cmd(c, name, DRY_MARK, extra=dry_sample(2, 5) if autotune else dry_sample(DRY_SAMPLE, 15))
    return Step(name, gpu, dry, cap_s=cap, min_s=30, junit=junit, env={"FASTMBCONV_AUTOTUNE": "1" if autotune else "0"},
                what=f"the CUDA tests (-m '{GPU_MARK}'), autotuning {'on' if autotune else 'off'}")


def memcheck_step(c: Check) -> Step:
    gpu, junit = pytest_cmd(c, "memcheck", MEMCHECK_MARK)
    dry, _ = pytest_cmd(c, "memcheck", f"({DRY_MARK}) and not subprocess", extra=dry_sample(1, 5))
    tool = ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "50"]
    return Step("memcheck", gpu, dry, tool=tool, cap_s=210, min_s=60, junit=junit, needs_tool="compute-sanitizer",
                env={"FASTMBCONV_AUTOTUNE": "0", "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
                what="compute-sanitizer memcheck over the CUDA tests (caching allocator off: exact allocations)")


def warm_step(c: Check) -> Step:
    base = [c.py, str(TOOLS / "b0_forward.py"), "warm", "--json", str(c.logs / "warm.json")]
    return Step("warm", base + ["--device", "cuda", "--dtype", "fp16", "--resolution", "224", "--batches", "256,1"],
                base + ["--device", "cpu", "--dtype", "fp32", "--resolution", "16", "--batches", "1"],
                cap_s=150, min_s=20, what="fused B0 224 fp16 at batch 256 and 1: compile + autotune into the cache")


def bench_step(c: Check, name: str, cap: float, min_s: float = 30, env: dict | None = None) -> Step:
    out = c.work / "bench" / name
    out.mkdir(parents=True, exist_ok=True)
    argv = lambda k: [c.py, "-m", "pytest", "benchmarks", "-k", k, "-p", "gpu_check_plugin", "-p",  # noqa: E731
                      "no:cacheprovider", "-q", "-rfE", f"--benchmark-json={c.work / 'bench' / (name + '.json')}",
                      f"--junitxml={c.logs / ('junit-' + name + '.xml')}"]
    dry = argv(DRY_BENCH_K) if name == "bench-headline" else None
    return Step(name, argv(BENCH_K[name]), dry, cap_s=cap, min_s=min_s, junit=c.logs / f"junit-{name}.xml",
                env={"FASTMBCONV_BENCH_OUT": str(out), **(env or {})}, what=f"pytest benchmarks -k '{BENCH_K[name]}'")


def stage_steps(c: Check) -> list[Step]:
    py, steps = c.py, []
    install = Step("install", [py, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", "-e", "."],
                   dry_install, cap_s=300, min_s=10, needs=("preflight",),
                   dry_note="fastmbconv is installed and its extension is up to date (a foreign install is in the notes)",
                   env=c.install_env,
                   what="offline editable install; builds fastmbconv._C (with its CUDA kernels when nvcc is present)")
    steps += [Step("preflight", fn=preflight, needs=(), essential=True),
              Step("restore-cache", fn=restore_cache, needs=("preflight",), essential=True), install,
              Step("env", fn=probe_env, needs=("preflight",), essential=True)]
    stages = ["verify", "speed", "profile"] if c.stage == "all" else [c.stage]
    if "verify" in stages:
        steps += [test_step(c, "tests-quick", autotune=False, cap=180), warm_step(c),
                  test_step(c, "tests-autotuned", autotune=True, cap=240), memcheck_step(c)]
    if "speed" in stages:
        inductor = c.cache_root / "inductor"
        steps += [warm_step(c), bench_step(c, "bench-headline", 240), bench_step(c, "bench-kernels", 120),
                  bench_step(c, "bench-max-autotune", 300, min_s=60, env={"TRITON_CACHE_DIR": str(inductor / "triton")}),
                  bench_step(c, "bench-models-bs32", 240)]
        if c.study:
            argv = [py, "-m", "fastmbconv.study", "--quick", "--no-progress", "--out", str(c.logs / "study")]
            steps.append(Step("study", argv, argv + ["--device", "cpu", "--models", "b0", "--batches", "1", "--no-plots"],
                              cap_s=300, min_s=60, what="python -m fastmbconv.study --quick"))
        merge = [py, str(TOOLS / "gpu_check.py"), "--merge-bench", str(c.work)]
        steps.append(Step("merge-bench", merge, merge, cap_s=60, needs=("preflight",), essential=True))
    if "profile" in stages:
        prof = c.logs / "profile"
        prof.mkdir(exist_ok=True)
        bw = [py, str(TOOLS / "b0_forward.py"), "bandwidth", "--json", str(c.logs / "bandwidth.json")]
        steps += [warm_step(c), Step("bandwidth", bw + ["--device", "cuda"], bw + ["--device", "cpu"], cap_s=60, min_s=10)]
        for provider in ("fused", "eager"):
            inner = [py, str(TOOLS / "b0_forward.py"), "profile", "--provider", provider, "--nvtx", f"b0_{provider}"]
            tool = ["ncu", "--target-processes", "all", "--nvtx", "--nvtx-include", f"b0_{provider}/",
                    "--clock-control", "none", "--metrics", ",".join(ncu_table.NCU_METRICS),
                    "--csv", "--page", "raw", "--print-units", "base", "--log-file", str(prof / f"ncu-{provider}.csv")]
            steps.append(Step(f"ncu-{provider}", inner + ["--device", "cuda", "--dtype", "fp16", "--resolution", "224",
                                                           "--batch", "256"],
                              inner + ["--device", "cpu", "--dtype", "fp32", "--resolution", "16", "--batch", "1", "--warmup", "1"],
                              tool=tool, cap_s=200, min_s=45, needs_tool="ncu",
                              what=f"ncu over one {provider} B0 forward (224 px, batch 256, fp16)"))
        steps.append(Step("ncu-table", fn=ncu_tables, needs=("preflight",), essential=True))
    seen, unique = set(), []
    for s in steps:  # STAGE=all: one warm-up
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    return unique


# ---------------------------------------------------------------------- report.md
def format_report(r: dict) -> str:
    head = f"# gpu-check {r['stage']}{' (dry run: CPU, no GPU numbers)' if r['dry'] else ''}: {r['status']}"
    out = [head, "",
           f"- device: {r['device'] or 'unknown'}; commit: {r['commit'] or 'unknown'}",
           f"- started {r['started']}, finished {r['finished'] or '(not yet)'}; {r['elapsed_s']} s of a "
           f"{r['budget_s']:.0f} s budget ({r['reserve_s']:.0f} s kept back for writing the files)", ""]
    out += ["## Steps", "", "| step | status | seconds | details |", "|---|---|---:|---|"]
    for s in r["steps"]:
        det = []
        t = s["details"].get("tests") if isinstance(s["details"], dict) else None
        if t:
            det.append(f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped")
        for key, label in (("cache_new_kernels", "kernels compiled"), ("cache_new_autotune_results", "shapes autotuned")):
            if s["details"].get(key):
                det.append(f"+{s['details'][key]} {label}")
        if s["details"].get("memcheck_errors") is not None:
            det.append(f"{s['details']['memcheck_errors']} memcheck errors")
        if s["note"]:
            det.append(s["note"])
        out.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {'; '.join(det)} |")
    if r["not_reached"]:
        out += ["", "Not reached (the run stopped before them): " + ", ".join(r["not_reached"])]
    skipped = [s for s in r["steps"] if s["status"].startswith("skipped") or s["status"] == "timed out"]
    if skipped:
        out += ["", "## Skipped or cut short", ""] + [f"- {s['name']}: {s['status']}{' - ' + s['note'] if s['note'] else ''}"
                                                      for s in skipped]
    recorded = [s for s in r["steps"] if s["would_run"]]
    if recorded:
        out += ["", "## Dry run: commands printed, not run", ""] + [f"- {s['name']}: `{s['would_run']}`" for s in recorded]
    failures = [(s["name"], f) for s in r["steps"] for f in ((s["details"].get("tests") or {}).get("failed") or [])]
    if failures:
        out += ["", "## Test failures", ""] + [f"- [{n}] `{f['test']}`: {f['message']}" for n, f in failures[:40]]
    if r.get("warm"):
        out += ["", "## Warm-up: fused B0, first call (compile + autotune, or cache hits) vs second", "",
                "| batch | res | dtype | first call s | second call s | compile+tune s | rel err vs reference | ok |",
                "|---:|---:|---|---:|---:|---:|---:|---|"]
        for w in r["warm"].get("rows", []):
            out.append(f"| {w['batch']} | {w['resolution']} | {w['dtype']} | {w['first_call_s']:.2f} | "
                       f"{w['second_call_s']:.3f} | {w['compile_and_tune_s']:.2f} | {w['rel_err_vs_reference']:.2e} | {w['ok']} |")
    if r.get("benchmarks"):
        out += ["", "## Benchmarks: targets over this stage's sessions", "", r["benchmarks"].get("markdown", "")]
    prof = r.get("profile")
    if prof:
        out += ["", f"## Kernel profile (ncu), copy bandwidth {ncu_table.fmt(prof['copy_bandwidth_gb_s'], ',.0f')} GB/s", ""]
        for p, v in prof["providers"].items():
            out += [v.get("markdown") or f"**{p}**: {v.get('note')}", ""]
    elif r.get("bandwidth"):
        out += ["", f"Copy bandwidth: {r['bandwidth']['gb_s']:.1f} GB/s ({r['bandwidth']['kind']})"]
    cache = r.get("cache") or {}
    out += ["", "## Kernel cache", ""]
    rest = cache.get("restored")
    if rest:
        out.append(f"- restored from `{rest.get('archive')}` (made by stage {rest.get('made_by_stage') or '?'} on "
                   f"{rest.get('made_on') or 'no GPU'}, {rest.get('created')}): {rest.get('inventory')}; "
                   + "; ".join(rest.get("notes") or []))
    else:
        out.append("- nothing restored (no CACHE_FROM)")
    packed = cache.get("packed")
    if packed:
        inv = packed["inventory"]
        out.append(f"- packed into gpu-cache.tar.gz: {packed['bytes'] / 2**20:.2f} MiB, {packed['contents']}; "
                   f"{inv['kernels']} compiled kernels, {inv['autotune_results']} autotune results, "
                   f"{inv['inductor_files']} inductor files ({packed['seconds']} s)"
                   + ("; " + "; ".join(packed["notes"]) if packed["notes"] else ""))
        picks = packed.get("picks") or []
        if picks:
            out += ["", "| autotuned kernel | key | best config | best ms | configs tried |", "|---|---|---|---:|---:|"]
            out += [f"| {p['kernel']} | `{p['key']}` | `{p['config']}` | {ncu_table.fmt(p['best_ms'], '.4f')} | {p['configs_tried']} |"
                    for p in picks[:60]]
    if r["notes"] or r["file_notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"] + r["file_notes"]]
    if r.get("crash"):
        out += ["", "## gpu-check crashed", "", "```", r["crash"], "```"]
    out += ["", "## Files", "", "| file | bytes |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in r["files"].items()]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- sub-commands run as steps
def probe_env_main(path: str) -> int:
    """Versions as the steps see them (runs in the step environment)."""
    info: dict = {}
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu_name=torch.cuda.get_device_name(0), gpu_capability=f"{p.major}.{p.minor}",
                        sm_count=p.multi_processor_count, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        gpu_count=torch.cuda.device_count())
    except Exception as exc:  # recorded, not raised: env.json must still be written
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    for dist in ("triton", "numpy", "timm", "torchvision", "pytest", "pytest-benchmark", "setuptools"):
        info[dist.replace("-", "_")] = version_of(dist)
    try:
        import fastmbconv

        info["fastmbconv_path"] = str(Path(fastmbconv.__file__).parent)
        try:
            from fastmbconv import _ext

            _ext.load()
            info["extension_built"] = True
            info["extension_cuda_kernels"] = bool(getattr(_ext, "has_cuda_kernels", lambda: None)())
        except Exception as exc:
            info["extension_built"] = False
            info["extension_error"] = f"{type(exc).__name__}: {exc}"[:500]
        from fastmbconv import kernels

        info["kernels_path"] = str(Path(kernels.__file__).parent)
    except Exception as exc:
        info["fastmbconv_error"] = f"{type(exc).__name__}: {exc}"
    elsewhere = [f"{key.split('_')[0]} from {info[key]}" for key in ("fastmbconv_path", "kernels_path")
                 if key in info and not info[key].startswith(str(REPO))]
    if elsewhere:
        info["warning"] = (f"imported {', '.join(elsewhere)}, not from this checkout {REPO} (another checkout is "
                           "pip-installed; `pip install -e .` here, or use a venv, for a faithful run)")
    dump_json(Path(path), info)
    print(json.dumps(info, indent=2))
    return 0


def merge_bench_main(work: str) -> int:
    """Merge the benchmark sessions of a speed stage into one pytest-benchmark JSON and one
    summary.json / summary.md, with the targets evaluated over all of them."""
    work = Path(work)
    order = list(BENCH_K)
    names = sorted((p.stem for p in (work / "bench").glob("*.json")), key=lambda n: order.index(n) if n in order else 99)
    merged_dir = work / "merged"
    merged_dir.mkdir(parents=True, exist_ok=True)
    bench, rows, kernels, bandwidth, sections = None, [], [], {}, []
    for name in names:
        data = load_json(work / "bench" / f"{name}.json")
        if data:
            if bench is None:
                bench = {**data, "benchmarks": [], "gpu_check_sessions": []}
            bench["benchmarks"] += data.get("benchmarks", [])
            bench["gpu_check_sessions"].append({"step": name, "datetime": data.get("datetime"),
                                                "benchmarks": len(data.get("benchmarks", []))})
        summary = load_json(work / "bench" / name / "summary.json") or {}
        rows += summary.get("results", [])
        kernels += summary.get("kernels", [])
        bandwidth.update(summary.get("bandwidth") or {})
        md_path = work / "bench" / name / "summary.md"
        if md_path.exists():
            body = md_path.read_text().split("\n", 1)[-1].strip()
            sections.append(f"## Session `{name}`\n\n{body}\n")
    try:
        from fastmbconv import study

        targets = study.evaluate_targets(rows)
        targets_md = study.format_targets(targets)
    except Exception as exc:  # the merge must not fail on the study package's changes
        targets, targets_md = None, f"(targets not evaluated: {type(exc).__name__}: {exc})"
    dump_json(merged_dir / "pytest-benchmark.json", bench or {"benchmarks": [], "note": "no benchmark session finished"})
    dump_json(merged_dir / "summary.json", {"bandwidth": bandwidth, "results": rows, "targets": targets,
                                            "kernels": kernels, "sessions": names})
    head = (f"# fastmbconv benchmark summary\n\n{len(names)} pytest-benchmark session(s) of one gpu-check speed stage "
            f"({', '.join(names) or 'none'}), minutes apart on one machine. Targets over all of them:\n\n")
    write_atomic(merged_dir / "summary.md", head + targets_md + "\n\n" + "\n".join(sections))
    dump_json(merged_dir / "targets.json", {"targets": targets, "markdown": targets_md, "sessions": names})
    print(f"merged {len(names)} session(s): {', '.join(names) or 'none'}; {len(rows)} model rows, {len(kernels)} kernel rows")
    return 0


# ---------------------------------------------------------------------- checking an OUT folder
def check_out(out: Path, stage: str) -> list[str]:
    """Problems with an OUT folder (empty list: fine): the stage's exact file set, no folders,
    at most 8 files, each under 16 MiB, JSON that parses, archives that open."""
    out = Path(out)
    if not out.is_dir():
        return [f"{out} is not a folder"]
    problems = []
    entries = sorted(out.iterdir())
    names = {p.name for p in entries}
    expected = set(stage_files(stage))
    if names - expected:
        problems.append(f"unexpected entries: {sorted(names - expected)}")
    if expected - names:
        problems.append(f"missing files: {sorted(expected - names)}")
    if len(entries) > MAX_FILES:
        problems.append(f"{len(entries)} entries, more than {MAX_FILES}")
    for p in entries:
        if not p.is_file():
            problems.append(f"{p.name} is not a plain file")
            continue
        if p.stat().st_size >= MAX_BYTES:
            problems.append(f"{p.name} is {p.stat().st_size:,} B, not under 16 MiB")
        if p.suffix == ".json" and load_json(p) is None:
            problems.append(f"{p.name} is not valid JSON")
        if p.name.endswith(".tar.gz"):
            try:
                with tarfile.open(p) as tf:
                    tf.getmembers()
            except (tarfile.TarError, OSError) as exc:
                problems.append(f"{p.name} does not open: {exc}")
    report = load_json(out / "report.json") or {}
    if report and report.get("stage") != stage:
        problems.append(f"report.json is of stage {report.get('stage')!r}, not {stage!r}")
    return problems


# ---------------------------------------------------------------------- main
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

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        c.steps = stage_steps(c)
        c.write_files(final=False)  # the whole file set exists from the first second on
        for step in c.steps:
            c.run(step)
    except BaseException as exc:  # noqa: BLE001 - including KeyboardInterrupt: the files come first
        c.crashed = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if c.current is not None:
            stop(c.current)
    finally:
        try:
            c.write_files(final=True)
        finally:
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
