"""Packaging: the metadata pip reads, and the source distribution, which must hold every file of
the project and nothing a build made (without the extension's headers an sdist fails to compile
anywhere, and without its .cu files one built without CUDA installs with no CUDA kernels)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What setuptools writes of its own into every sdist.
GENERATED = {"PKG-INFO", "setup.cfg"}


def project_files() -> set[str]:
    """Files git tracks or would track (untracked but not ignored), as paths from the root."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return {p for p in out.split("\0") if p and (ROOT / p).is_file()}


@pytest.fixture
def project_copy(tmp_path):
    """A copy of the project's files (and the set of them), so that no earlier build's output
    (an egg-info, whose SOURCES.txt setuptools adds to every later sdist) hides a missing rule."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: what ships is checked against git's file list")
    files = project_files()
    src = tmp_path / "src"
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    return src, files


def run_python(args: list, cwd: Path) -> str:
    """A child Python process in cwd; its last line of output. setuptools' deprecation warnings
    fail it: each comes with the date after which the build stops working."""
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SetuptoolsDeprecationWarning" not in done.stderr, done.stderr[-3000:]
    return (done.stdout.strip().splitlines() or [""])[-1]


@pytest.mark.subprocess
def test_sdist_holds_every_project_file_and_no_build_output(project_copy, tmp_path):
    src, expected = project_copy
    built = ["fastmbconv/_C.cpython-311-x86_64-linux-gnu.so", "tests/__pycache__/test_packaging.cpython-311.pyc",
             "csrc/__pycache__/stray.pyc", "kernels/_utils.pyc"]
    for rel in built:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"")
    # build_meta is what pip and `python -m build` call; setup.py imports torch but builds nothing.
    name = run_python(["-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"], src)
    with tarfile.open(tmp_path / name) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    shipped = {m for m in members if m not in GENERATED and ".egg-info/" not in m}
    assert sorted(expected - shipped) == [], "project files missing from the sdist"
    assert sorted(shipped - expected) == [], "the sdist ships build output"
    assert {"csrc/prepare_common.h", "csrc/prepare_kernel.cu", "csrc/prepare_cuda.cpp"} <= shipped


@pytest.mark.subprocess
def test_wheel_holds_every_file_of_the_package(project_copy, tmp_path):
    """What build_py copies is the wheel's Python side: every file under fastmbconv/, and under
    kernels/ as fastmbconv/kernels/, data files (a JSON of tuned configs, say) included."""
    src, files = project_copy
    lib = tmp_path / "lib"
    run_python(["setup.py", "-q", "build_py", "--build-lib", str(lib)], src)
    expected = {f for f in files if f.startswith("fastmbconv/")}
    expected |= {f"fastmbconv/{f}" for f in files if f.startswith("kernels/")}
    copied = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    assert sorted(expected - copied) == [], "package files missing from the wheel"
    assert sorted(copied - expected) == []


# The oldest CPython each torch release has wheels for (PyPI; `pip index versions torch
# --python-version 3.9 --only-binary=:all:` lists 2.8.0 as the newest for 3.9).
TORCH_MIN_PYTHON = {"2.9": (3, 10), "2.10": (3, 10), "2.11": (3, 10), "2.12": (3, 10), "2.13": (3, 10)}


def test_requires_python_is_what_the_torch_floor_needs():
    """pip names the Python version when requires-python rules it out; a lower bound than torch's
    leaves the user with a torch resolution error instead."""
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([0-9.]+)"', text).group(1)
    bound = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', text, re.M)
    assert (int(bound.group(1)), int(bound.group(2))) == TORCH_MIN_PYTHON[floor]


def test_make_install_asks_for_pyprojects_setuptools_floor():
    """make install installs the setuptools the build needs (--no-build-isolation reads none)."""
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'requires = \["setuptools>=([0-9.]+)"', text).group(1)
    assert f'pip install "setuptools>={floor}" wheel' in (ROOT / "Makefile").read_text()
