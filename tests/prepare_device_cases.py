"""The compiled prepare ops' device checks, each call in a child process: a call that crashes the
process (a segfault) then names its case instead of taking a pytest worker down with it.

    python -m tests.prepare_device_cases FILTER [--first=CASE ...] CASE [CASE ...]

runs the named cases in order, the ``--first`` ones before the rest, and prints ``start <case>``
before each call and ``raised <case>: <message>`` or ``returned <case>`` after it. :func:`run`
starts the child again after the case that crashed, so every case gets its answer.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
V1_META = [[0, 0, 5, 7, 4, 3]]  # (source, offset, h, w, resized h, w)

#: name -> (op, the images' devices, meta's device, the error it must raise). The controls:
#: "cpu-control" is a check the CPU kernel of the same library raises (a bad filter): if it
#: crashes too, every C++ error of the built library does, not only the device checks;
#: "torch-control-*" is a check of torch's own (adding tensors of two sizes): if that crashes on
#: the GPU, C++ errors crash in that process whatever library raises them; "cuda-binding-control"
#: calls the CUDA kernel's binding itself with CPU tensors (redispatched to the CUDA key, so it
#: needs a CUDA build but no GPU): its table is built and its own device check raises, with no
#: CUDA tensor in the process yet. "triton-kernel" is no check: it launches one of the package's
#: Triton kernels (on the GPU where there is one) and must return; run first in every child
#: (``run(..., first=("triton-kernel",))``), it tells whether the checks crash only in a process
#: that has launched Triton kernels, as the pytest workers that crashed had.
CASES = {
    "cpu-control": ("prepare_images_v2", ["cpu"], "cpu", r"filter must be 0 \(bilinear\)"),
    "cuda-binding-control": ("prepare_images_v2@CUDA", ["cpu"], "cpu", r"images must be CUDA tensors, got cpu"),
    "torch-control-cpu": ("torch", ["cpu"], "cpu", r"size of tensor a \(2\) must match"),
    "torch-control-cuda": ("torch", ["cuda"], "cpu", r"size of tensor a \(2\) must match"),
    "v2-meta-on-gpu": ("prepare_images_v2", ["cuda"], "cuda", "meta must be a CPU tensor"),
    # CPU images and a GPU table: dispatched to the CUDA kernel by meta alone
    "v2-cpu-images-gpu-meta": ("prepare_images_v2", ["cpu"], "cuda", "meta must be a CPU tensor"),
    "v2-gpu-then-cpu-image": ("prepare_images_v2", ["cuda", "cpu"], "cpu",
                              r"images\[1\] is on cpu but images\[0\] is on cuda"),
    "v2-cpu-then-gpu-image": ("prepare_images_v2", ["cpu", "cuda"], "cpu",
                              r"images\[1\] is on cuda:\d but images\[0\] is on cpu"),
    "v1-meta-on-gpu": ("prepare_images", ["cuda"], "cuda", "meta must be a CPU tensor"),
    "triton-kernel": ("triton", [], "cpu", None),
}
CUDA_CASES = [name for name, (_, devices, meta_device, _) in CASES.items() if "cuda" in (*devices, meta_device)]


def call(name: str, filter_: int) -> str:
    """One case's op call; the message of the RuntimeError it raised, or '' if it returned."""
    from fastmbconv import _ext

    from .prepare_inputs import v2_args

    op, devices, meta_device, _ = CASES[name]
    if op == "triton":
        run = launch_a_triton_kernel
    elif op == "torch":
        def run():
            return torch.ones(2, device=devices[0]) + torch.ones(3, device=devices[0])
    else:
        images, meta, f = v2_args(filter_)
        images = [images[0].to(device) for device in devices]
        base, _, key = op.partition("@")  # "op@KEY": that dispatch key's kernel, whatever the devices
        if base == "prepare_images":
            args = (images, torch.tensor(V1_META).to(meta_device), 3)
        else:
            args = (images, meta.to(meta_device), 7 if name == "cpu-control" else f)
        rest = (6, 7, torch.float16, [0.5] * 3, [0.25] * 3)
        overload = getattr(_ext.ops(), base).default

        def run():
            if key:
                keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
                return overload.redispatch(keys, *args, *rest)
            return overload(*args, *rest)
    try:
        run()
    except Exception as error:  # any other type is reported, not a death: the child goes on
        message = str(error).splitlines()[0] if str(error) else "(empty message)"
        return message if isinstance(error, RuntimeError) else f"{type(error).__name__}: {message}"
    return ""


def launch_a_triton_kernel() -> None:
    """One launch of the package's affine_act_pool kernel, on the GPU where there is one (else
    under the interpreter), autotuning off; raises if it was not counted."""
    from fastmbconv._environ import environment
    from fastmbconv.kernels import affine_act_pool as aap
    from fastmbconv.kernels._launch import count_launches

    device = "cuda" if torch.cuda.is_available() else "cpu"
    y = torch.ones(1, 4, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), environment([("FASTMBCONV_AUTOTUNE", "0")]), count_launches() as launches:
        aap.affine_act_pool(y, torch.ones(4, device=device), torch.zeros(4, device=device))
    if launches != {aap.OP: 1}:
        raise RuntimeError(f"triton-kernel: expected one {aap.OP} launch, counted {dict(launches)}")


#: A child's time limit: a hung case must end well inside its GPU check step (tests-quick's
#: 180-300 s), or the step's stop would lose every outcome.
CHILD_TIMEOUT_S = 60


