"""Run one fused forward on ``meta`` tensors and record every kernel it would launch.

Triton launches come from :func:`fastmbconv.kernels._launch.record_launches`. Torch-side
kernels (stem conv, fills, casts, the classifier GEMM) are seen by a ``TorchDispatchMode``:
every aten op that would launch a kernel on a GPU is noted with the bytes of its distinct
input and output tensors. Not kernels: views (``OpOverload.is_view``), :data:`NO_KERNEL`
(allocation, metadata, detach), and ops whose tensors are all empty (CUDA launches nothing for
zero elements). Fills (:data:`FILL`) are flagged. A convolution counts as one launch (cuDNN
may run more than one kernel for it).

Meta is not CUDA in two respects that change the launches (listed in ``Recording.emulated``):

- the meta convolution returns a contiguous (NCHW) tensor where cuDNN returns channels_last for
  a channels_last input or weight: the recorder restrides the convolution output the way cuDNN
  would, so the kernels downstream see the strides they get on a GPU;
- ``choose_pointwise_impl`` answers for meta tensors inside ``record_launches()`` as it would
  on CUDA (``FASTMBCONV_POINTWISE_IMPL=torch`` then reports the torch fallback).

The forward runs twice and only the second is kept: the first folds BN into the weights, which
the fused path caches across calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .._environ import environment

NO_KERNEL = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
    "alias", "_reshape_alias", "set_", "resize_", "_local_scalar_dense", "is_same_size", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "_has_compatible_shallow_copy_type",
}
FILL = {"zeros", "zero_", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like",
        "new_full", "fill_", "fill"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TorchKernel:
    aten: str  # e.g. "aten.zeros.default"
    name: str  # the overload packet, e.g. "zeros"
    layer: Optional[str]
    hbm_bytes: int
    fill: bool
    after_triton: int  # Triton launches recorded before it (for ordering)
    shapes: list = field(default_factory=list)
    note: str = ""


@dataclass
class Recording:
    model_name: str
    batch: int
    dtype: str
    resolution: tuple
    launches: list  # LaunchRecord, in launch order
    torch_kernels: list  # TorchKernel, in launch order
    emulated: list = field(default_factory=list)  # what was made to behave as on CUDA


def storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage
        return ("tensor", id(t))


def distinct_bytes(tensors) -> int:
    """Bytes of distinct tensors, each once: views of one storage count the union of their
    element ranges (a launcher passes an input again as a placeholder)."""
    by_storage: dict = {}
    for t in tensors:
        if t.numel() == 0:
            continue
        by_storage.setdefault(storage_key(t), []).append(t)
    total = 0
    for views in by_storage.values():
        spans = sorted({(v.storage_offset(), v.storage_offset() + v.numel(), v.element_size()) for v in views})
        covered, end = 0, None
        for s, e, size in spans:
            if end is None or s >= end:
                covered += (e - s) * size
                end = e
            elif e > end:
                covered += (e - end) * size
                end = e
        total += covered
    return total


def current_layer() -> Optional[str]:
    """The layer the launchers are attributing launches to (for torch-side kernels)."""
    from fastmbconv.kernels import _launch

    if hasattr(_launch, "current_layer"):
        return _launch.current_layer()
    return getattr(getattr(_launch, "_state", None), "layer", None)  # no public accessor yet


def _cuda_conv_layout(inp, weight, out):
    """cuDNN returns channels_last when the input or the weight suggests it; meta does not."""
    from torch._prims_common import suggest_memory_format

    if (isinstance(out, torch.Tensor) and out.dim() == 4
            and torch.channels_last in (suggest_memory_format(inp), suggest_memory_format(weight))
            and not out.is_contiguous(memory_format=torch.channels_last)):
        return out.contiguous(memory_format=torch.channels_last)
    return out


class TorchKernels(TorchDispatchMode):
    """Notes every aten op that would launch a kernel (see the module docstring)."""

    def __init__(self, triton_launches: list):
        super().__init__()
        self.triton_launches = triton_launches
        self.kernels: list[TorchKernel] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in ("convolution", "_convolution"):
            out = _cuda_conv_layout(args[0], args[1], out)
        if getattr(func, "is_view", False) or name in NO_KERNEL:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if all(t.numel() == 0 for t in ins + outs):
            return out
        fill = name in FILL
        note = "one launch counted (cuDNN may run more)" if name in ("convolution", "_convolution") else ""
        self.kernels.append(TorchKernel(
            aten=str(func), name=name, layer=current_layer(),
            hbm_bytes=distinct_bytes(outs if fill else ins + outs), fill=fill,
            after_triton=len(self.triton_launches), shapes=[list(t.shape) for t in outs], note=note))
        return out


def build_model(model_name: str, dtype: str):
    """The model on ``meta`` (structure only), eval mode, in ``dtype``."""
    import fastmbconv as fm

    name = model_name if model_name.startswith("efficientnet") else f"efficientnet_{model_name}"
    builder = getattr(fm, name, None)
    if builder is None:
        raise ValueError(f"unknown model {model_name!r}")
    with torch.device("meta"):
        model = builder().eval()
    return name, model.to(DTYPES[dtype])


def record_forward(model_name: str, batch: int, dtype: str, resolution: Optional[int] = None,
                   autotune: bool = True) -> Recording:
    """Record the second of two fused forwards on meta. ``autotune=False`` records what the
    launchers do with ``FASTMBCONV_AUTOTUNE=0`` (their fixed heuristic configs)."""
    import fastmbconv as fm
    from fastmbconv.kernels._launch import record_launches

    name, model = build_model(model_name, dtype)
    res = int(resolution or getattr(model, "default_resolution", 224))
    x = torch.empty(batch, 3, res, res, device="meta", dtype=DTYPES[dtype])
    x = x.contiguous(memory_format=torch.channels_last)
    with environment([("FASTMBCONV_AUTOTUNE", None if autotune else "0")]), torch.no_grad(), fm.use_backend("fused"):
        with record_launches():
            model(x)  # folds BN once (cached by the fused path)
        with record_launches() as launches:
            mode = TorchKernels(launches)
            with mode:
                model(x)
    emulated = ["convolution output layout as cuDNN (channels_last in, channels_last out)",
                "choose_pointwise_impl as on CUDA"]
    return Recording(name, batch, dtype, (res, res), list(launches), mode.kernels, emulated)
