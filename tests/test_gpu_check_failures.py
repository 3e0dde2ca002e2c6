"""The GPU check when things go wrong on the GPU machine: a stop during the final write, a
sanitizer that breaks CUDA, a step that leaves processes behind, an ncu run that profiled nothing,
a kernel cache too big for its cap. Each is simulated here; dry mode never reaches these paths."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "tools" / "gpu_check.py").is_file())
sys.path.insert(0, str(REPO / "tools"))

import gpu_cache  # noqa: E402
import gpu_check  # noqa: E402
import ncu_table  # noqa: E402
from gpucheck import check, outfiles, profile_steps, setup_steps, stages, verify_steps  # noqa: E402

from .test_gpu_check_files import _fake_cache  # noqa: E402


@pytest.fixture
def make_check(tmp_path):
    made = []

    def make(stage="verify", dry=False, *args):
        c = check.Check(gpu_check.parse_args(["--stage", stage, "--out", str(tmp_path / f"out-{stage}"), *args]
                                             + (["--dry"] if dry else [])))
        made.append(c)
        return c

    yield make
    for c in made:
        shutil.rmtree(c.work, ignore_errors=True)


def test_a_kill_during_the_cache_pack_leaves_the_final_report_and_no_extra_file(make_check, monkeypatch):
    c = make_check("first", dry=True)
    c.steps = []
    c.write_files(final=False)
    (c.out / "gpu-cache.tar.gz.tmp").write_bytes(b"x")  # an earlier run killed in a write
    (c.out / ".report.md.tmp").write_text("x")

    def killed_while_packing(root, archive, cap, manifest=None, **kw):
        Path(str(archive) + ".tmp").write_bytes(b"half an archive")
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(gpu_cache, "pack", killed_while_packing)
    with pytest.raises(KeyboardInterrupt):
        c.write_files(final=True)
    assert outfiles.check_out(c.out, "first") == []  # no .tmp, 8 files at most
    assert not list(c.out.glob("*.tmp"))
    report = outfiles.load_json(c.out / "report.json")
    assert not report["status"].startswith("RUNNING"), report["status"]


def test_cache_tiers_holding_the_same_files_are_packed_once(tmp_path):
    kdir = tmp_path / "cache" / "triton" / "ABC"
    kdir.mkdir(parents=True)
    (kdir / "k.cubin").write_bytes(os.urandom(50_000))  # no inductor cache, no IR text
    info = gpu_cache.pack(tmp_path / "cache", tmp_path / "a.tar.gz", 20_000, {})
    tried = [n.split(":")[0] for n in info["notes"]]
    assert tried == ["everything"], info["notes"]  # the next two tiers would hold the same files
    assert info["contents"] in ("autotune picks only", "manifest only")


def _memcheck(c, tmp_path, passed: int, errors: int):
    junit = tmp_path / "junit.xml"
    cases = "".join(f'<testcase classname="t" name="ok{i}"/>' for i in range(passed)) + "".join(
        f'<testcase classname="t" name="bad{i}"><error message="CUDA error 999"/></testcase>' for i in range(errors))
    junit.write_text(f'<testsuite tests="{passed + errors}" errors="{errors}" failures="0" skipped="0">{cases}</testsuite>')
    res = check.Result("memcheck", "not run")
    c.results.append(res)
    script = "print('========= ERROR SUMMARY: 0 errors'); raise SystemExit(1)"
    c.execute(check.Step("memcheck", junit=junit), res, [sys.executable, "-c", script], timeout=60)
    return res


@pytest.mark.subprocess
def test_memcheck_is_ok_with_zero_errors_only_if_tests_ran_under_it(make_check, tmp_path):
    c = make_check()
    assert _memcheck(c, tmp_path, passed=0, errors=3).status == "failed"  # the sanitizer broke CUDA
    assert _memcheck(c, tmp_path, passed=5, errors=1).status == "ok"


def _alive(pid: int, wait_s: float = 2.0) -> bool:
    """Whether ``pid`` still runs ``wait_s`` after a kill (a SIGKILL lands asynchronously)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            running = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            running = False
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_step_leaves_no_process_behind(make_check, tmp_path):
    c = make_check()
    pidfile = tmp_path / "pid"
    stubborn = f"(trap '' INT TERM; exec sleep 300) & echo $! > {pidfile}"
    res = check.Result("leaves", "not run")
    c.results.append(res)
    c.execute(check.Step("leaves"), res, ["sh", "-c", stubborn + "; exit 0"], timeout=60)
    assert res.status == "ok" and not _alive(int(pidfile.read_text()))
    # stopped at its cap: the leader exits on SIGINT, a member ignoring it is killed anyway
    pidfile.unlink()
    proc = subprocess.Popen(["sh", "-c", stubborn + "; exec sleep 300"], **check.OWN_GROUP)
    assert os.getsid(proc.pid) == os.getsid(0)  # its own group, not a new session (see check.OWN_GROUP)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.05)
    check.stop(proc)
    assert proc.returncode is not None and not _alive(int(pidfile.read_text()))


