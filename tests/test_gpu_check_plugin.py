"""The pytest plugin of the GPU check stages (``tools/gpu_check_plugin.py``): the order it
gives a step's tests, on a CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "tools" / "gpu_check.py").is_file())


@pytest.mark.subprocess
def test_plugin_runs_gpu_tests_first_and_named_ones_last(tmp_path):
    """As on a GPU machine: a conftest marks every interpreter test ``gpu(interpreter=True)``, as
    tests/conftest.py does there; those stay in place, the tests marked ``gpu`` themselves go first."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""\
        import pytest

        def pytest_collection_modifyitems(config, items):
            for item in items:
                if "interpreter" in item.keywords:
                    item.add_marker(pytest.mark.gpu(interpreter=True))
        """))
    (tmp_path / "test_a.py").write_text(textwrap.dedent("""\
        import pytest
        pytestmark = pytest.mark.interpreter

        def test_plain(): pass

        @pytest.mark.gpu
        def test_big_cuda(): pass

        def test_compile_me(): pass

        @pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.gpu)])
        def test_param(n): pass
        """))
    (tmp_path / "test_b.py").write_text(textwrap.dedent("""\
        import pytest
        pytestmark = [pytest.mark.gpu]

        def test_whole_module_on_cuda(): pass
        """))
    (tmp_path / "test_c.py").write_text("def test_cpu(): pass\n")
    argv = [sys.executable, "-m", "pytest", str(tmp_path), "-p", "gpu_check_plugin", "-p", "no:cacheprovider",
            "--rootdir", str(tmp_path), "-c", os.devnull, "--collect-only", "-q",
            "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tools")}

    def order(*extra):
        out = subprocess.run(argv + list(extra), capture_output=True, text=True, env=env, timeout=120).stdout
        return [line.split("::")[1] for line in out.splitlines() if "::" in line]

    plain = ["test_plain", "test_big_cuda", "test_compile_me", "test_param[1]", "test_param[2]",
             "test_whole_module_on_cuda", "test_cpu"]
    assert order() == plain
    assert order("--gc-gpu-first") == ["test_big_cuda", "test_param[2]", "test_whole_module_on_cuda", "test_plain",
                                       "test_compile_me", "test_param[1]", "test_cpu"]
    assert order("--gc-last", "compile") == [n for n in plain if n != "test_compile_me"] + ["test_compile_me"]
    # several: each after the one before it, in the order given
    assert order("--gc-last", "compile,plain") == ([n for n in plain if n not in ("test_compile_me", "test_plain")]
                                                   + ["test_compile_me", "test_plain"])
    # round-robin across modules, the largest first
    assert order("--gc-interleave") == ["test_plain", "test_whole_module_on_cuda", "test_cpu", "test_big_cuda",
                                        "test_compile_me", "test_param[1]", "test_param[2]"]
    assert order("--gc-sample", "4") == ["test_plain", "test_big_cuda", "test_whole_module_on_cuda", "test_cpu"]


@pytest.mark.subprocess
def test_plugin_starts_no_test_after_the_stop_time(tmp_path):
    """``--gc-stop-at``: a test that would start after the wall-clock time is skipped (the run
    still exits 0, so a sanitizer around pytest prints its summary). The conftest sets the stop
    time once the tests are collected, so a slow start of the child cannot skip the first test."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""\
        import time

        def pytest_collection_finish(session):
            if session.config.option.gc_stop_at:
                session.config.option.gc_stop_at = time.time() + 0.5
        """))
    (tmp_path / "test_a.py").write_text(textwrap.dedent("""\
        import time

        def test_1(request):  # runs past the stop time
            time.sleep(max(0.0, request.config.getoption("gc_stop_at") - time.time()) + 0.1)

        def test_2(): pass
        """))
    argv = [sys.executable, "-m", "pytest", str(tmp_path), "-p", "gpu_check_plugin", "-p", "no:cacheprovider",
            "--rootdir", str(tmp_path), "-c", os.devnull, "-q", "-rs"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tools")}
    run = subprocess.run(argv + ["--gc-stop-at", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and "1 passed, 1 skipped" in run.stdout and "the step's time is up" in run.stdout, run.stdout
    run = subprocess.run(argv + ["--gc-stop-at", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert "2 passed" in run.stdout, run.stdout


@pytest.mark.subprocess
def test_plugin_dry_time_budget_counts_from_the_first_test(tmp_path):
    """``--gc-seconds``: no test starts past the dry budget, counted from the end of collection
    (a slow collection, here 1 s, spends none of it)."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""\
        import time

        def pytest_collection_modifyitems(items):
            time.sleep(1.0)
        """))
    (tmp_path / "test_a.py").write_text("import time\n\ndef test_1():\n    time.sleep(1.0)\n\ndef test_2(): pass\n")
    argv = [sys.executable, "-m", "pytest", str(tmp_path), "-p", "gpu_check_plugin", "-p", "no:cacheprovider",
            "--rootdir", str(tmp_path), "-c", os.devnull, "-q", "-rs", "--gc-seconds", "0.7"]
    run = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "tools")},
                         timeout=120)
    assert run.returncode == 0 and "1 passed, 1 skipped" in run.stdout and "dry time budget spent" in run.stdout, run.stdout
