"""The compiled extension fastmbconv._C: where the build puts it, what setup.py builds, and a
compile check of the CUDA sources that needs no GPU (nvcc for the kernel, the host compiler for
the torch binding)."""
from __future__ import annotations

import ast
import os
import shutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    from torch.utils.cpp_extension import CUDA_HOME

    cand = Path(CUDA_HOME or "/usr/local/cuda") / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


@pytest.mark.subprocess
def test_cuda_kernel_compiles_with_bare_nvcc(tmp_path):
    """prepare_kernel.cu holds raw-pointer kernels and a cudaStream_t launcher: it must compile
    with nvcc alone, no torch headers on the include path."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (neither on PATH nor under CUDA_HOME): cannot compile-check csrc/*.cu")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS  # -D macros only, no include paths

    sources = sorted(CSRC.glob("*.cu"))
    assert sources, "csrc/ has no .cu file"
    for src in sources:
        out = tmp_path / (src.stem + ".o")
        flags = ["-arch=sm_90", "-O2", "--fmad=false", "-std=c++17", *COMMON_NVCC_FLAGS]
        cmd = [nvcc, "-c", str(src), "-o", str(out), *flags]
        assert not any(f.startswith("-I") for f in cmd)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout}\n{r.stderr}"
        assert out.stat().st_size > 0
        # the CPU op's fp32 arithmetic, step for step: nvcc would contract a * b + c into fma
        # (one rounding instead of two) without --fmad=false, which setup.py passes. The one fma
        # is the source coordinate's explicit fmaf(scale, dst + 0.5, -0.5) (prepare_math.h).
        ptx = tmp_path / (src.stem + ".ptx")
        r = subprocess.run([nvcc, "-ptx", str(src), "-o", str(ptx), *flags], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        text = ptx.read_text()
        assert "div.rn.f32" in text
        fmas = 0
        for body in re.split(r"\.entry|\.func", text)[1:]:  # registers are named per function
            minus_half = set(re.findall(r"mov\.[bf]32\s+(%\w+), 0fBF000000;", body)) | {"0fBF000000"}
            addends = [a.strip() for a in re.findall(r"fma\.rn\.f32\s+[^,]+, [^,]+, [^,]+, ([^;]+);", body)]
            assert set(addends) <= minus_half, f"a contracted fma (addend {set(addends) - minus_half})"
            fmas += len(addends)
        assert fmas, "the source coordinate's fmaf is missing"


@pytest.mark.subprocess
def test_cuda_binding_compiles(tmp_path):
    """The CUDA build's torch binding (prepare_cuda.cpp with FASTMBCONV_WITH_CUDA) passes the host
    compiler's syntax check against torch's headers and the CUDA toolkit's. CPU torch lacks one
    generated c10/cuda header (cuda_cmake_macros.h), which is stubbed."""
    nvcc = _nvcc()
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if nvcc is None or cxx is None:
        pytest.skip("needs nvcc's CUDA headers and a host C++ compiler")
    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    candidates = [Path(nvcc).resolve().parent.parent / "include", Path("/usr/local/cuda/include")]
    if CUDA_HOME:
        candidates.insert(0, Path(CUDA_HOME) / "include")
    found = [c for c in candidates if (c / "cuda_runtime_api.h").exists()]
    if not found:
        pytest.skip(f"no cuda_runtime_api.h under {[str(c) for c in candidates]}")
    cuda_include = found[0]

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = [cxx, "-std=c++20", "-fsyntax-only", "-DFASTMBCONV_WITH_CUDA", f"-I{CSRC}",
           *[f"-I{p}" for p in include_paths()], f"-I{tmp_path}", f"-I{cuda_include}",
           str(CSRC / "prepare_cuda.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def test_extension_is_importable_from_the_package():
    """The editable install puts _C*.so in the package folder, where `import fastmbconv._C`
    finds it, and importing it registers the CPU kernel."""
    import fastmbconv
    from fastmbconv import _ext

    mod = _ext.load()
    assert mod.__name__ == "fastmbconv._C"
    assert Path(mod.__file__).resolve().parent == Path(fastmbconv.__file__).resolve().parent
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastmbconv::prepare_images", "CPU")
    assert _ext.has_cuda_kernels() == (
        torch._C._dispatch_has_kernel_for_dispatch_key("fastmbconv::prepare_images", "CUDA")
    )


@pytest.mark.subprocess
def test_import_does_not_load_the_extension():
    code = ("import sys, fastmbconv, fastmbconv.prepare\n"
            "assert 'fastmbconv._C' not in sys.modules, 'imported eagerly'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def _load_extensions_function():
    """setup.py's extensions(), without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
            or (isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant))
            or isinstance(n, ast.FunctionDef)]
    ns = {"__file__": str(ROOT / "setup.py")}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "setup.py", "exec"), ns)
    return ns["extensions"]