NO_KERNELS = "==PROF== Connected to process 7 (python3)\n==WARNING== No kernels were profiled.\n"
NO_CC = textwrap.dedent('''\
    "ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","gpu__time_duration.sum","dram__bytes_read.sum"
    "","","","","","","","","","","nsecond","byte"
    "0","7","python3","h","_dwconv_bn_act_kernel","1","7","(128, 1, 1)","(10, 1, 1)","0","2,000","3,000,000"
    ''')


def test_ncu_metrics_are_read_by_name_and_an_empty_profile_fails(make_check):
    (launch,) = ncu_table.read_launches(NO_CC)  # no "CC" column before the metrics
    assert launch["metrics"]["gpu__time_duration.sum"] == pytest.approx(2e-6)
    assert launch["metrics"]["dram__bytes_read.sum"] == pytest.approx(3e6)
    c = make_check("profile")
    prof = c.logs / "profile"
    prof.mkdir(exist_ok=True)
    (prof / "ncu-fused.csv").write_text(NO_CC)
    assert profile_steps.ncu_tables(c)[0] == "ok"
    (prof / "ncu-eager.csv").write_text(NO_KERNELS)
    status, details = profile_steps.ncu_tables(c)
    assert status == "failed" and "eager" in details["error"]


def test_a_pack_past_its_deadline_tries_only_the_smallest_tier(tmp_path):
    kdir = tmp_path / "cache" / "triton" / "ABC"
    kdir.mkdir(parents=True)
    (kdir / "k.cubin").write_bytes(os.urandom(50_000))
    (kdir / "k.ptx").write_bytes(os.urandom(50_000))
    (kdir / "_k.autotune.json").write_text("{}")
    (tmp_path / "cache" / "inductor").mkdir()
    (tmp_path / "cache" / "inductor" / "entry").write_bytes(os.urandom(50_000))
    info = gpu_cache.pack(tmp_path / "cache", tmp_path / "a.tar.gz", 60_000, {}, deadline_s=0)
    assert [n.split(":")[0] for n in info["notes"]] == [
        "everything", "without the inductor cache", "without inductor and IR text (cubins + metadata + autotune picks)"]
    assert "not tried" in info["notes"][1] and "not tried" in info["notes"][2]
    assert info["contents"] == "autotune picks only"


def test_an_archive_cut_short_is_a_failed_restore_not_a_crash(make_check, tmp_path):
    kdir = tmp_path / "cache" / "triton"
    kdir.mkdir(parents=True)
    (kdir / "k.cubin").write_bytes(os.urandom(100_000))
    gpu_cache.pack(tmp_path / "cache", tmp_path / "whole.tar.gz", 10 << 20, {})
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes((tmp_path / "whole.tar.gz").read_bytes()[:30_000])  # a copy killed half way
    c = make_check()
    c.cache_from = cut
    status, details = setup_steps.restore_cache(c)
    assert status == "failed" and "could not be read" in details["error"]


