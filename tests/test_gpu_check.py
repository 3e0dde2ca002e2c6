"""The GPU check stages (``tools/gpu_check.py``, ``make gpu-check``) on a CPU: the dry mode's
file set and limits, each stage's plan and budget stop, steps cut off by their time, the install
and the recorded commit. Nothing here needs a GPU (the files it brings back:
test_gpu_check_files.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

REPO = next(p for p in Path(__file__).resolve().parents if (p / "tools" / "gpu_check.py").is_file())
sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402
from gpucheck import check, outfiles, setup_steps, stages  # noqa: E402


# ---------------------------------------------------------------------- dry stages, end to end
def _dry(stage: str, out: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    e = {k: v for k, v in os.environ.items() if k not in ("BUDGET_S", "CACHE_FROM", "GPU_CHECK_ONLY", "GPU_CHECK_SKIP")}
    e.update(GPU_CHECK_CACHE_DIR=str(out.parent / "cache"), GPU_CHECK_DRY_SAMPLE="2", GPU_CHECK_DRY_SECONDS="1",
             **(env or {}))
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--stage", stage, "--dry",
                        "--out", str(out), *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=400)
    report = json.loads((out / "report.json").read_text())
    assert outfiles.check_out(out, stage) == [], r.stdout[-3000:] + r.stderr[-3000:]
    assert len(list(out.iterdir())) <= 8
    return r, {s["name"]: s for s in report["steps"]}


@pytest.mark.subprocess
def test_dry_verify_writes_the_file_set_and_prints_the_gpu_commands(tmp_path):
    # Kept short (.ci/run runs the whole dry verify): no install (dry mode only builds a stale
    # extension), no warm-up (the fused B0 under the interpreter), no second test run (the same
    # plumbing as the first), and a marker expression nothing matches (a registered marker:
    # pytest 9.2 refuses unknown ones in -m), so the pytest runs collect and
    # write their JUnit XML without spending half a minute in an interpreted whole-model test.
    r, steps = _dry("verify", tmp_path / "out", "--skip", "install,warm,tests-autotuned",
                    env={"GPU_CHECK_DRY_MARK": "gpu and not gpu"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert steps["tests-quick"]["status"] in ("ok", "empty")
    assert " -m gpu " in steps["tests-quick"]["would_run"]
    assert steps["memcheck"]["would_run"].startswith("compute-sanitizer --tool memcheck")
    assert "--report-api-errors no" in steps["memcheck"]["would_run"]  # counted: memory errors only
    assert "-m 'gpu and not slow and not subprocess'" in steps["memcheck"]["would_run"]
    assert steps["install"]["status"].startswith("skipped (not selected")
    assert steps["memcheck"]["status"] in ("ok", "empty")
    env = json.loads((tmp_path / "out" / "env.json").read_text())
    assert env["torch"] and env["tree_fingerprint"] and env["stage"] == "verify"
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tf:
        names = tf.getnames()
    assert "env-probe.json" in names and any(n.endswith("tests-quick.log") for n in names)
    assert "junit-tests-quick.xml" in names and "junit-memcheck.xml" in names


@pytest.mark.parametrize("flag", ["--only", "--skip"])
def test_a_misspelt_step_name_stops_the_check_before_any_step(tmp_path, capsys, flag):
    """A name no step has would select nothing (--only) or skip nothing (--skip) in silence."""
    out = tmp_path / "out"
    assert gpu_check.main(["--stage", "verify", "--out", str(out), "--dry", flag, "install,tests_quick,memchek"]) == 2
    err = capsys.readouterr().err
    assert "memchek, tests_quick" in err and "tests-quick" in err
    assert not out.exists()


@pytest.mark.subprocess
def test_dry_profile_strips_ncu_and_records_its_command(tmp_path):
    """The profile stage on a CPU: ncu's commands recorded, the host profile run (interpreted)."""
    r, steps = _dry("profile", tmp_path / "out", "--skip", "install,warm,ncu-fused")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    eager = steps["ncu-eager"]
    assert eager["status"] == "ok" and eager["would_run"].startswith("ncu --target-processes all --nvtx")
    assert "--nvtx-include b0_eager/" in eager["would_run"] and "--page raw" in eager["would_run"]
    assert steps["bandwidth"]["status"] == "ok" and steps["ncu-table"]["status"] == "ok"
    assert steps["host-profile"]["status"] == "ok", steps["host-profile"]
    assert "--batch 1" in steps["host-profile"]["would_run"] and "--device cuda" in steps["host-profile"]["would_run"]
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tf:
        host = json.load(tf.extractfile("profile/host.json"))
    assert min(host["fused_ms"], host["fused_launches_recorded_ms"], host["eager_ms"]) > 0, host
    assert host["launches_per_fused_forward"] > 0 and len(host["profile_by_own_time"]) == 5, host
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no ncu CSV" in report and "Dry run: commands printed, not run" in report


