"""How the GPU check judges a step and a stage, on a CPU: a step's status from its child's exit
code and summaries, what runs before a step (selection, budget, its needs), the stage's exit
code, and a stop signal during a step or the final write. Each case is one that, misjudged,
would make a failure read as success or spend a GPU loan on nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "tools" / "gpu_check.py").is_file())
sys.path.insert(0, str(REPO / "tools"))

import gpu_cache  # noqa: E402
import gpu_check  # noqa: E402
from gpucheck import check, outfiles, profile_steps, setup_steps  # noqa: E402

from .test_gpu_check_failures import _alive, make_check  # noqa: E402,F401


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_CACHE_DIR", str(tmp_path / "cache"))


def _exec(c, name: str, script: str, junit: Path | None = None) -> check.Result:
    res = check.Result(name, "not run")
    c.results.append(res)
    c.execute(check.Step(name, junit=junit), res, [sys.executable, "-c", script], timeout=60)
    return res


# ---------------------------------------------------------------------- a step's status from its child
def test_a_step_fails_on_a_nonzero_exit_and_on_an_empty_selection_on_a_gpu(make_check, tmp_path):
    c = make_check()
    assert _exec(c, "x", "raise SystemExit(0)").status == "ok"
    bad = _exec(c, "x", "print('boom'); raise SystemExit(3)")
    assert bad.status == "failed" and "exit code 3" in bad.note and "boom" in bad.note
    # pytest's 5 (no test collected): on a GPU the marker selected nothing, which is no pass
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite tests="0" errors="0" failures="0" skipped="0"></testsuite>')
    assert _exec(c, "tests-quick", "raise SystemExit(5)", junit).status == "failed"
    assert _exec(make_check("verify", True), "tests-quick", "raise SystemExit(5)", junit).status == "empty"
    res = check.Result("x", "not run")
    c.results.append(res)
    c.execute(check.Step("x"), res, [str(tmp_path / "no-such-program")], timeout=60)
    assert res.status == "failed" and "could not start" in res.note


def test_a_sanitizer_summary_forgives_failed_tests_only_not_a_crashed_pytest(make_check, tmp_path):
    """0 memcheck errors excuse pytest's exit 1 (tests failed under the sanitizer); an
    interrupted or crashed pytest (2, 3, a signal) is still a failure; any error fails the step."""
    c = make_check()
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuite tests="2" errors="0" failures="1" skipped="0"><testcase classname="t" name="a"/>'
                     '<testcase classname="t" name="b"><failure message="x"/></testcase></testsuite>')
    zero = "print('========= ERROR SUMMARY: 0 errors'); raise SystemExit({})"
    assert _exec(c, "memcheck", zero.format(1), junit).status == "ok"
    for rc in (2, 3):
        res = _exec(c, "memcheck", zero.format(rc), junit)
        assert res.status == "failed" and res.details["memcheck_errors"] == 0, (rc, res.status)
    one = _exec(c, "memcheck", "print('========= ERROR SUMMARY: 1 error')", junit)
    assert one.status == "failed" and one.details["memcheck_errors"] == 1 and "1 memcheck error(s)" in one.note


def test_stop_gives_a_step_time_to_finish_after_sigint(tmp_path):
    """pytest writes its JUnit XML and benchmark JSON on SIGINT, which takes it a moment; a
    SIGTERM too soon would lose them."""
    done, ready = tmp_path / "done", tmp_path / "ready"
    script = (f"import signal, sys, time\n"
              f"def wrote(*a):\n    time.sleep(1.5); open({str(done)!r}, 'w').write('xml'); sys.exit(2)\n"
              f"signal.signal(signal.SIGINT, wrote)\nopen({str(ready)!r}, 'w').write('1')\ntime.sleep(60)\n")
    with check.children_take_sigint():
        proc = subprocess.Popen([sys.executable, "-c", script], **check.OWN_GROUP)
    for _ in range(200):
        if ready.exists():
            break
        time.sleep(0.05)
    check.stop(proc)
    assert done.exists() and proc.returncode == 2


# ---------------------------------------------------------------------- before a step runs
def test_selection_budget_and_needs_decide_before_a_step_runs(make_check, monkeypatch):
    c = make_check("verify", False, "--only", "tests-quick")
    ran = lambda c: ("ok", {})  # noqa: E731
    # --only names other steps: an essential step (preflight, merge-bench) runs all the same
    assert c.run(check.Step("merge-bench", fn=ran, needs=(), essential=True)).status == "ok"
    assert c.run(check.Step("warm", fn=ran, needs=())).status.startswith("skipped (not selected")
    c.only = set()
    # a step whose need failed is not run: a failed preflight must not spend the loan
    c.results.append(check.Result("preflight", "failed"))
    monkeypatch.setattr(check.Check, "execute", lambda *a, **k: pytest.fail("ran after its need failed"))
    assert c.run(check.Step("warm", ["true"], needs=("preflight",))).status == "skipped (preflight did not succeed)"
    c.results.clear()
    # a step's timeout is its cap cut to what is left of the budget less the reserve
    seen = []
    monkeypatch.setattr(check.Check, "execute", lambda self, step, res, argv, timeout: seen.append(timeout))
    c.budget_s = outfiles.RESERVE_S + 100
    assert c.run(check.Step("warm", ["true"], cap_s=300, min_s=10, needs=())).status == "not run"
    assert 80 < seen[0] <= 100, seen
    c.budget_s = outfiles.RESERVE_S + 12
    skipped = c.run(check.Step("warm", ["true"], cap_s=300, min_s=15, needs=()))
    assert skipped.status == "skipped (budget)" and len(seen) == 1
    assert make_check("all").budget_s == 3 * outfiles.DEFAULT_BUDGET_S


def test_a_gpu_check_error_in_a_step_is_a_failure_and_out_is_refreshed(make_check):
    c = make_check()
    c.steps = [check.Step("broken"), check.Step("after")]

    def broken(c):
        raise RuntimeError("a bug in the check")

    res = c.run(check.Step("broken", fn=broken, needs=()))
    assert res.status == "failed" and "a bug in the check" in res.note
    assert list(c.logs.glob("*broken.error.txt"))
    report = outfiles.load_json(c.out / "report.json")  # written after the step, before any other
    assert [s["name"] for s in report["steps"]] == ["broken"] and report["status"] == "RUNNING (FAILED so far)"
    assert report["not_reached"] == ["after"]


# ---------------------------------------------------------------------- setup steps that must fail
def test_setup_steps_fail_without_a_gpu_packages_cache_or_cuda(make_check, tmp_path, monkeypatch):
    monkeypatch.setattr(setup_steps, "tree_fingerprint", lambda: "0" * 16)
    c = make_check()
    monkeypatch.setattr(setup_steps, "quiet", lambda cmd, timeout=20.0: None)  # no nvidia-smi
    status, details = setup_steps.preflight(c)
    assert status == "failed" and "nvidia-smi" in details["error"]
    d = make_check("verify", True)
    real = setup_steps.version_of
    floor = setup_steps.setuptools_floor()  # pyproject's; just below it fails, at it passes
    for old, missing in (({"wheel": None}, "wheel"), ({"setuptools": f"{int(floor) - 1}.2"}, "setuptools")):
        monkeypatch.setattr(setup_steps, "version_of", lambda n, old=old: old[n] if n in old else real(n))
        status, details = setup_steps.preflight(d)
        assert status == "failed" and f"missing Python package(s): {missing}" in details["error"]
    monkeypatch.setattr(setup_steps, "version_of", lambda n: f"{floor}.0" if n == "setuptools" else real(n))
    assert setup_steps.preflight(d)[0] == "ok"
    c.cache_from = tmp_path / "misspelt.tar.gz"
    status, details = setup_steps.restore_cache(c)
    assert status == "failed" and "does not exist" in details["error"]

    def probe(rc, info):
        def run(argv, **kw):
            outfiles.dump_json(Path(argv[-1]), info)
            return subprocess.CompletedProcess(argv, rc, "", "")
        monkeypatch.setattr(setup_steps.subprocess, "run", run)

    probe(0, {"cuda_available": False})
    status, details = setup_steps.probe_env(c)
    assert status == "failed" and "does not see a CUDA GPU" in details["error"]
    probe(0, {"cuda_available": True})
    assert setup_steps.probe_env(c)[0] == "ok"
    probe(1, {"cuda_available": True})
    assert setup_steps.probe_env(c)[0] == "failed"


def test_no_ncu_csv_on_a_gpu_is_a_failure(make_check, monkeypatch):
    c = make_check("profile")
    monkeypatch.setattr(check.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    status, details = profile_steps.ncu_tables(c)
    assert status == "failed" and "no ncu CSV" in details["note"]
    assert profile_steps.ncu_tables(make_check("profile", True))[0] == "ok"


# ---------------------------------------------------------------------- the stage: exit code and signals
def _main(tmp_path, monkeypatch, *steps: check.Step) -> tuple[int, dict]:
    monkeypatch.setattr(gpu_check, "stage_steps", lambda c: list(steps))
    out = tmp_path / "out"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        rc = gpu_check.main(["--stage", "verify", "--out", str(out), "--dry"])
    except KeyboardInterrupt as exc:  # escaped the check: the files may be half written
        pytest.fail(f"gpu_check.main let {exc!r} escape")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return rc, outfiles.load_json(out / "report.json")


def test_exit_code_of_a_stage(tmp_path, monkeypatch):
    """0 for OK and INCOMPLETE, 1 for FAILED, 2 for a failed preflight, 3 for an OUT that breaks
    its limits; the whole file set is in OUT before the first step."""
    def files_first(c):
        return ("ok" if outfiles.check_out(c.out, "verify") == [] else "failed"), {}

    preflight = check.Step("preflight", fn=files_first, needs=(), essential=True)
    rc, report = _main(tmp_path, monkeypatch, preflight)
    assert (rc, report["status"]) == (0, "OK")
    failed = check.Step("preflight", fn=lambda c: ("failed", {"error": "no GPU"}), needs=(), essential=True)
    after = check.Step("warm", ["true"], ["true"], needs=("preflight",))
    rc, report = _main(tmp_path, monkeypatch, failed, after)
    assert rc == 2 and report["steps"][1]["status"] == "skipped (preflight did not succeed)"
    ninth = check.Step("ninth", fn=lambda c: (c.out / "extra.bin").write_bytes(b"x") and ("ok", {}), needs=())
    assert _main(tmp_path, monkeypatch, ninth)[0] == 3


def test_a_sigterm_during_a_step_stops_it_and_is_recorded(tmp_path, monkeypatch):
    """The loan's end (SIGTERM) mid-step: the step's process group is stopped, the stage reads
    FAILED with the signal in report.md, not OK, and OUT holds the whole file set."""
    pidfile = tmp_path / "pid"
    script = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    step = check.Step("sleepy", [sys.executable, "-c", script], [sys.executable, "-c", script], cap_s=20, needs=())
    signalled = []
    original = signal.signal(signal.SIGTERM, lambda *a: signalled.append(a))  # the check must put its own in place

    def term_when_started():
        for _ in range(400):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=term_when_started, daemon=True).start()
    try:
        rc, report = _main(tmp_path, monkeypatch, step)
        assert not signalled and rc == 1 and report["status"] == "FAILED", (rc, report["status"], signalled)
        assert "signal 15" in report["crash"] and outfiles.check_out(tmp_path / "out", "verify") == []
        assert not _alive(int(pidfile.read_text()))
    finally:
        signal.signal(signal.SIGTERM, original)
        if pidfile.exists() and _alive(int(pidfile.read_text()), 0):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_the_final_write_ignores_stop_signals_and_packs_under_a_deadline(tmp_path, monkeypatch):
    real_pack, seen = gpu_cache.pack, []

    def pack(root, archive, cap, manifest=None, deadline_s=None, picks_only=False):
        if deadline_s is not None or Path(root).resolve() == (tmp_path / "cache").resolve():  # the final pack
            seen.append(deadline_s)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        return real_pack(root, archive, cap, manifest, deadline_s=deadline_s, picks_only=picks_only)

    monkeypatch.setattr(gpu_cache, "pack", pack)
    rc, report = _main(tmp_path, monkeypatch, check.Step("preflight", fn=lambda c: ("ok", {}), needs=(), essential=True))
    assert (rc, report["status"], report["crash"]) == (0, "OK", None)
    assert seen == [outfiles.PACK_DEADLINE_S] and outfiles.PACK_DEADLINE_S <= outfiles.RESERVE_S


# ---------------------------------------------------------------------- what a write leaves in OUT
def test_out_loses_another_stages_files_and_oversized_ones_are_cut(make_check, monkeypatch):
    c = make_check("speed")
    c.steps = []
    c.out.mkdir(parents=True)
    merged = c.work / "merged"
    merged.mkdir()
    row = {"name": "b", "stats": {"median": 1.0, "data": [0.001] * 200_000}}
    big = json.dumps({"benchmarks": [dict(row, name=f"b{i}") for i in range(13)]})
    assert len(big) > outfiles.SAFE_BYTES
    (merged / "pytest-benchmark.json").write_text(big)
    c.write_files(final=False)
    bench = outfiles.load_json(c.out / "pytest-benchmark.json")
    assert (c.out / "pytest-benchmark.json").stat().st_size < outfiles.SAFE_BYTES
    assert [b["stats"] for b in bench["benchmarks"]][0] == {"median": 1.0} and any("per-round" in n for n in c.file_notes)
    v = make_check("verify")
    v.steps = []
    v.out.mkdir(parents=True)
    for name in outfiles.BENCH_FILES:  # an earlier speed run into the same OUT
        (v.out / name).write_text("{}")
    v.write_files(final=False)
    assert outfiles.check_out(v.out, "verify") == []

    def unreadable(root):
        raise OSError("a cache file vanished")

    monkeypatch.setattr(gpu_cache, "autotune_picks", unreadable)  # packing the cache fails
    v.write_files(final=True)
    assert outfiles.check_out(v.out, "verify") == [] and any("packing the kernel cache failed" in n for n in v.notes)