def _flags(ext):
    args = ext.extra_compile_args
    return args if isinstance(args, dict) else {"cxx": args}


def test_setup_builds_cpu_extension_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    exts, cmdclass = _load_extensions_function()()
    (ext,) = exts
    assert ext.name == "fastmbconv._C"
    assert all(s.endswith(".cpp") and not s.endswith("_cuda.cpp") for s in ext.sources), ext.sources
    assert len(ext.sources) <= 2
    cxx = _flags(ext)["cxx"]
    assert "-g0" in cxx and "-O2" in cxx and not any(f.startswith("-std") for f in cxx)
    if sys.platform.startswith("linux"):  # at::parallel_for is an OpenMP pragma in torch's headers
        assert "-fopenmp" in cxx and "-fopenmp" in ext.extra_link_args
    assert ("FASTMBCONV_WITH_CUDA", "1") not in (ext.define_macros or [])
    assert "build_ext" in cmdclass


def _fake_toolkit(home):
    for rel in ("bin/nvcc", "include/cuda_runtime.h"):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).touch()


def test_setup_adds_cuda_sources_when_torch_has_cuda(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp_ext

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    _fake_toolkit(tmp_path)
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("FASTMBCONV_NO_CUDA", "0")
    for var in ("CUDA_INC_PATH", "CPATH", "CPLUS_INCLUDE_PATH"):  # only the fake toolkit's headers
        monkeypatch.delenv(var, raising=False)
    # a GPU visible: setup.py leaves TORCH_CUDA_ARCH_LIST to torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # recorded, so teardown restores what was set
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    # CUDAExtension probes the toolkit's library folder; record the call instead.
    made = {}

    def fake_cuda_extension(name, sources, **kwargs):
        made.update(name=name, sources=sources, **kwargs)
        return types.SimpleNamespace(name=name, sources=sources, **kwargs)

    monkeypatch.setattr(cpp_ext, "CUDAExtension", fake_cuda_extension)
    exts, _ = _load_extensions_function()()
    assert made["name"] == "fastmbconv._C"
    assert any(s.endswith(".cu") for s in made["sources"])
    assert any(s.endswith("_cuda.cpp") for s in made["sources"])
    assert ("FASTMBCONV_WITH_CUDA", "1") in made["define_macros"]
    assert "--fmad=false" in made["extra_compile_args"]["nvcc"]  # see test_cuda_kernel_compiles_with_bare_nvcc
    assert "-g0" in made["extra_compile_args"]["cxx"]
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ  # torch takes the targets from the GPU

    monkeypatch.setenv("FASTMBCONV_NO_CUDA", "1")
    made.clear()
    _load_extensions_function()()
    assert not made  # forced CPU-only build

    # a CUDA_HOME without the toolkit's headers (torch's guess from a wrapper nvcc): CPU only
    monkeypatch.setenv("FASTMBCONV_NO_CUDA", "0")
    (tmp_path / "include" / "cuda_runtime.h").unlink()
    _load_extensions_function()()
    assert not made
    # ... unless the headers lie where the compilers look all the same: CUDA_INC_PATH (torch adds
    # it), a conda toolkit's targets/<arch>/include, CPATH
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cuda_runtime.h").touch()
    for var in ("CUDA_INC_PATH", "CPATH"):
        monkeypatch.setenv(var, str(elsewhere))
        _load_extensions_function()()
        assert made, var
        made.clear()
        monkeypatch.delenv(var)
    conda = tmp_path / "targets" / "x86_64-linux" / "include"
    conda.mkdir(parents=True)
    (conda / "cuda_runtime.h").touch()
    _load_extensions_function()()
    assert made
    made.clear()
    (conda / "cuda_runtime.h").unlink()
    (tmp_path / "include" / "cuda_runtime.h").touch()

    # torch compiles with CUDA_HOME's nvcc: one elsewhere on PATH would not build, so CPU only
    monkeypatch.setenv("FASTMBCONV_NO_CUDA", "0")
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", str(tmp_path / "nonexistent"))
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/" + name)
    _load_extensions_function()()
    assert not made


def test_setup_builds_without_cuda_kernels_beside_a_toolkit_of_another_major_release(monkeypatch, tmp_path):
    """torch refuses to compile with a toolkit of another major release than its wheel's (a cu128
    torch beside CUDA 13): the CUDA kernels are left out, with a message, not the install failed."""
    import torch.utils.cpp_extension as cpp_ext

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    _fake_toolkit(tmp_path)
    nvcc = tmp_path / "bin" / "nvcc"
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("FASTMBCONV_NO_CUDA", "0")
    made = []
    monkeypatch.setattr(cpp_ext, "CUDAExtension", lambda name, sources, **kw: made.append(name) or name)
    for release, builds_cuda in [("13.0, V13.0.88", False), ("12.4, V12.4.131", True), (None, True)]:
        # None: an nvcc that prints no release; torch's own check decides then
        said = "nvcc: NVIDIA (R) Cuda compiler driver" + (f"\nCuda compilation tools, release {release}" if release else "")
        nvcc.write_text(f"#!/bin/sh\nprintf '%s\\n' '{said}'\n")
        nvcc.chmod(0o755)
        made.clear()
        _load_extensions_function()()
        assert bool(made) == builds_cuda, release
    # an nvcc that does not answer: torch would wait on it forever, so no CUDA kernels
    nvcc.write_text("#!/bin/sh\nexec sleep 30\n")
    extensions = _load_extensions_function()
    extensions.__globals__["NVCC_TIMEOUT_S"] = 1
    made.clear()
    extensions()
    assert not made


def test_torch_is_not_a_build_requirement():
    text = (ROOT / "pyproject.toml").read_text()
    build = text.split("[build-system]", 1)[1].split("\n[", 1)[0]
    requires = build.split("requires", 1)[1].split("]", 1)[0]
    assert "torch" not in requires


def test_make_install_replaces_torch_below_pyprojects_floor():
    """make install's TORCH_FLOOR is pyproject's torch>= floor: a lower one would let pip upgrade
    an old torch from PyPI (a CUDA build) on a machine without a GPU."""
    floor = re.search(r'"torch>=([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert re.search(r"^TORCH_FLOOR \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1) == floor


def test_setup_names_cuda_targets_when_no_gpu_is_visible(monkeypatch, tmp_path):
    """A CUDA torch and a toolkit with no GPU visible (a container build): torch has no device to
    take the targets from and its build fails with an IndexError, so setup.py names them, and
    leaves a list the user set alone."""
    import torch.utils.cpp_extension as cpp_ext

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    _fake_toolkit(tmp_path)
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(cpp_ext, "CUDAExtension", lambda name, sources, **kw: types.SimpleNamespace(name=name))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("FASTMBCONV_NO_CUDA", "0")
    monkeypatch.setenv("CUDA_INC_PATH", "")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")  # recorded, so teardown restores what was set
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    _load_extensions_function()()
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    assert "9.0" in archs.split(";") or "9.0+PTX" in archs.split(";"), archs
    # the list torch reads: it must parse without a device (the failure this guards against)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (_ for _ in ()).throw(AssertionError))
    flags = cpp_ext._get_cuda_arch_flags()
    assert "-gencode=arch=compute_90,code=sm_90" in flags, flags

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    _load_extensions_function()()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"
    # "native" asks torch for the visible GPU's target, of which there is none: named as if unset
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "native")
    _load_extensions_function()()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == archs
