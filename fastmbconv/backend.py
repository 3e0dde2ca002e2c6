"""Which execution path a model call takes: the fused Triton kernels or the reference modules.

Selection, highest priority first:

1. :func:`use_backend` context manager (per thread; a ``threading.local``, which
   ``torch.compile`` can read and guard on, so switching backends recompiles instead of
   breaking the graph as a ``ContextVar`` lookup would);
2. :func:`set_backend` (process-wide);
3. the ``FASTMBCONV_BACKEND`` environment variable (``auto``, ``fused`` or ``reference``);
4. ``auto``.

``auto`` runs the fused path for eval-mode models on CUDA tensors when no gradient is needed
and no submodule has forward hooks, and the reference path otherwise (training, autograd, CPU
tensors, hooks). ``fused`` forces the fused
path and raises a clear error where it cannot run; on CPU it needs Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported). ``reference`` always runs the modules.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Literal

import torch

Backend = Literal["auto", "fused", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "fused", "reference")
ENV_VAR = "FASTMBCONV_BACKEND"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the fused kernels take

_global_backend: str | None = None
_thread_state = threading.local()  # .backend: the innermost use_backend() of this thread


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fastmbconv backend {name!r}; expected one of {BACKENDS}")
    return name


def get_backend() -> str:
    """The backend in force for this call."""
    ctx = getattr(_thread_state, "backend", None)
    if ctx is not None:
        return ctx
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get(ENV_VAR)
    if env:
        return _validate(env.strip().lower())
    return "auto"


def set_backend(name: Backend | None) -> None:
    """Set the process-wide backend; ``None`` returns to the environment variable / ``auto``."""
    global _global_backend
    _global_backend = None if name is None else _validate(name)


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Force a backend inside a ``with`` block."""
    previous = getattr(_thread_state, "backend", None)
    _thread_state.backend = _validate(name)
    try:
        yield
    finally:
        _thread_state.backend = previous


def _weights(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """The model's parameters. A ``DataParallel`` replica has none: it holds its broadcast
    copies of them as plain tensor attributes of each submodule."""
    if not getattr(model, "_is_replica", False):
        return model.parameters()
    return (t for m in model.modules() for t in vars(m).values() if isinstance(t, torch.Tensor))


def needs_autograd(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether autograd records a call of ``model`` on ``x`` (grad mode, and ``x`` or a weight
    requires grad)."""
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        return False
    return x.requires_grad or any(t.requires_grad for t in _weights(model))


def _hooked_submodule(model: torch.nn.Module) -> str | None:
    """What has forward hooks below the model itself (its own run on either path), or None:
    observers, pruning masks and feature taps expect to see their module run. The stage
    containers (``model.blocks`` and each ``model.blocks[i]``) are left out: no path calls them,
    the reference runs their blocks one by one."""
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "global module forward hooks are registered"
    blocks = getattr(model, "blocks", None)
    uncalled = frozenset(map(id, (blocks, *blocks))) if blocks is not None else frozenset()
    if _has_hooks_below(model, uncalled):  # a plain walk: named_modules() costs ~0.1 ms a call on B0
        name = next(n for n, m in model.named_modules()
                    if n and id(m) not in uncalled and (m._forward_hooks or m._forward_pre_hooks))
        return f"submodule {name!r} has forward hooks"
    return None


def _has_hooks_below(module: torch.nn.Module, uncalled: frozenset) -> bool:
    for child in module._modules.values():
        if child is None:
            continue
        if (child._forward_hooks or child._forward_pre_hooks) and id(child) not in uncalled:
            return True
        if _has_hooks_below(child, uncalled):
            return True
    return False


def fused_unavailable_reason(model: torch.nn.Module, x: torch.Tensor) -> str | None:
    """Why the fused path cannot run this call, or ``None`` if it can."""
    if model.training:
        return "the model is in training mode (the fused kernels are inference-only); call model.eval()"
    if needs_autograd(model, x):
        return (
            "autograd is recording and the input or parameters require grad; "
            "run under torch.inference_mode() or torch.no_grad()"
        )
    weight_dtype = model.conv_stem.weight.dtype
    if x.dtype not in KERNEL_DTYPES or weight_dtype not in KERNEL_DTYPES:
        return (f"the kernels compute in float32, float16 or bfloat16, not {x.dtype} (input) / "
                f"{weight_dtype} (weights)")
    from .kernels._utils import interpreting  # here: `import fastmbconv` imports no kernels module

    runnable = x.device.type in ("cuda", "meta") or (x.device.type == "cpu" and interpreting())
    if not runnable:  # meta: shapes only (fake kernels, or recorded launches)
        return (
            f"the input is on {x.device}; the fused Triton kernels need a CUDA tensor, or "
            "TRITON_INTERPRET=1 (set before triton is imported) for CPU tensors"
        )
    hooked = _hooked_submodule(model)  # last: the walk costs tens of µs
    if hooked is not None:
        return f"{hooked}, which the fused path would skip (it calls no submodule); remove them to run it"
    return None


def select_path(model: torch.nn.Module, x: torch.Tensor) -> str:
    """``"fused"`` or ``"reference"`` for this call, per the backend in force."""
    backend = get_backend()
    if backend == "reference":
        return "reference"
    reason = fused_unavailable_reason(model, x)
    if backend == "fused":
        if reason is not None:
            raise RuntimeError(f"fastmbconv backend 'fused' was forced but cannot run: {reason}")
        return "fused"
    # auto: CPU tensors stay on the reference path even under the interpreter, which is for tests.
    if reason is None and x.device.type == "cuda":
        return "fused"
    return "reference"