@pytest.mark.subprocess
def test_budget_stop_reports_skipped_steps_and_still_writes_every_file(tmp_path):
    r, steps = _dry("speed", tmp_path / "out", env={"BUDGET_S": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("install", "warm", "bench-headline", "bench-kernels", "bench-max-autotune", "bench-models-bs32"):
        assert steps[name]["status"] == "skipped (budget)", (name, steps[name])
    assert steps["preflight"]["status"] == "ok" and steps["merge-bench"]["status"] == "ok"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "INCOMPLETE" and report["budget_s"] == 1
    assert "## Skipped or cut short" in (tmp_path / "out" / "report.md").read_text()
    bench = json.loads((tmp_path / "out" / "pytest-benchmark.json").read_text())
    assert bench["benchmarks"] == []


# ---------------------------------------------------------------------- the first stage: one command per loan
def _planned(stage: str, tmp_path: Path, *args: str) -> dict:
    c = check.Check(gpu_check.parse_args(["--stage", stage, "--out", str(tmp_path / stage), *args]))
    try:
        return {s.name: s for s in stages.stage_steps(c)}
    finally:
        shutil.rmtree(c.work, ignore_errors=True)


def test_first_stage_is_correctness_then_headline_speed_within_its_budget(tmp_path):
    steps = _planned("first", tmp_path)
    own = ["tests-quick", "warm", "bench-headline", "merge-bench"]
    assert list(steps) == ["preflight", "restore-cache", "install", "env", *own]
    assert steps["tests-quick"].env["FASTMBCONV_AUTOTUNE"] == "0" and "gpu and not slow" in steps["tests-quick"].cmd
    # several hundred kernel compiles do not fit the cap on one process: pytest-xdist (on the GPU
    # image) spreads them in small chunks, the tests written for a GPU first; a hung test dumps its stack
    cmd = " ".join(steps["tests-quick"].cmd)
    assert "faulthandler_timeout=120" in cmd and "--gc-gpu-first" in cmd and ("--dist load " in cmd) == bool(
        find_spec("xdist"))
    assert " -m gpu -p " in " ".join(_planned("verify", tmp_path)["tests-quick"].cmd)  # verify: the slow ones too
    assert "-n " not in " ".join(steps["tests-quick"].dry)  # dry runs stay one sampled process
    autotuned = " ".join(_planned("verify", tmp_path)["tests-autotuned"].cmd)
    assert "faulthandler_timeout" in autotuned and "-n " not in autotuned  # tuning times kernels alone
    assert "not compile_max_autotune" in " ".join(steps["bench-headline"].cmd)
    assert {n: steps[n].cap_s for n in own[:3]} == stages.FIRST_CAPS
    # on time every step gets its whole cap: the caps plus the setup allowance fit the budget less its reserve
    assert stages.SETUP_S + sum(steps[n].cap_s for n in own[:3]) <= outfiles.DEFAULT_BUDGET_S - outfiles.RESERVE_S
    assert all(steps[n].cap_s >= steps[n].min_s for n in own) and steps["merge-bench"].essential
    assert outfiles.stage_files("first") == outfiles.stage_files("speed")
    assert len(outfiles.stage_files("first")) == outfiles.MAX_FILES


def test_install_retries_without_the_cuda_kernels(tmp_path):
    """A CUDA extension that fails to build on the loaned machine must not take the Triton
    kernels' tests with it: the install runs once more with FASTMBCONV_NO_CUDA=1."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$FASTMBCONV_NO_CUDA $*" >> "$(dirname "$0")/calls"\n'
                    '[ "$FASTMBCONV_NO_CUDA" = 1 ]\n')
    fake.chmod(0o755)
    run = subprocess.run(setup_steps.install_cmd(str(fake)), capture_output=True, text=True, env={**os.environ, "FASTMBCONV_NO_CUDA": ""})
    calls = (tmp_path / "calls").read_text().splitlines()
    assert run.returncode == 0 and "retrying without the CUDA kernels" in run.stderr
    assert [c.split(" ", 1)[0] for c in calls] == ["", "1"] and calls[1].endswith("--no-deps -e .")


def test_other_stages_keep_their_caps_and_all_is_verify_speed_profile(tmp_path):
    verify, profile, every = (_planned(s, tmp_path) for s in ("verify", "profile", "all"))
    speed = _planned("speed", tmp_path, "--study")  # all runs the study
    assert (verify["tests-quick"].cap_s, verify["warm"].cap_s, speed["bench-headline"].cap_s) == (180, 150, 240)
    assert list(every) == list(dict.fromkeys([*verify, *speed, *profile]))


@pytest.mark.subprocess
def test_dry_first_runs_its_steps_in_order_and_returns_the_bench_files(tmp_path):
    # Kept short like the dry verify: no install, no warm-up, a test run that selects nothing.
    r, steps = _dry("first", tmp_path / "out", "--skip", "install,warm",
                    env={"GPU_CHECK_DRY_MARK": "gpu and not gpu"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list(steps)[4:] == ["tests-quick", "warm", "bench-headline", "merge-bench"]
    assert " -m 'gpu and not slow' " in steps["tests-quick"]["would_run"]
    assert steps["tests-quick"]["status"] in ("ok", "empty")
    assert steps["bench-headline"]["status"] == "ok" and steps["merge-bench"]["status"] == "ok"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["sessions"] == ["bench-headline"] and summary["results"]
    env = json.loads((tmp_path / "out" / "env.json").read_text())
    assert env["stage"] == "first" and env["packages"]["pytest-benchmark"] and "pillow" in env["packages"]


@pytest.mark.subprocess
def test_bench_headline_runs_every_row_a_target_reads_before_the_cold_compiles(tmp_path):
    """The headline step's cases, collected with its own -k and --gc-last (the order it runs
    them): the rows the speed targets read (evaluate_targets) come before the fused path's
    variants, the host-time cases and compile_fused, whose cold compiles and tuning could
    otherwise spend the step's time first."""
    cmd = _planned("speed", tmp_path)["bench-headline"].cmd
    argv = [sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q", "-p", "gpu_check_plugin", "-p",
            "no:cacheprovider", *cmd[cmd.index("-k"):cmd.index("-k") + 2], *cmd[cmd.index("--gc-last"):][:2]]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO / "tools")})
    ids = [line.split("::")[-1] for line in r.stdout.splitlines() if "::" in line]
    assert r.returncode == 0 and ids, r.stdout[-2000:] + r.stderr[-2000:]
    read = ["test_model[gpu-b0-224-bs256-fp16-fused]", "test_model[gpu-b0-224-bs256-fp16-eager]",
            "test_model[gpu-resnet50-224-bs256-fp16-eager]", "test_model[gpu-b0-224-bs1-fp16-cudagraph_fused]",
            "test_model[gpu-b0-224-bs1-fp16-compile_reduce_overhead]"]
    run_later = ("fused_separate", "fused_torch_1x1", "fused_cudnn_dw", "compile_fused")  # providers
    later = [i for i, name in enumerate(ids) if name.startswith("test_host_time_per_call")
             or any(f"-{p}]" in name for p in run_later)]
    assert set(read) <= set(ids) and len(later) == 13, ids
    assert max(ids.index(name) for name in read) < min(later), ids


