"""The steps every stage starts with: preflight (packages, tools, the GPU, without importing
torch), restoring the kernel cache, the offline install, and the probe of versions from inside
the step environment (``--probe-env``, run as a child process)."""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import urllib.parse
from pathlib import Path

import gpu_cache

from . import REPO, TOOLS
from .check import Check, Step, last_line
from .outfiles import BENCH_STAGES, dump_json, load_json


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
        top = quiet(["git", "-C", str(REPO), "rev-parse", "--show-toplevel"])
        if top and Path(top).resolve() == REPO.resolve():  # not a parent repository's HEAD
            # untracked files count (the device copy carries them and pytest collects them); results do not
            listed = [quiet(["git", "-C", str(REPO), *cmd, "-z"]) for cmd in (
                ["diff", "--name-only", "HEAD"], ["ls-files", "--others", "--exclude-standard"])]
            if None in listed:
                return {"commit": head, "dirty": None, "source": "git (could not list changes)"}
            changed = sorted({f for out in listed for f in out.split("\0") if f and not is_result(f)})
            return {"commit": head, "dirty": bool(changed), "changed": changed[:20], "source": "git"}
    if commit_arg:
        return {"commit": commit_arg, "dirty": None, "source": "--commit / COMMIT"}
    return {"commit": None, "dirty": None,
            "source": "unknown: no .git in this copy; pass COMMIT=<sha> (the tree fingerprint identifies the sources)"}


def is_result(path: str) -> bool:
    """Written by runs, not sources: benchmark results and pytest's caches (.benchmarks, .pytest_cache)."""
    parts = Path(path).parts
    return parts[:2] == ("benchmarks", "results") or bool({".benchmarks", ".pytest_cache"} & set(parts))


def tree_fingerprint() -> str:
    """sha256 over the project's source files, so results trace to sources without git; the
    same sources give the same fingerprint whatever results lie beside them."""
    h = hashlib.sha256()
    roots = ["fastmbconv", "kernels", "csrc", "tests", "benchmarks", "tools", "setup.py", "pyproject.toml",
             "Makefile", "conftest.py"]
    for root in roots:
        base = REPO / root
        paths = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
        for p in paths:
            rel = p.relative_to(REPO).as_posix()
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".so", ".pyc") and not is_result(rel):
                h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def setuptools_floor() -> str:
    """The setuptools release pyproject.toml's build-system asks for (its license field's form)."""
    return re.search(r'"setuptools>=([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def preflight(c: Check):
    """Interpreter, packages, tools and the GPU, checked without importing torch."""
    floor = setuptools_floor()
    need = {"torch": None, "triton": None, "numpy": None, "pytest": None, "setuptools": floor, "wheel": None,
            "pip": None}
    if c.stage in BENCH_STAGES:
        need["pytest-benchmark"] = None
    found = {name: version_of(name)
             for name in [*need, "pytest-benchmark", "timm", "torchvision", "matplotlib", "pillow"]}
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
        release = platform.release()  # gVisor reports exactly 4.4.0 (Ubuntu's 4.4 kernels add "-NNN-generic")
        c.env_info.update(kernel_release=release, runtime="gVisor" if release == "4.4.0" else None)
        if c.env_info["runtime"]:
            c.notes.append("gVisor (kernel 4.4.0): compute-sanitizer and ncu cannot reach the GPU here, so "
                           "memcheck, racecheck and the profile are skipped")
        if cap and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            c.install_env["TORCH_CUDA_ARCH_LIST"] = cap  # build the extension for this GPU only
        full = quiet(["nvidia-smi", "-q"])
        if full:
            (c.logs / "nvidia-smi.txt").write_text(full + "\n")
        for t in ("nvcc", "ncu", "compute-sanitizer"):
            c.env_info[f"{t}_version"] = last_line(quiet([t, "--version"]) or "") or None
        if not tools["nvcc"]:
            c.notes.append("nvcc not found: the extension builds without its CUDA kernels (the prepare_images "
                           "GPU tests fail, naming the missing kernels)")
    if missing:
        return "failed", {**d, "error": f"missing Python package(s): {', '.join(missing)} "
                                       f"(setuptools must be >= {floor}). "
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
    try:
        info = gpu_cache.restore(c.cache_from, c.cache_root, gpu_name=c.env_info.get("nvidia_smi_name"))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # e.g. cut short by a kill
        c.cache["restored"] = {"error": f"{c.cache_from} could not be read ({type(exc).__name__}: {exc}); "
                                        "the stage compiles and tunes from scratch"}
        return "failed", c.cache["restored"]
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


def install_cmd(py: str) -> list[str]:
    """The offline editable install, and if it fails (the CUDA extension has never been built
    with this machine's toolkit) once more without the extension's CUDA kernels: every later
    step needs ``fastmbconv.kernels``, which only the install maps, and the Triton kernels do not
    need the extension (the env step records whether its CUDA kernels were built)."""
    pip = " ".join(shlex.quote(a) for a in [py, "-m", "pip", "install", "--no-index", "--no-build-isolation",
                                             "--no-deps", "-e", "."])
    return ["sh", "-c", f"{pip} || {{ echo 'install: retrying without the CUDA kernels' >&2; FASTMBCONV_NO_CUDA=1 {pip}; }}"]


def setup_steps(c: Check) -> list[Step]:
    install = Step("install", install_cmd(c.py),
                   dry_install, cap_s=300, min_s=10, needs=("preflight",),
                   dry_note="fastmbconv is installed and its extension is up to date (a foreign install is in the notes)",
                   env=c.install_env,
                   what="offline editable install; builds fastmbconv._C (with its CUDA kernels when nvcc is present, "
                        "else, or if that build fails, without them)")
    return [Step("preflight", fn=preflight, needs=(), essential=True),
            Step("restore-cache", fn=restore_cache, needs=("preflight",), essential=True), install,
            Step("env", fn=probe_env, needs=("preflight",), essential=True)]
