"""The run of one stage: the ``Step`` and ``Result`` types, and ``Check``, which holds the
budget, gives each step its environment and timeout, runs it and judges its outcome. What a
run writes to OUT is ``report.OutFiles``, which ``Check`` inherits."""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

import gpu_cache

from . import REPO, TOOLS
from .outfiles import DEFAULT_BUDGET_S, RESERVE_S, now_iso
from .report import OutFiles

MEMCHECK_ERRORS = re.compile(r"ERROR SUMMARY:\s*([\d,]+)\s+error")
RACECHECK_ERRORS = re.compile(r"RACECHECK SUMMARY:.*?\(([\d,]+)\s+error")
SANITIZER_STEPS = ("memcheck", "racecheck")
# Under gVisor (kernel 4.4.0) compute-sanitizer refuses the device ("Device not supported", then
# CUDA error 999) and ncu cannot load its profiler ("LibraryNotLoaded"), as seen on the lent
# H200s of that runtime: their steps would only spend the loan failing.
COUNTER_TOOLS = ("compute-sanitizer", "ncu")
TIME_UP = "the step's time is up"  # tools/gpu_check_plugin.py's skip reason under --gc-stop-at


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
    # tests the plugin's --gc-stop-at left unstarted: the step ran out of time, cleanly
    total["not_started"] = sum(TIME_UP in (bad.get("message") or "") for bad in root.iter("skipped"))
    total["failed"] = failed[:40]
    return total


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
    # pytest steps: start no test later than this many seconds before the timeout (--gc-stop-at),
    # so pytest ends by itself and what wraps it (compute-sanitizer's summary) still prints
    soft_stop_s: float | None = None
    dry_note: str = "nothing to run on a CPU; the command is recorded"
    what: str = ""


@dataclass
class Result:
    name: str
    status: str  # ok | failed | timed out | stopped (time) | empty | dry (recorded) | skipped (...)
    seconds: float = 0.0
    rc: int | None = None
    command: str = ""
    would_run: str = ""
    log: str = ""
    details: dict = field(default_factory=dict)
    note: str = ""


class Check(OutFiles):
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

    @staticmethod
    def cap(step: Step) -> float:
        """The step's cap, or ``GPU_CHECK_CAP_<NAME>`` (``bench-models-bs32``: ``..._BENCH_MODELS_BS32``)
        where set: a command that runs one long step alone can give it the whole budget."""
        return float(os.environ.get("GPU_CHECK_CAP_" + step.name.upper().replace("-", "_"), step.cap_s))

    def tool_unusable(self, tool: str) -> str | None:
        """Why ``tool`` cannot run here (None where it can, and always in dry mode)."""
        if self.dry:
            return None
        if not shutil.which(tool):
            return f"{tool} not found on PATH"
        if tool in COUNTER_TOOLS and self.env_info.get("runtime") == "gVisor":
            return f"{tool} cannot reach the GPU under gVisor"
        return None

    # -------------------------------------------------------------- environment of every step
    def step_env(self, extra: dict | None = None) -> dict:
        # Each step's pytest is a session of its own: an xdist worker's variables, inherited when
        # this runs under `pytest -n`, make pytest-benchmark (5.3) turn timing off and write no JSON.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_") and k != "PYTEST_CURRENT_TEST"}
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
        cap = self.cap(step)
        left = cap if step.essential else self.left()
        if left < step.min_s:
            res.status = "skipped (budget)"
            res.note = f"{max(left, 0):.0f} s left of the budget, the step needs at least {step.min_s:.0f} s"
            return
        blocker = self.blocked_by(step)
        if blocker:
            res.status = f"skipped ({blocker} did not succeed)"
            return
        unusable = step.needs_tool and self.tool_unusable(step.needs_tool)
        if unusable:
            res.status = f"skipped ({unusable})"
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
        timeout = min(cap, left)
        if step.soft_stop_s is not None:
            argv = [*argv, "--gc-stop-at", f"{time.time() + max(timeout - step.soft_stop_s, 0.0):.0f}"]
        self.execute(step, res, argv, timeout=timeout)

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
                with children_take_sigint():
                    self.current = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, **OWN_GROUP)
            except OSError as exc:
                res.status, res.note = "failed", f"could not start: {exc}"
                return
            try:
                res.rc = self.current.wait(timeout=timeout)
                timed_out = False
                kill_group(self.current)  # anything the step left running
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
        not_started = ((res.details.get("tests") or {}).get("not_started") or 0) if step.soft_stop_s else 0
        time_up = f"{not_started} test(s) not started: the step's {timeout:.0f} s were up"
        if timed_out:
            res.status = "timed out"
            res.note = f"stopped after {timeout:.0f} s (its share of the budget); what it wrote is kept"
        elif res.rc == 0 and not_started:
            res.status, res.note = "stopped (time)", time_up
        elif res.rc == 0:
            res.status = "ok"
        elif res.rc == 5 and step.junit is not None:
            res.status = "empty" if self.dry else "failed"
            res.note = "no test selected: no test carries the marker(s) yet"
        else:
            res.status = "failed"
            res.note = f"exit code {res.rc}; last line: {last_line(text)}"
        if step.name in SANITIZER_STEPS:
            pattern = RACECHECK_ERRORS if step.name == "racecheck" else MEMCHECK_ERRORS
            body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("# "))  # not the command line
            counts = [int(m.replace(",", "")) for m in pattern.findall(body)]
            res.details[f"{step.name}_errors"] = sum(counts) if counts else None
            passed = (res.details.get("tests") or {}).get("passed", 0)
            if not self.dry and counts and sum(counts) == 0:
                if passed == 0:  # e.g. CUDA itself failing under the sanitizer: 0 errors in nothing that ran
                    res.status = "failed"
                    res.note = f"0 {step.name} errors, but no test passed under the sanitizer (see the log)"
                elif res.status == "failed" and res.rc == 1:
                    res.status = "stopped (time)" if not_started else "ok"
                    res.note = f"0 {step.name} errors; some tests failed under the sanitizer (see the log)" + (
                        f"; {time_up}" if not_started else "")
            elif counts and sum(counts) > 0:
                res.status, res.note = "failed", f"{sum(counts)} {step.name} error(s)"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# ")]
    return (lines[-1] if lines else "")[:200]


# A step runs in a process group of its own (stop() signals all of it) but in this session: the
# device machine ends a command's session when the command returns, so a step can never outlive
# gpu_check.py there (a new session would: setsid processes are left running).
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


@contextlib.contextmanager
def children_take_sigint():
    """While a step starts: a process that a non-interactive shell started in the background
    (``cmd &``) ignores SIGINT, and so would each step it starts, so :func:`stop`'s SIGINT would
    be lost and pytest killed by the SIGTERM without writing its JUnit XML or benchmark JSON.
    SIGINT is caught here for that moment; exec resets a caught signal to its default action."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a step's process group once its leader has exited."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen) -> None:
    """Interrupt a step's whole process group: SIGINT (pytest then writes its JUnit XML and
    summary), then SIGTERM, then SIGKILL; then whatever outlived the leader."""
    for sig, grace in ((signal.SIGINT, 15), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    kill_group(proc)