# ---------------------------------------------------------------------- from committed files to the README
def test_render_results_rebuilds_table_from_pytest_benchmark_json(tmp_path):
    import render_results

    def case(provider, batch, median):
        info = {"provider": provider, "model": "efficientnet_b0", "resolution": 224, "batch": batch, "dtype": "fp16",
                "device": "cuda", "device_name": "Test GPU", "flops": 4e8 * batch, "gflops_per_image": 0.4,
                "tflops": 4e8 * batch / median / 1e12, "images_per_s": batch / median,
                "floor_fraction_layer_fused": 0.25 if provider == "fused" else None}
        stats = {"median": median, "q1": median * 0.99, "q3": median * 1.01, "iqr": median * 0.02, "min": median * 0.98,
                 "rounds": 30}
        return {"name": f"test_model[gpu-b0-224-bs{batch}-fp16-{provider}]", "extra_info": info, "stats": stats}

    kernel = {"name": "test_kernel[x]", "extra_info": {"op": "dwconv_bn_act"}, "stats": {"median": 1e-5}}
    bench = {"datetime": "2026-01-01T00:00:00", "benchmarks": [case("eager", 256, 0.040), case("fused", 256, 0.016),
                                                                 kernel]}
    (tmp_path / "pytest-benchmark.json").write_text(json.dumps(bench))
    (tmp_path / "summary.json").write_text(json.dumps({"bandwidth": {"cuda": {
        "gb_s": 3000.0, "kind": "device copy (HBM)", "method": "test", "device": "Test GPU"}}}))
    assert render_results.main([str(tmp_path), "--no-plots"]) == 0
    table = (tmp_path / "README-table.md").read_text()
    assert "| b0 | 256 | fused | 16.000 | 16,000 | 2.50x | 0.25 |" in table
    assert "| b0 | 256 | eager | 40.000 | 6,400 | 1.00x | — |" in table
    assert "3,000 GB/s" in table and (tmp_path / "study" / "results.md").exists()
    again = json.loads((tmp_path / "study" / "results.json").read_text())  # the next render starts from it
    assert len(again["rows"]) == 2


