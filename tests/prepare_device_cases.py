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
#: (``run(..., first=["triton-kernel"])``), it tells whether the checks crash only in a process
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
    except RuntimeError as error:
        return str(error).splitlines()[0] or "(empty message)"
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


def run(names: list[str], filter_: int, timeout: float = 300, first: tuple = (), trace: bool = True,
        max_deaths: int = 3) -> dict[str, str]:
    """Each case's outcome from child processes: 'raised: <message>', 'returned', or 'died (exit
    status N)' for the case a child died in, with its stderr's end (a negative status is the
    signal: -11 a segfault); the next child goes on after it. Every child runs the cases
    ``first`` before its own (their outcomes are the last child's); if one of them dies, the
    cases left are not run. A GPU check's step has its time counted and on the GPU every case
    may die alike, so only the first case that dies is run again under gdb (with ``trace``; up to
    a minute), and after ``max_deaths`` deaths the cases left are not run."""
    outcomes: dict[str, str] = {}
    pending = list(names)
    deaths = 0
    while pending:
        r = subprocess.run([sys.executable, "-m", "tests.prepare_device_cases", str(filter_),
                            *(f"--first={name}" for name in first), *pending],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO)
        started, finished = None, set()
        for line in r.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            name, _, message = rest.partition(": ")
            if kind == "start":
                started = name
            elif kind in ("raised", "returned"):
                outcomes[name] = f"raised: {message}" if kind == "raised" else "returned"
                finished.add(name)
        if started is None or started in finished:  # died before its first case, or after its last
            for name in pending:
                outcomes.setdefault(name, f"not run: the child exited with {r.returncode}: {r.stderr[-600:]}")
            break
        frames = native_backtrace(started, filter_, min(timeout, 60), first) if trace and not deaths else ""
        outcomes[started] = (f"died (exit status {r.returncode}; TORCH_SHOW_CPP_STACKTRACES="
                             f"{os.environ.get('TORCH_SHOW_CPP_STACKTRACES')!r}): {r.stderr[-600:]}{frames}")
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


def native_backtrace(name: str, filter_: int, timeout: float, first: tuple = ()) -> str:
    """The C frames of a case that died, from the case run again alone under gdb where there is
    one (Python's faulthandler shows only Python frames); '' where gdb is missing or fails. At
    most a minute a case: a GPU check's step has its time counted."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return ""
    try:
        r = subprocess.run([gdb, "-batch", "-ex", "run", "-ex", "bt 30", "--args", sys.executable, "-m",
                            "tests.prepare_device_cases", str(filter_), *(f"--first={n}" for n in first if n != name),
                            name],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"\n    (gdb did not run: {error})"
    frames = [line for line in r.stdout.splitlines() if line.startswith("#")]
    return "\n    gdb backtrace:\n      " + "\n      ".join(frames) if frames else ""


def failures(outcomes: dict[str, str]) -> list[str]:
    """The cases whose outcome is not their error (a case with none must return), each with what
    happened."""
    def as_expected(name: str, outcome: str) -> bool:
        error = CASES[name][3]
        if error is None:
            return outcome == "returned"
        return outcome.startswith("raised: ") and re.search(error, outcome) is not None

    return [f"{name}: {outcome}" for name, outcome in outcomes.items() if not as_expected(name, outcome)]


def main(argv: list[str]) -> int:
    filter_ = int(argv[0])
    first = [arg.partition("=")[2] for arg in argv[1:] if arg.startswith("--first=")]
    names = first + [arg for arg in argv[1:] if not arg.startswith("--first=")]
    for name in names:
        print(f"start {name}", flush=True)
        if name.startswith("segfault"):  # the harness's own tests: a crash in a case
            import ctypes
            ctypes.string_at(0)
        message = call(name, filter_)
        if torch.cuda.is_initialized():  # no launch was made, and none faulted: a fault ends the child here
            torch.cuda.synchronize()
        print(f"raised {name}: {message}" if message else f"returned {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