def child(filter_: int, cases: list[str], first: tuple, timeout: float) -> tuple:
    """(exit status, or None where it timed out; stdout; stderr) of one child running ``cases``."""
    argv = [sys.executable, "-X", "faulthandler", "-m", "tests.prepare_device_cases", str(filter_),
            *(f"--first={name}" for name in first), *cases]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as expired:  # its partial output comes as bytes
        text = [b.decode(errors="replace") if isinstance(b, bytes) else (b or "") for b in (expired.stdout, expired.stderr)]
        return None, *text
    return r.returncode, r.stdout, r.stderr


def fault_report(stderr: str) -> str:
    """faulthandler's report in a child's stderr (the fault and the Python frames, without the
    list of extension modules after them), or the stderr's end."""
    at = stderr.find("Fatal Python error")
    if at < 0:
        return stderr[-600:]
    return stderr[at:].split("\nExtension modules:")[0].strip()


def run(names: list[str], filter_: int, timeout: float = CHILD_TIMEOUT_S, first: tuple = (), trace: bool = True,
        max_deaths: int = 3) -> dict[str, str]:
    """Each case's outcome from child processes: 'raised: <message>' (an error of another type
    than RuntimeError names its type), 'returned', or, for the case a child died in, 'died (exit
    status N ...)' (a negative status is the signal: -11 a segfault) or 'timed out', with the
    fault's report and Python frames; the next child goes on after it. Every child runs the
    cases ``first`` before its own (their outcomes are the last child's); if one of them dies,
    the cases left are not run. A child that fails after its last case adds that to the case's
    outcome. A GPU check's step has its time counted and on the GPU every case may die alike,
    so only the first case that dies is run again under gdb (with ``trace``; up to a minute),
    and after ``max_deaths`` deaths the cases left are not run."""
    outcomes: dict[str, str] = {}
    pending = list(names)
    deaths = 0
    while pending:
        status, out, err = child(filter_, pending, first, timeout)
        started, finished = None, set()
        for line in out.splitlines():
            kind, _, rest = line.partition(" ")
            name, _, message = rest.partition(": ")
            if kind == "start":
                started = name
            elif kind in ("raised", "returned"):
                outcomes[name] = f"raised: {message}" if kind == "raised" else "returned"
                finished.add(name)
        if started is None or started in finished:  # ended before its first case, or after its last
            if status != 0:
                ended = f"timed out (after {timeout:g} s)" if status is None else f"exited with {status}"
                note = f"the child {ended}: {fault_report(err)}"
                if started is None:
                    for name in pending:
                        outcomes.setdefault(name, f"not run: {note}")
                else:
                    outcomes[started] += f"; then {note}"
            break
        if status is None:
            outcomes[started] = f"timed out (after {timeout:g} s): {fault_report(err)}"
        else:
            ran = [*first, *pending[:pending.index(started) + 1]] if started in pending else [*first[:first.index(started) + 1]]
            frames = native_backtrace(ran, filter_, min(timeout, 60)) if trace and not deaths else ""
            outcomes[started] = (f"died (exit status {status}; TORCH_SHOW_CPP_STACKTRACES="
                                 f"{os.environ.get('TORCH_SHOW_CPP_STACKTRACES')!r}): {fault_report(err)}{frames}")
        deaths += 1
        if started in first:
            for name in pending:
                outcomes.setdefault(name, f"not run: {started}, run first, died")
            break
        pending = pending[pending.index(started) + 1:]
        if deaths == max_deaths:
            for name in pending:
                outcomes[name] = f"not run: {deaths} children died already"
            break
    return outcomes


def native_backtrace(cases: list[str], filter_: int, timeout: float) -> str:
    """The C frames of a child that died, from its cases (up to the one it died in) run again
    under gdb (faulthandler shows only Python frames); otherwise what kept them away. At most a
    minute: a GPU check's step has its time counted."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return "\n    (no gdb here for the C frames)"
    try:
        r = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 30", "--args", sys.executable, "-m",
                            "tests.prepare_device_cases", str(filter_), *cases],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return f"\n    (gdb's rerun did not end within {timeout:g} s)"
    except OSError as error:
        return f"\n    (gdb did not start: {error})"
    frames = [line for line in r.stdout.splitlines() if line.startswith("#")]
    if not frames:
        last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
        return f"\n    (gdb's rerun did not crash; its last line: {last})"
    return "\n    gdb backtrace:\n      " + "\n      ".join(frames)


def failures(outcomes: dict[str, str]) -> list[str]:
    """The cases whose outcome is not their error (a case with none must return), each with what
    happened."""
    def as_expected(name: str, outcome: str) -> bool:
        error = CASES[name][3]
        if error is None:
            return outcome == "returned"  # a child that failed after it added "; then ..."
        return outcome.startswith("raised: ") and re.search(error, outcome) is not None and "; then " not in outcome

    return [f"{name}: {outcome}" for name, outcome in outcomes.items() if not as_expected(name, outcome)]


def _segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def _exit_with_a_segfault() -> None:
    import atexit

    atexit.register(_segfault)


#: Names the runner's tests use: a case that crashes its child, one that hangs, and one that
#: returns but leaves the child to crash on its way out.
HARNESS_TESTS = {"segfault": _segfault, "segfault-again": _segfault, "hang": lambda: time.sleep(3600),
                 "exit-segfault": _exit_with_a_segfault}


def main(argv: list[str]) -> int:
    filter_ = int(argv[0])
    first = [arg.partition("=")[2] for arg in argv[1:] if arg.startswith("--first=")]
    names = first + [arg for arg in argv[1:] if not arg.startswith("--first=")]
    for name in names:
        print(f"start {name}", flush=True)
        if name in HARNESS_TESTS:  # the harness's own tests
            HARNESS_TESTS[name]()
            message = ""
        else:
            message = call(name, filter_)
        if torch.cuda.is_initialized():  # no launch was made, and none faulted: a fault ends the child here
            torch.cuda.synchronize()
        print(f"raised {name}: {message}" if message else f"returned {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
