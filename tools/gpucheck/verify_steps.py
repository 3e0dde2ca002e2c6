"""The verify stage's steps: the CUDA tests under pytest (autotuning off), compute-sanitizer
memcheck and racecheck over the kernel tests, the fused B0 warm-up (which the first, speed and
profile stages also run), and the CUDA tests with autotuning on. Each has a dry variant: a
sample of interpreter tests on a CPU."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from . import TOOLS
from .check import Check, Step

GPU_MARK = os.environ.get("GPU_CHECK_MARK", "gpu")
FIRST_MARK = os.environ.get("GPU_CHECK_FIRST_MARK", "gpu and not slow")  # the first stage's share of the time
MEMCHECK_MARK = os.environ.get("GPU_CHECK_MEMCHECK_MARK", "gpu and not slow and not subprocess")
# The sanitizers run the kernel and extension tests (the whole-model tests take 20-35 s each
# without one), not the compile or CUDA-graph ones (capture needs the caching allocator, which
# memcheck turns off) nor those past 2^31 elements (tens of GiB each, every access checked),
# round-robin across modules until the step's time is up. Nor those that use torch.profiler at
# all: on a CUDA build it may start CUDA tracing (CUPTI) even for CPU activity alone, untried
# beside the sanitizer; they launch nothing the others don't.
SANITIZED_PATHS = ["tests/kernels", "tests/test_prepare.py", "tests/test_prepare_cuda.py"]
SANITIZED_K = "not compile and not capture and not 2_31 and not one_launch and not read_in_place"
# racecheck (shared memory hazards) is far slower: a few fp16/bf16 tests (tensor-core operands go
# through shared memory) of the depthwise taps, the 1x1 tiles, the expand + depthwise halo and
# the SE sums, two of each
RACECHECK_K = ("float16 and ((test_dwconv_bn_act and test_every_efficientnet_config and mma) or "
               "(test_expand_dwconv and test_every_efficientnet_config) or test_block_uses or "
               f"(test_squeeze_excite and test_matches_ref)) and ({SANITIZED_K})")
RACECHECK_SAMPLE = 8
SANITIZER_STOP_S = 45  # the sanitizer's summary and pytest's exit, after the last test started
DRY_MARK = os.environ.get("GPU_CHECK_DRY_MARK", "interpreter and not slow")
DRY_SAMPLE = int(os.environ.get("GPU_CHECK_DRY_SAMPLE", "6"))
DRY_SECONDS = os.environ.get("GPU_CHECK_DRY_SECONDS")  # overrides each dry test run's time cap


def pytest_cmd(c: Check, name: str, mark: str, where: str | list[str] = "tests",
               extra: list[str] | None = None) -> tuple[list, Path]:
    junit = c.logs / f"junit-{name}.xml"
    paths = [where] if isinstance(where, str) else list(where)
    argv = [c.py, "-m", "pytest", *paths, "-m", mark, "-p", "gpu_check_plugin", "-p", "no:cacheprovider",
            "-q", "-rfE", "--durations=10", f"--junitxml={junit}", *(extra or [])]
    return argv, junit


def dry_sample(n: int, seconds: float) -> list[str]:
    """A few marked tests, round-robin across modules, and no new test after ``seconds``."""
    return ["--gc-sample", str(n), "--gc-seconds", DRY_SECONDS or str(seconds)]


def parallel_args() -> list[str]:
    """Where pytest-xdist is installed, one worker per core (at most 16), tests handed out in
    small chunks (``--dist load``): with autotuning off the CUDA tests' time goes mostly to
    compiling kernels on the CPU, about 1-2 s each for several hundred specialisations, and the
    largest test files hold about a hundred each (a file per worker would take minutes). The
    tests written for a GPU start first. A hung test dumps its stack."""
    common = ["-o", "faulthandler_timeout=120", "--gc-gpu-first"]
    if importlib.util.find_spec("xdist") is None:
        return common
    return ["-n", str(max(1, min(16, os.cpu_count() or 2))), "--dist", "load", *common]


def test_step(c: Check, name: str, autotune: bool, cap: float, mark: str = GPU_MARK) -> Step:
    # autotuning times configs on the GPU: alone, so that contention does not pick (and cache) them
    # (and round-robin across modules: it rarely finishes, so it samples them all)
    extra = ["-o", "faulthandler_timeout=120", "--gc-interleave"] if autotune else parallel_args()
    gpu, junit = pytest_cmd(c, name, mark, extra=extra)
    # dry: the interpreter never autotunes, so the second run only proves the plumbing again
    dry, _ = pytest_cmd(c, name, DRY_MARK, extra=dry_sample(2, 5) if autotune else dry_sample(DRY_SAMPLE, 15))
    return Step(name, gpu, dry, cap_s=cap, min_s=30, junit=junit, env={"FASTMBCONV_AUTOTUNE": "1" if autotune else "0"},
                soft_stop_s=20, what=f"the CUDA tests (-m '{mark}'), autotuning {'on' if autotune else 'off'}")


def memcheck_step(c: Check) -> Step:
    gpu, junit = pytest_cmd(c, "memcheck", MEMCHECK_MARK, SANITIZED_PATHS, extra=["-k", SANITIZED_K, "--gc-interleave"])
    dry, _ = pytest_cmd(c, "memcheck", f"({DRY_MARK}) and not subprocess", SANITIZED_PATHS,
                        extra=["-k", SANITIZED_K, *dry_sample(1, 5)])
    # API errors off: its ERROR SUMMARY would also count the failed CUDA API calls it reports by
    # default, which libraries may make on purpose and handle, beside the memory errors
    tool = ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "50",
            "--report-api-errors", "no"]
    return Step("memcheck", gpu, dry, tool=tool, cap_s=180, min_s=SANITIZER_STOP_S + 30, junit=junit,
                needs_tool="compute-sanitizer",
                env={"FASTMBCONV_AUTOTUNE": "0", "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, soft_stop_s=SANITIZER_STOP_S,
                what="compute-sanitizer memcheck over the kernel and extension tests, round-robin across their "
                     "modules (caching allocator off: exact allocations)")


def racecheck_step(c: Check) -> Step:
    extra = ["-k", RACECHECK_K, "--gc-sample", str(RACECHECK_SAMPLE)]
    gpu, junit = pytest_cmd(c, "racecheck", MEMCHECK_MARK, "tests/kernels", extra=extra)
    dry, _ = pytest_cmd(c, "racecheck", f"({DRY_MARK}) and not subprocess", "tests/kernels",
                        extra=["-k", RACECHECK_K, *dry_sample(1, 5)])
    tool = ["compute-sanitizer", "--tool", "racecheck", "--error-exitcode", "86", "--print-limit", "50"]
    return Step("racecheck", gpu, dry, tool=tool, cap_s=120, min_s=SANITIZER_STOP_S + 30, junit=junit,
                needs_tool="compute-sanitizer",
                env={"FASTMBCONV_AUTOTUNE": "0"}, soft_stop_s=SANITIZER_STOP_S,
                what=f"compute-sanitizer racecheck over {RACECHECK_SAMPLE} kernel tests (shared memory hazards)")


def warm_step(c: Check, cap: float = 150) -> Step:
    base = [c.py, str(TOOLS / "b0_forward.py"), "warm", "--json", str(c.logs / "warm.json")]
    return Step("warm", base + ["--device", "cuda", "--dtype", "fp16", "--resolution", "224", "--batches", "256,1"],
                base + ["--device", "cpu", "--dtype", "fp32", "--resolution", "16", "--batches", "1"],
                cap_s=cap, min_s=20, what="fused B0 224 fp16 at batch 256 and 1: compile + autotune into the cache")



def verify_steps(c: Check) -> list[Step]:
    """Correctness first (every config of each autotune list is launched explicitly there, by
    tests/kernels/test_autotune_configs.py), the sanitizers next; the autotuned run last: it
    tunes every shape it meets and rarely finishes within its cap."""
    return [test_step(c, "tests-quick", autotune=False, cap=180), memcheck_step(c), racecheck_step(c), warm_step(c),
            test_step(c, "tests-autotuned", autotune=True, cap=240)]