def test_the_merged_summary_keeps_each_sessions_timing_settings(tmp_path):
    from gpucheck import speed_steps

    flags = {"cudnn_benchmark": True, "cudnn_allow_tf32": False, "matmul_allow_tf32": False}
    for name in ("bench-headline", "bench-kernels"):
        outfiles.dump_json(tmp_path / "bench" / f"{name}.json", {"benchmarks": [], "datetime": "now"})
        outfiles.dump_json(tmp_path / "bench" / name / "summary.json",
                           {"results": [], "kernels": [], "bandwidth": {}, "settings": flags})
    assert speed_steps.merge_bench_main(str(tmp_path)) == 0
    merged = outfiles.load_json(tmp_path / "merged" / "summary.json")
    assert merged["settings"] == {"bench-headline": flags, "bench-kernels": flags}


def test_cache_pack_does_not_compress_what_cannot_fit(tmp_path):
    """A tier past RAW_OVER_CAP times the cap before compression is not tried (each try cost
    seconds of device time); ``picks_only`` tries the picks alone."""
    _fake_cache(tmp_path / "a")
    cap = 300_000 // gpu_cache.RAW_OVER_CAP  # the inductor entry alone is past it
    info = gpu_cache.pack(tmp_path / "a", tmp_path / "x.tar.gz", cap, {})
    assert info["contents"] != "everything" and info["bytes"] < cap
    assert any(n.startswith("everything: not tried") and "before compression" in n for n in info["notes"])
    picks = gpu_cache.pack(tmp_path / "a", tmp_path / "y.tar.gz", 10 * 2**20, {}, picks_only=True)
    assert picks["contents"] == "autotune picks only" and not picks["notes"]
    with tarfile.open(tmp_path / "y.tar.gz") as tf:
        assert [n for n in tf.getnames() if n != gpu_cache.MANIFEST] == ["triton/DEF/_pointwise_gated_kernel.autotune.json"]



@pytest.mark.subprocess
def test_the_sanitizers_select_no_test_that_uses_the_profiler():
    """Under compute-sanitizer, torch.profiler is untried: on a CUDA build it may start CUDA
    tracing (CUPTI) even for CPU activity alone, so a test that uses it could fail there with no
    memory error, and hide real failures among its own. The selection is collected as on a GPU
    machine, where interpreter tests are GPU tests."""
    import ast

    mark = verify_steps.MEMCHECK_MARK.replace("gpu", "(gpu or interpreter)", 1)
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", mark,
                        "-k", verify_steps.SANITIZED_K, *verify_steps.SANITIZED_PATHS],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    ids = {line.split("[")[0] for line in r.stdout.splitlines() if "::" in line}
    assert r.returncode == 0 and len(ids) > 50, r.stdout[-2000:] + r.stderr[-2000:]
    tracing = []
    for path in sorted({i.split("::")[0] for i in ids}):
        source = (REPO / path).read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and f"{path}::{node.name}" in ids:
                body = ast.get_source_segment(source, node)
                if "profiler" in body:
                    tracing.append(f"{path}::{node.name}")
    assert not tracing, f"sanitized tests that use torch.profiler: {tracing}"


def _plan(c) -> dict:
    return {s.name: s for s in stages.stage_steps(c)}


def test_verify_runs_the_sanitizers_after_correctness_and_stops_them_in_time(make_check):
    """memcheck and racecheck come straight after tests-quick (the autotuned run, which rarely
    finishes, comes last); they run the kernel and extension tests round-robin, never the
    compile or CUDA-graph ones, and start no test in their last 45 s, so the sanitizer's summary
    prints before the step's timeout."""
    steps = _plan(make_check("verify"))
    assert list(steps)[4:] == ["tests-quick", "memcheck", "racecheck", "warm", "tests-autotuned"]
    for name, tool in (("memcheck", "memcheck"), ("racecheck", "racecheck")):
        step = steps[name]
        assert step.tool[:3] == ["compute-sanitizer", "--tool", tool] and step.needs_tool == "compute-sanitizer"
        assert step.soft_stop_s == verify_steps.SANITIZER_STOP_S and "tests" not in step.cmd
        k = step.cmd[step.cmd.index("-k") + 1]
        assert "not compile" in k and "not capture" in k
    assert steps["memcheck"].cmd[3:6] == verify_steps.SANITIZED_PATHS and "--gc-interleave" in steps["memcheck"].cmd
    # every file with the extension's CUDA tests is among them; nothing past 2^31 elements (tens
    # of GiB, every access checked)
    extension_gpu = [f"tests/{f.name}" for f in (REPO / "tests").glob("test_prepare*.py")
                     if "pytest.mark.gpu" in f.read_text()]
    assert extension_gpu and set(extension_gpu) <= set(verify_steps.SANITIZED_PATHS)
    assert all((REPO / path).exists() for path in verify_steps.SANITIZED_PATHS)
    assert "not 2_31" in verify_steps.SANITIZED_K
    assert all(s.min_s > s.soft_stop_s for s in steps.values() if s.soft_stop_s)  # never started with no time
    assert steps["racecheck"].cmd[steps["racecheck"].cmd.index("--gc-sample") + 1] == str(verify_steps.RACECHECK_SAMPLE)
    assert steps["tests-autotuned"].soft_stop_s and "--gc-interleave" in steps["tests-autotuned"].cmd


