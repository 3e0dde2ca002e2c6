"""Every Triton launch of the package goes through :func:`launch`.

It does these things, so no launcher repeats them:

- counts the launch (process-wide and in every open :func:`count_launches` block): tests prove
  that a kernel really ran by counting its launches, never by inferring it from the result;
- makes the input's GPU current (Triton launches on the *current* device and its stream, so a
  tensor on cuda:1 launched while cuda:0 is current would fault);
- names the fix when a kernel is first launched inside a CUDA-graph capture: Triton loads a
  kernel's module on its first launch, which CUDA may refuse while a stream is captured;
- holds a lock per autotuner around its launches: a Triton autotuner keeps the call's arguments
  on itself while it benchmarks and clears them when any call ends, so two threads
  (DataParallel's replicas, a server's request threads) tuning or launching the same autotuner
  at once would break each other's tuning;
- gives an autotuner its picks for the launch's kind of GPU (:func:`_use_picks_for`);
- asks Triton for floating-point contraction (:data:`LAUNCH_OPTIONS`);
- while a :func:`record_launches` block is open, records the launch instead of running it.
  The static kernel report runs a whole forward on ``meta`` tensors this way and then compiles
  exactly the specialisations that would have run.

Torch-side work that stands in for a kernel (a fallback GEMM) is counted with
:func:`record_launch`.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

_lock = threading.Lock()
_autotuner_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # autotuner -> RLock (module docstring)
_picks_by_gpu: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # autotuner -> {capability: picks}
_totals: Counter = Counter()
_active: list[Counter] = []
_state = threading.local()  # .recorder: list of LaunchRecord or None; .layer: str or None

# Compile options of every launch. The kernels are written for fused multiply-adds (a depthwise
# tap is one FFMA); Triton 3.9 warns when this is left to its default, and 3.10 turns the default
# off. TRITON_FORCE_DISABLE_FP_FUSION=1 still wins.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


@dataclass(frozen=True)
class LaunchRecord:
    """One launch as the launcher would have made it."""

    op: str  # the counted name, e.g. "dwconv_bn_act"
    layer: Optional[str]  # the model layer that made it (see :func:`layer_scope`), if known
    kernel: Any  # the @triton.jit function, or the triton.autotune wrapper around it
    grid: Union[tuple, Callable[[dict], tuple]]  # a callable of the config for autotuned kernels
    args: dict  # runtime arguments by parameter name (tensors and scalars)
    constexprs: dict  # compile-time arguments, with num_warps/num_stages when the config is fixed


def record_launch(name: str, count: int = 1) -> None:
    """Note ``count`` launches of ``name`` (in the totals and every open counter). Skipped while
    dynamo traces (it cannot trace the lock): the launchers run inside custom ops and count at
    run time, but torch-side stand-ins are traced inline."""
    if torch.compiler.is_compiling():
        return
    with _lock:
        _totals[name] += count
        for counter in _active:
            counter[name] += count


def launch_counts() -> Counter:
    """A copy of the launches recorded since the process started."""
    with _lock:
        return Counter(_totals)


@contextlib.contextmanager
def count_launches() -> Iterator[Counter]:
    """Yield a Counter that receives every launch made inside the ``with`` block (from any
    thread). Counters may nest and overlap: each leaves by identity, since two counters that saw
    the same launches compare equal."""
    counter: Counter = Counter()
    with _lock:
        _active.append(counter)
    try:
        yield counter
    finally:
        with _lock:
            del _active[next(i for i, c in enumerate(_active) if c is counter)]


def current_layer() -> Optional[str]:
    """The layer named by the innermost open :func:`layer_scope` in this thread, or None."""
    return getattr(_state, "layer", None)


def recording() -> bool:
    """True inside :func:`record_launches` (in this thread)."""
    return getattr(_state, "recorder", None) is not None


@contextlib.contextmanager
def record_launches() -> Iterator[list]:
    """Yield a list that receives a :class:`LaunchRecord` for every launch inside the block;
    nothing is launched. Ops then call their launchers directly (see :func:`call_op`), so the
    block runs on ``meta`` tensors and touches no device."""
    previous = getattr(_state, "recorder", None)
    _state.recorder = []
    try:
        yield _state.recorder
    finally:
        _state.recorder = previous


@contextlib.contextmanager
def forced_config(tuned, config) -> Iterator[None]:
    """Inside the block, launches that would choose between ``tuned``'s configs (a
    ``triton.autotune`` wrapper) take ``config`` (one of its ``triton.Config``), autotuning on or
    off: the tests launch every entry of a config list explicitly this way, on a GPU and under
    the interpreter alike."""
    previous = getattr(_state, "forced", None)
    _state.forced = (tuned, {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages})
    try:
        yield
    finally:
        _state.forced = previous


@contextlib.contextmanager
def layer_scope(name: str) -> Iterator[None]:
    """Attribute the launches inside the block to the model layer ``name`` (for the report).
    A no-op under ``torch.compile``."""
    if torch.compiler.is_compiling():
        yield
        return
    previous = getattr(_state, "layer", None)
    _state.layer = name
    try:
        yield
    finally:
        _state.layer = previous


def call_op(op, launcher, *args):
    """Call the custom op ``op``, or its ``launcher`` directly where the op's dispatch would add
    nothing: while recording (a custom op on ``meta`` tensors would run its fake implementation
    and record nothing), and for a plain eager call without autograd, where the dispatch cost
    about 20 µs a launch on a CPU host, most of a small kernel's time. ``torch.compile``, fake
    tensors, dispatch modes, functorch transforms, autograd, ``torch.jit.trace`` and the profiler
    keep the op (its fake implementation, its clear error where a gradient is asked for, its
    record in the trace or the profile), and so do ``meta`` tensors. A launcher that writes an
    input in place bumps its version itself, as the op would."""
    if recording() or _plain_eager(args[0]):
        return launcher(*args)
    return op(*args)


def _plain_eager(x) -> bool:
    return (type(x) is torch.Tensor and not x.is_meta and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and not torch._C._are_functorch_transforms_active()
            and not torch._C._get_tracing_state()  # torch.jit.trace records the op, not raw writes
            and not torch.autograd._profiler_enabled())  # the profiler names kernels by their op's event


def _check_launchable(op: str, t: torch.Tensor) -> None:
    """CPU tensors run only under the interpreter; without it a launch fails with '0 active drivers'."""
    from ._utils import interpreting

    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise RuntimeError(
        f"{op}: the Triton kernel needs a CUDA tensor, or TRITON_INTERPRET=1 (set before triton "
        f"is imported) for CPU tensors; got a tensor on {t.device}"
    )


_tuned_keys: set = set()


def select_kernel(tuned, plain, key: tuple, heuristic: dict, on: torch.Tensor):
    """(kernel, config constexprs) for one launch: the autotuner (which picks its own config)
    where autotuning is on, else ``plain`` with the ``heuristic`` config.

    Autotuning is off under the interpreter and with ``FASTMBCONV_AUTOTUNE=0``. During CUDA-graph
    capture a shape that was never tuned outside capture takes the heuristic config, because
    benchmarking inside a capture fails (it synchronises and allocates); ``key`` must therefore
    hold everything the autotuner keys on, tensor dtypes included. That heuristic kernel must
    itself have run outside the capture, or :func:`launch` may raise: warm every shape up once
    before capturing, which also captures the tuned configs. A shape counts as tuned per kind of
    GPU (``on``'s), as the picks are kept (:func:`_use_picks_for`). Inside :func:`forced_config`,
    that config."""
    from ._utils import cuda_capturing, use_autotune

    forced = getattr(_state, "forced", None)
    if forced is not None and forced[0] is tuned:
        return plain, dict(forced[1])
    if not use_autotune():
        return plain, heuristic
    key = key + (gpu_kind(on),)
    if cuda_capturing() and key not in _tuned_keys:
        return plain, heuristic
    if getattr(_state, "recorder", None) is None:  # a recorded launch (record_launches) tunes nothing
        _tuned_keys.add(key)
    return tuned, {}


def _autotuner_lock(autotuner) -> threading.RLock:
    """The lock of one autotuner: a thread tuning one kernel (seconds) holds up no other's."""
    with _lock:
        lock = _autotuner_locks.get(autotuner)
        if lock is None:
            lock = _autotuner_locks[autotuner] = threading.RLock()
        return lock


def gpu_kind(t: torch.Tensor):
    """The compute capability of ``t``'s GPU, or None off CUDA."""
    from ._utils import cuda_capability, cuda_index

    return cuda_capability(cuda_index(t.device)) if t.is_cuda else None


def _use_picks_for(autotuner, on: torch.Tensor) -> None:
    """Point ``autotuner`` at its picks for ``on``'s kind of GPU (under the autotuner's lock).
    Triton keeps one dict of picks per autotuner, keyed by the shapes and dtypes alone, so in a
    process with two kinds of GPU a config tuned on one would be launched on the other, where it
    may be slow or need more shared memory than it has. (Triton's picks on disk are already kept
    per GPU target.) Off CUDA, Triton's own dict."""
    kind = gpu_kind(on)
    if kind is not None:
        autotuner.cache = _picks_by_gpu.setdefault(autotuner, {}).setdefault(kind, {})


def launch(op: str, kernel, grid, args: dict, constexprs: dict, on: torch.Tensor) -> None:
    """Launch ``kernel[grid](**args, **constexprs)`` on ``on``'s device, counted as ``op``; or
    record it inside :func:`record_launches`."""
    recorder = getattr(_state, "recorder", None)
    if recorder is not None:
        recorder.append(LaunchRecord(op, getattr(_state, "layer", None), kernel, grid, dict(args),
                                     dict(constexprs)))
        return
    from triton.runtime.autotuner import Autotuner  # here: importing this module stays free of triton

    _check_launchable(op, on)
    record_launch(op)
    device = torch.cuda.device(on.device) if on.is_cuda else contextlib.nullcontext()
    tuned = isinstance(kernel, Autotuner)
    with device, (_autotuner_lock(kernel) if tuned else contextlib.nullcontext()):
        if tuned:
            _use_picks_for(kernel, on)
        try:
            kernel[grid](**args, **constexprs, **LAUNCH_OPTIONS)
        except RuntimeError as error:
            if "stream is capturing" not in str(error):
                raise
            raise RuntimeError(
                f"{op}: this kernel was first launched inside a CUDA-graph capture, and Triton "
                f"must load a kernel's module on its first launch, which CUDA refused during the "
                f"capture (the capture is now invalid). Run the forward once outside the capture "
                f"with the same shapes, dtypes, memory format and valid_sizes, then capture. (If "
                f"this thread was not capturing, another thread was, in torch.cuda.graph's default "
                f"'global' mode, which forbids a first launch in every thread: warm up before any "
                f"capture, or capture with capture_error_mode='thread_local'.)"
            ) from error
