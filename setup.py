"""Build script. Packages live in pyproject.toml's metadata; this file maps the top-level
``kernels/`` folder to ``fastmbconv.kernels`` (never a top-level ``kernels`` package: PyPI has
one) and builds the optional ``fastmbconv._C`` extension."""
import glob
import os
import re
import subprocess
import sys

from setuptools import find_packages, setup

# CUDA targets when no GPU is visible at build time and TORCH_CUDA_ARCH_LIST is unset; every
# CUDA toolkit from 11.8 to 13 knows them.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def cuda_headers_found(cuda_home: str) -> bool:
    """Whether cuda_runtime.h lies where a CUDA build's compilers look: the toolkit's include
    folder (conda's under targets/), torch's CUDA_INC_PATH, or the compilers' CPATH."""
    dirs = [os.path.join(cuda_home, "include"), *glob.glob(os.path.join(cuda_home, "targets", "*", "include"))]
    for var in ("CUDA_INC_PATH", "CPATH", "CPLUS_INCLUDE_PATH"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    return any(os.path.exists(os.path.join(d, "cuda_runtime.h")) for d in dirs)


NVCC_TIMEOUT_S = 60


def nvcc_release(nvcc: str):
    """(major, minor) of the toolkit ``nvcc --version`` reports, or None where it cannot say.
    Raises ``subprocess.TimeoutExpired`` when nvcc does not answer within NVCC_TIMEOUT_S."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, errors="replace",
                             timeout=NVCC_TIMEOUT_S).stdout
    except OSError:  # not executable; without check=True nothing else but the timeout raises
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def extensions():
    """The compiled extension ``fastmbconv._C``, when csrc/ has sources; empty otherwise.

    torch must already be installed (it is never a build requirement: build with
    ``pip install -e . --no-build-isolation``). The C++ CPU implementation is always built;
    the CUDA kernels are added when torch has CUDA and a CUDA toolkit (CUDA_HOME / nvcc) of
    torch's CUDA major release is present, unless ``FASTMBCONV_NO_CUDA=1``. Without torch,
    nothing is built and the package falls back to its pure-torch paths.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(here, "csrc")
    cpp = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    if not cpp:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        print(f"fastmbconv: torch is not importable ({exc}); building without fastmbconv._C",
              file=sys.stderr)
        return [], {}

    def rel(paths):  # setuptools wants paths relative to setup.py
        return [os.path.relpath(p, here) for p in paths]

    cuda_binding = [p for p in cpp if os.path.basename(p).endswith("_cuda.cpp")]
    cpu_sources = [p for p in cpp if p not in cuda_binding]
    cu = sorted(glob.glob(os.path.join(csrc, "*.cu")))
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    with_cuda = (
        bool(torch.version.cuda)
        and nvcc is not None
        and os.path.exists(nvcc)  # torch builds with CUDA_HOME's nvcc, not one found elsewhere on PATH
        and bool(cu)
        and os.environ.get("FASTMBCONV_NO_CUDA", "0") in ("", "0")
    )
    # torch takes CUDA_HOME from the first nvcc on PATH; a wrapper script outside a toolkit
    # (/usr/local/bin/nvcc) yields a CUDA_HOME without headers, whose build cannot succeed.
    if with_cuda and not cuda_headers_found(CUDA_HOME):
        print(f"fastmbconv: no cuda_runtime.h under CUDA_HOME={CUDA_HOME!r} (include/, targets/*/include/), "
              "CUDA_INC_PATH, CPATH or CPLUS_INCLUDE_PATH; building without the CUDA kernels (set "
              "CUDA_HOME to the toolkit's folder to build them)", file=sys.stderr)
        with_cuda = False
    # torch refuses to build with a toolkit of another major release than its own (a cu128 wheel
    # beside CUDA 13, say) and the whole install fails; the CUDA kernels are optional.
    try:
        release = nvcc_release(nvcc) if with_cuda else None
    except subprocess.TimeoutExpired:  # torch would ask it again, with no time limit
        print(f"fastmbconv: {nvcc} --version did not answer within {NVCC_TIMEOUT_S} s; building "
              "without the CUDA kernels", file=sys.stderr)
        release, with_cuda = None, False
    torch_major = torch.version.cuda.split(".")[0] if with_cuda else None
    if release is not None and str(release[0]) != torch_major:
        print(f"fastmbconv: {nvcc} is CUDA {release[0]}.{release[1]} but torch was built with CUDA "
              f"{torch.version.cuda}; building without the CUDA kernels (set CUDA_HOME to a CUDA "
              f"{torch_major}.x toolkit to build them)", file=sys.stderr)
        with_cuda = False
    # -g0: no debug info (halves the build); -O2. torch chooses -std (its headers need C++20).
    # at::parallel_for is inline `#pragma omp parallel` (torch's OpenMP backend): without
    # -fopenmp it silently runs on one thread. torch already links libgomp on Linux.
    # -ffp-contract=off: the CPU loop rounds every operation as the CUDA kernel does (--fmad=false)
    # on hosts whose compilers would fuse multiply-adds (aarch64, -march=native).
    cxx = ["-O2", "-g0", "-ffp-contract=off"]
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if with_cuda and archs in ("", "native") and torch.cuda.device_count() == 0:
        # With no GPU visible (a container build, say), torch has no device to take the targets
        # from and fails with an IndexError; build for Ampere through Hopper, with PTX for later.
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        print(f"fastmbconv: no GPU visible, building the CUDA kernels for TORCH_CUDA_ARCH_LIST="
              f"{DEFAULT_CUDA_ARCHS!r} (set it to choose)", file=sys.stderr)
    if with_cuda:
        ext = CUDAExtension(
            "fastmbconv._C",
            rel(cpu_sources + cuda_binding + cu),
            define_macros=[("FASTMBCONV_WITH_CUDA", "1")],
            # --fmad=false: the same fp32 arithmetic as the CPU loop (prepare_math.h).
            extra_compile_args={"cxx": cxx, "nvcc": ["-O2", "--fmad=false"]},
            extra_link_args=link,
        )
    else:
        ext = CppExtension("fastmbconv._C", rel(cpu_sources), extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    packages=["fastmbconv", *(f"fastmbconv.{p}" for p in find_packages("fastmbconv")), "fastmbconv.kernels"],
    package_dir={"fastmbconv": "fastmbconv", "fastmbconv.kernels": "kernels"},
    package_data={"fastmbconv": ["pretrained_cfgs.txt"], "fastmbconv.fused": ["*.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