def test_a_step_gets_its_stop_time_and_an_overridden_cap(make_check, monkeypatch):
    c = make_check("verify")
    script = "import sys; print('ARGV', sys.argv[1:])"
    step = check.Step("memcheck", [sys.executable, "-c", script], cap_s=100, min_s=1, needs=(), soft_stop_s=45)
    monkeypatch.setenv("GPU_CHECK_CAP_MEMCHECK", "300")
    assert c.cap(step) == 300 and c.cap(check.Step("bench-models-bs32", cap_s=240)) == 240
    monkeypatch.setenv("GPU_CHECK_CAP_BENCH_MODELS_BS32", "500")
    assert c.cap(check.Step("bench-models-bs32", cap_s=240)) == 500
    before = time.time()
    res = c.run(step)
    log = (c.logs / res.log).read_text()
    stop_at = float(log.split("'--gc-stop-at', '")[1].split("'")[0])
    timeout = min(300, c.left())
    assert before + timeout - 45 - 2 <= stop_at <= time.time() + timeout - 45 + 1


def _racecheck(c, tmp_path, summary: str, rc: int):
    junit = tmp_path / "junit-race.xml"
    junit.write_text('<testsuite tests="2" errors="0" failures="0" skipped="0"><testcase classname="t" name="a"/>'
                     '<testcase classname="t" name="b"/></testsuite>')
    res = check.Result("racecheck", "not run")
    c.results.append(res)
    script = f"print({summary!r}); raise SystemExit({rc})"
    c.execute(check.Step("racecheck", junit=junit), res, [sys.executable, "-c", script], timeout=60)
    return res


def test_racecheck_hazards_fail_the_step(make_check, tmp_path):
    c = make_check()
    bad = _racecheck(c, tmp_path, "========= RACECHECK SUMMARY: 3 hazards displayed (2 errors, 1 warnings)", 86)
    assert bad.status == "failed" and bad.details["racecheck_errors"] == 2 and "2 racecheck error(s)" in bad.note
    good = _racecheck(c, tmp_path, "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)", 0)
    assert good.status == "ok" and good.details["racecheck_errors"] == 0


def _pytest_step(c, tmp_path, name: str, junit_cases: str, out: str, rc: int = 0):
    junit = tmp_path / f"junit-{name}.xml"
    junit.write_text(f'<testsuite tests="3" errors="0" failures="0" skipped="{junit_cases.count("<skipped")}">'
                     f"{junit_cases}</testsuite>")
    res = check.Result(name, "not run")
    c.results.append(res)
    script = f"print({out!r}); raise SystemExit({rc})"
    c.execute(check.Step(name, junit=junit, soft_stop_s=20), res, [sys.executable, "-c", script], timeout=60)
    return res