@pytest.mark.subprocess
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_step_over_its_time_is_interrupted_and_pytest_still_writes_junit(tmp_path, sigint):
    """``ignored``: the check started in the background by a non-interactive shell (``cmd &``),
    which ignores SIGINT in it and, unless the check says otherwise, in every step it starts."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler)
    try:
        _interrupt_a_sleepy_step(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_a_sleepy_step(tmp_path):
    (tmp_path / "test_sleepy.py").write_text(
        "import time\n\ndef test_fast():\n    pass\n\ndef test_sleepy():\n    time.sleep(60)\n")
    c = check.Check(gpu_check.parse_args(["--stage", "verify", "--out", str(tmp_path / "out"), "--dry"]))
    try:
        junit = c.logs / "junit-sleepy.xml"
        step = check.Step("sleepy", junit=junit)
        res = check.Result("sleepy", "not run")
        c.results.append(res)
        argv = [sys.executable, "-m", "pytest", str(tmp_path / "test_sleepy.py"), "-p", "no:cacheprovider",
                "--rootdir", str(tmp_path), "-c", os.devnull, f"--junitxml={junit}"]
        # time for the child to start and pass test_fast on a loaded 2-core machine (8 s was not)
        c.execute(step, res, argv, timeout=15)
        assert res.status == "timed out" and "stopped after 15 s" in res.note
        assert res.seconds < 15 + 10  # SIGINT was enough: no 15 s grace before SIGTERM
        tests = res.details["tests"]
        assert tests is not None and tests["passed"] == 1, tests  # the JUnit XML of the interrupted session
    finally:
        shutil.rmtree(c.work, ignore_errors=True)


def test_a_benchmark_step_cut_off_keeps_its_finished_rows(tmp_path):
    """A step's timeout interrupts a benchmark before its first round: the plugin drops that
    case, so pytest-benchmark still writes the JSON of the finished one (without it, its finish
    raised on the empty case, leaving a 0-byte JSON and no JUnit XML)."""
    (tmp_path / "test_bench.py").write_text(
        "import time\n\ndef test_quick(benchmark):\n    benchmark(sum, range(10))\n\n"
        "def test_slow(benchmark):\n    benchmark.pedantic(time.sleep, args=(60,), rounds=1)\n")
    c = check.Check(gpu_check.parse_args(["--stage", "speed", "--out", str(tmp_path / "out"), "--dry"]))
    try:
        junit, bench_json = c.logs / "junit-bench.xml", tmp_path / "bench.json"
        res = check.Result("bench", "not run")
        c.results.append(res)
        argv = [sys.executable, "-m", "pytest", str(tmp_path / "test_bench.py"), "-p", "no:cacheprovider",
                "-p", "gpu_check_plugin", "--rootdir", str(tmp_path), "-c", os.devnull, f"--junitxml={junit}",
                f"--benchmark-json={bench_json}"]
        c.execute(check.Step("bench", junit=junit), res, argv, timeout=15)
        assert res.status == "timed out"
        assert [b["name"] for b in json.loads(bench_json.read_text())["benchmarks"]] == ["test_quick"]
        assert res.details["tests"]["passed"] == 1, res.details["tests"]
    finally:
        shutil.rmtree(c.work, ignore_errors=True)


def test_benchmark_steps_stop_starting_cases_before_their_timeout(tmp_path):
    c = check.Check(gpu_check.parse_args(["--stage", "speed", "--out", str(tmp_path / "out"), "--dry"]))
    try:
        steps = [s for s in stages.stage_steps(c) if s.name.startswith("bench-")]
        # and none starts with less time than its stop leaves for one case
        assert steps and all(s.soft_stop_s and s.min_s >= s.soft_stop_s + 30 for s in steps)
    finally:
        shutil.rmtree(c.work, ignore_errors=True)


def test_steps_do_not_inherit_an_xdist_workers_variables(monkeypatch, tmp_path):
    # pytest-benchmark 5.3 turns timing off when PYTEST_XDIST_WORKER is set, so a stage started
    # from a test under `pytest -n` ran its benchmarks untimed and wrote no JSON.
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "x.py::t (call)")
    monkeypatch.setenv("GPU_CHECK_SOME_SETTING", "kept")
    c = check.Check(gpu_check.parse_args(["--stage", "verify", "--out", str(tmp_path / "out"), "--dry"]))
    try:
        env = c.step_env({"EXTRA": "1"})
        assert not any(k.startswith("PYTEST_XDIST_") or k == "PYTEST_CURRENT_TEST" for k in env), sorted(env)
        assert env["GPU_CHECK_SOME_SETTING"] == "kept" and env["EXTRA"] == "1"
    finally:
        shutil.rmtree(c.work, ignore_errors=True)


def test_dry_install_never_repoints_another_checkout(monkeypatch, tmp_path):
    c = check.Check(gpu_check.parse_args(["--stage", "verify", "--out", str(tmp_path / "out"), "--dry"]))
    try:
        monkeypatch.setattr(setup_steps, "extension_is_stale", lambda: False)
        monkeypatch.setattr(setup_steps, "installed_checkout", lambda: None)  # a clean machine: the GPU's pip command
        assert setup_steps.dry_install(c)[1:] == ["-m", "pip", "install", "--no-index", "--no-build-isolation",
                                                  "--no-deps", "-e", "."]
        monkeypatch.setattr(setup_steps, "installed_checkout", lambda: setup_steps.REPO)  # CI after `make test`
        assert setup_steps.dry_install(c) is None and not c.notes
        monkeypatch.setattr(setup_steps, "installed_checkout", lambda: tmp_path / "elsewhere")
        monkeypatch.setattr(setup_steps, "extension_is_stale", lambda: True)
        assert setup_steps.dry_install(c)[1:] == ["setup.py", "build_ext", "--inplace"]
        assert "does not re-point it" in c.notes[0]
    finally:
        shutil.rmtree(c.work, ignore_errors=True)


# ---------------------------------------------------------------------- source identity
def test_commit_and_fingerprint_name_the_sources_not_the_results(tmp_path, monkeypatch):
    """A results file or pytest-benchmark's cache beside the sources changes neither the
    fingerprint nor ``dirty``; an untracked test or benchmark (the device copy carries it and
    pytest collects it) makes the checkout dirty and changes the fingerprint."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "bench_a.py").write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "sources")
    monkeypatch.setattr(setup_steps, "REPO", repo)
    clean = (setup_steps.git_info(None), setup_steps.tree_fingerprint())
    assert clean[0]["dirty"] is False and clean[0]["source"] == "git"
    (repo / "benchmarks" / "results" / "h200").mkdir()
    (repo / "benchmarks" / "results" / "h200" / "summary.json").write_text("{}")
    (repo / "benchmarks" / "results" / "h200" / "résumé.md").write_text("")  # git quotes such names without -z
    (repo / "benchmarks" / ".benchmarks").mkdir()
    (repo / "benchmarks" / ".benchmarks" / "run.json").write_text("{}")
    assert (setup_steps.git_info(None), setup_steps.tree_fingerprint()) == clean
    (repo / "benchmarks" / "bench_new.py").write_text("y = 2\n")
    info = setup_steps.git_info(None)
    assert info["dirty"] is True and info["changed"] == ["benchmarks/bench_new.py"]
    assert setup_steps.tree_fingerprint() != clean[1]
    real_quiet = setup_steps.quiet
    monkeypatch.setattr(setup_steps, "quiet", lambda cmd, timeout=20.0: None if "ls-files" in cmd else real_quiet(cmd))
    assert setup_steps.git_info(None)["dirty"] is None  # could not tell: not "clean"
    monkeypatch.setattr(setup_steps, "quiet", real_quiet)
    monkeypatch.setattr(setup_steps, "REPO", repo / "benchmarks")  # a copy without .git inside another repository
    assert setup_steps.git_info("abc")["source"] == "--commit / COMMIT"


def test_b0_forward_runs_under_the_timed_rows_flags(monkeypatch):
    """The profiled forwards (ncu) run cuDNN's benchmark mode without TF32, as every timed row
    does (fastmbconv.study.timing_settings): else the eager profile shows other conv algorithms."""
    import b0_forward

    seen = []
    monkeypatch.setattr(b0_forward, "profile", lambda a: seen.append(
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or 0)
    before = torch.backends.cudnn.benchmark
    assert b0_forward.main(["profile", "--provider", "eager", "--device", "cpu"]) == 0
    assert seen == [(True, False, False)] and torch.backends.cudnn.benchmark == before
