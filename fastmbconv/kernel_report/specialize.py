"""The exact specialisation triton's runtime would compile for a recorded launch.

The runtime's own code does the work: ``create_function_from_signature`` builds the same binder
``JITFunction.run`` uses (``specialize_impl`` per argument: ``tt.divisibility=16`` on pointers
whose address and ints whose value is a multiple of 16, ints equal to 1 as constants, i32/i64 by
value, ``do_not_specialize`` honoured), and ``JITFunction._pack_args`` turns it into the
signature, constexprs and attributes ``triton.compile`` receives.

Meta tensors have no address, so each tensor argument is replaced by a stand-in whose
``data_ptr()`` is what the CUDA caching allocator would give: a 512-byte aligned base plus
``storage_offset * itemsize``.

An autotuned launch is expanded into one specialisation per config of the Autotuner's list
(config kwargs, num_warps, num_stages, ...), applied as ``Autotuner.run`` does; ``@heuristics``
wrappers compute their values afterwards, as ``Heuristics.run`` does. The launcher's compile
options (floating-point contraction) are added as it adds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..kernels._launch import LAUNCH_OPTIONS

TARGET_ARCH = 90
ALLOCATOR_ALIGNMENT = 512  # bytes; the CUDA caching allocator's block alignment


class DevicePointer:
    """Stands in for a tensor argument: triton reads only ``data_ptr()`` and ``dtype``."""

    def __init__(self, address: int, dtype: torch.dtype):
        self.address = address
        self.dtype = dtype

    def data_ptr(self) -> int:
        return self.address


def modelled_address(t: torch.Tensor) -> int:
    return ALLOCATOR_ALIGNMENT + t.storage_offset() * t.element_size()


@dataclass
class Variant:
    """One compilable specialisation of a launch."""

    jit: Any  # the triton JITFunction
    config: dict  # the config's kwargs (block sizes) plus num_warps/num_stages actually used
    kwargs: dict  # every argument by name, as the JITFunction receives it (tensors as DevicePointer)
    signature: dict
    constexprs: dict
    attrs: dict
    options: Any  # the backend's parsed options (CUDAOptions)

    @property
    def num_warps(self) -> int:
        return int(self.options.num_warps)

    @property
    def num_stages(self) -> int:
        return int(self.options.num_stages)

    def key(self) -> tuple:
        """In-process identity of the compile: same JIT function, signature, constexprs,
        attributes and options compile to the same code."""
        return (self.jit.cache_key, repr(sorted(self.signature.items())), repr(sorted(self.constexprs.items())),
                repr(sorted(self.attrs.items())), self.options.hash())


def target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", TARGET_ARCH, 32)


_BACKEND = None


def backend():
    global _BACKEND
    if _BACKEND is None:
        from triton.compiler import make_backend

        _BACKEND = make_backend(target())
    return _BACKEND


def unwrap(kernel) -> tuple[Any, Optional[list], list, Any]:
    """(JITFunction, the Autotuner's configs or None, heuristics value dicts outermost first,
    the Autotuner's early_config_prune or None)."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction

    configs, heuristics, prune = None, [], None
    k = kernel
    while not isinstance(k, JITFunction):
        if isinstance(k, Autotuner):
            if configs is None:
                configs, prune = list(k.configs), getattr(k, "early_config_prune", None)
        elif isinstance(k, Heuristics):
            heuristics.append(k.values)
        elif not hasattr(k, "fn"):
            raise TypeError(f"cannot find the @triton.jit function inside {type(k).__name__}")
        k = k.fn
    return k, configs, heuristics, prune


def _stand_in(v):
    if isinstance(v, torch.Tensor):
        return DevicePointer(modelled_address(v), v.dtype)
    if isinstance(v, (tuple, list)):  # triton accepts tuples of arguments
        return type(v)(_stand_in(x) for x in v)
    return v


def runtime_kwargs(args: dict, constexprs: dict) -> dict:
    """The launch's arguments with tensors (also inside tuples) replaced by address stand-ins."""
    return {name: _stand_in(v) for name, v in {**args, **constexprs}.items()}


def _runtime_options(jit) -> dict:
    """The extra options ``JITFunction.run`` adds before binding (triton 3.9)."""
    from triton import knobs

    out = {"debug": bool(jit.debug or knobs.runtime.debug)}
    comp = knobs.compilation
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):
        if hasattr(comp, name):
            out[name] = getattr(comp, name)
    return out


def specialize(jit, kwargs: dict, config_kwargs: Optional[dict] = None, heuristics=()) -> Variant:
    """The Variant the runtime would compile for ``jit[grid](**kwargs, **config_kwargs)``."""
    from triton.runtime.jit import create_function_from_signature

    kw = dict(kwargs)
    if config_kwargs:
        kw.update(config_kwargs)
    for values in heuristics:  # Heuristics.run: each value from all args so far
        for name, fn in values.items():
            kw[name] = fn(dict(kw))
    if config_kwargs is not None:
        config = {k: v for k, v in config_kwargs.items() if v is not None and not (k == "num_ctas" and v == 1)}
    else:  # a fixed launch: show its block sizes
        config = {k: v for k, v in kw.items() if k.startswith("BLOCK") or k in ("num_warps", "num_stages")}
    kw.update(_runtime_options(jit))
    kw.update(LAUNCH_OPTIONS)  # as kernels._launch.launch passes them
    be = backend()
    binder = create_function_from_signature(jit.signature, jit.params, be)
    bound_args, specialization, options = binder(**kw)
    options, signature, constexprs, attrs = jit._pack_args(be, kw, bound_args, specialization, options)
    config["num_warps"] = options.num_warps
    config["num_stages"] = options.num_stages
    return Variant(jit, config, kw, signature, constexprs, attrs, options)


def variants(kernel, args: dict, constexprs: dict) -> tuple[list[Variant], bool]:
    """Every specialisation a launch can run: one per autotune config the autotuner would try
    (after its ``early_config_prune``, as the runtime does), or the single one.
    Returns (variants, autotuned)."""
    jit, configs, heuristics, prune = unwrap(kernel)
    kwargs = runtime_kwargs(args, constexprs)
    if configs is None:
        return [specialize(jit, kwargs, None, heuristics)], False
    if prune is not None:  # the launchers pass every argument by name
        configs = prune(configs, {}, **{**args, **constexprs})
    return [specialize(jit, kwargs, c.all_kwargs(), heuristics) for c in configs], True


def grid_of(grid, variant: Variant) -> tuple[int, int, int]:
    """The launch grid for this variant (grid callables take the config's meta dict)."""
    meta = {k: v for k, v in variant.kwargs.items()}
    meta.update(variant.config)
    g = grid(meta) if callable(grid) else grid
    g = tuple(int(x) for x in g) + (1, 1, 1)
    return g[:3]