def test_a_step_its_stop_time_cut_short_is_incomplete_not_ok(make_check, tmp_path):
    """pytest exits 0 after --gc-stop-at skipped the rest: the step is "stopped (time)" and the
    stage INCOMPLETE; a sanitizer under which no test passed is a failure, not 0 errors."""
    c = make_check()
    time_up = '<testcase classname="t" name="c"><skipped message="gpu-check: the step&apos;s time is up"/></testcase>'
    ran = '<testcase classname="t" name="a"/><testcase classname="t" name="b"/>'
    res = _pytest_step(c, tmp_path, "tests-quick", ran + time_up, "2 passed, 1 skipped")
    assert res.status == "stopped (time)" and "1 test(s) not started" in res.note
    other_skip = '<testcase classname="t" name="c"><skipped message="needs a CUDA GPU"/></testcase>'
    assert _pytest_step(c, tmp_path, "tests-autotuned", ran + other_skip, "2 passed").status == "ok"
    c.env_info["finished"] = True
    c.out.mkdir(parents=True, exist_ok=True)
    assert c.report()["status"] == "INCOMPLETE"
    nothing = time_up.replace('"c"', '"a"') + time_up.replace('"c"', '"b"') + time_up
    mem = _pytest_step(c, tmp_path, "memcheck", nothing, "========= ERROR SUMMARY: 0 errors")
    assert mem.status == "failed" and "no test passed" in mem.note
    # a test failed under the sanitizer (pytest exits 1) and the time ran out: 0 errors in part
    # of the tests is not a clean memcheck
    failed = '<testcase classname="t" name="b"><failure message="x"/></testcase>'
    part = _pytest_step(c, tmp_path, "memcheck", ran[:ran.index("<testcase", 1)] + failed + time_up,
                        "========= ERROR SUMMARY: 0 errors", rc=1)
    assert part.status == "stopped (time)" and "1 test(s) not started" in part.note, (part.status, part.note)


def test_under_gvisor_the_sanitizers_and_ncu_are_skipped_not_run(make_check, monkeypatch):
    """gVisor reports kernel 4.4.0; there compute-sanitizer refuses the device and ncu cannot load
    its profiler (as seen on lent H200s of that runtime). Preflight says so, and their steps are
    skipped, not run to fail."""
    c = make_check("verify")
    smi = "NVIDIA H200, 580.159.03, 9.0, 143771 MiB"
    monkeypatch.setattr(setup_steps, "quiet", lambda cmd, timeout=20.0: smi if cmd[0] == "nvidia-smi" else None)
    monkeypatch.setattr(setup_steps.platform, "release", lambda: "4.4.0")
    setup_steps.preflight(c)
    assert c.env_info["runtime"] == "gVisor" and any("gVisor" in n for n in c.notes)
    monkeypatch.setattr(check.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(check.Check, "execute", lambda *a, **k: pytest.fail("a step ran under gVisor"))
    for name in ("memcheck", "racecheck"):
        res = c.run(_plan(c)[name])
        assert res.status == "skipped (compute-sanitizer cannot reach the GPU under gVisor)", res.status
    for name in ("ncu-fused", "ncu-eager"):
        ncu = check.Step(name, ["true"], tool=["ncu"], needs_tool="ncu", cap_s=60, min_s=1, needs=())
        assert c.run(ncu).status == "skipped (ncu cannot reach the GPU under gVisor)"
    # the table then has nothing to read: skipped, not failed (the stage is not FAILED for it)
    assert c.run(check.Step("ncu-table", fn=profile_steps.ncu_tables, needs=())).status == \
        "skipped (no ncu profile: ncu cannot reach the GPU under gVisor)"
    assert c.report()["status"] == "RUNNING (OK so far)"  # no failed step
    for release in ("6.18.44-fc", "4.4.0-210-generic"):  # Firecracker; a real 4.4 kernel is not gVisor
        monkeypatch.setattr(setup_steps.platform, "release", lambda: release)
        setup_steps.preflight(c)
        assert c.env_info["runtime"] is None and c.env_info["kernel_release"] == release


def test_a_stage_whose_steps_cannot_be_built_is_recorded_as_a_crash(tmp_path, monkeypatch):
    """The steps are built once, before the name check; an error there must still reach OUT
    (report FAILED, the traceback in report.md) rather than escape before any file is written."""
    def broken(c):
        raise RuntimeError("no step list: a broken stage table")

    monkeypatch.setattr(gpu_check, "stage_steps", broken)
    out = tmp_path / "out"
    assert gpu_check.main(["--stage", "verify", "--out", str(out), "--dry"]) == 1
    assert outfiles.check_out(out, "verify") == []
    report = outfiles.load_json(out / "report.json")
    assert report["status"] == "FAILED"
    assert "no step list: a broken stage table" in report["crash"]
    assert "no step list" in (out / "report.md").read_text()
