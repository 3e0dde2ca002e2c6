"""BatchNorm folded into the weights the fused kernels take, cached on the model.

Per block, the GEMM weights (expand, project, and the SE's two FCs) are in the compute dtype and
every per-channel vector (biases, depthwise weights and scale/shift) is fp32; in fp16/bf16 the
depthwise weights are also laid out for the tensor-core depthwise kernel (``taps_diag``). The
fold is cached per compute dtype and redone whenever a parameter, buffer or submodule was
replaced or modified in place. Under ``torch.compile`` the fold is traced into the graph instead
(dynamo cannot trace the cache check): the compiled model then always reads the live weights,
and with ``torch._inductor.config.freezing = True`` inductor constant-folds it away.

A CUDA graph holds the addresses of the folded tensors its capture read, so those are never
freed: a later refold writes its values into them (replays then see the new weights). A fold
needed inside a capture is recorded into the graph and not cached, since its values exist only
once a replay has run. Fold tensors never alias a parameter, so writing into them is safe.
A forward on another stream than the fold's waits for the fold once (:class:`..streams.StreamShared`).
"""
from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from ..kernels import _utils
from ..kernels.dwconv_bn_act import taps_diag, taps_major
from ..kernels._expand_dw_tiles import pad_taps
from ..layers import ConvBN
from ..streams import StreamShared


@dataclass
class FoldedBlock:
    """One MBConv or DepthwiseSeparable block with BN folded in."""

    kernel: int
    stride: int
    has_skip: bool
    w_expand: Optional[torch.Tensor]  # (mid, in), compute dtype; None without expansion
    b_expand: Optional[torch.Tensor]  # (mid,) fp32
    w_dw: torch.Tensor  # (k*k, mid) fp32, taps-major
    w_dw_fused: torch.Tensor  # expand_dwconv's taps: w_dw_mma, else w_dw, rows padded to whole channel blocks
    w_dw_mma: Optional[torch.Tensor]  # (k*k, mid, 16) fp16/bf16 diagonal blocks (tensor cores); None for fp32
    w_dw_conv: torch.Tensor  # (mid, 1, k, k), compute dtype: the depthwise conv on cuDNN (FASTMBCONV_DEPTHWISE_IMPL)
    dw_scale: torch.Tensor  # (mid,) fp32
    dw_shift: torch.Tensor  # (mid,) fp32
    se_w_reduce: torch.Tensor  # (R, mid), compute dtype
    se_b_reduce: torch.Tensor  # fp32
    se_w_expand: torch.Tensor  # (mid, R), compute dtype
    se_b_expand: torch.Tensor  # fp32
    w_project: torch.Tensor  # (out, mid), compute dtype
    b_project: torch.Tensor  # (out,) fp32


@dataclass
class FoldedModel:
    stem_weight: torch.Tensor  # (3*3*in, C) fp32, taps-major
    stem_bias: torch.Tensor  # (C,) fp32
    stages: list[list[FoldedBlock]]
    head_weight: Optional[torch.Tensor]  # (head, C), compute dtype; None without a head conv
    head_bias: Optional[torch.Tensor]  # (head,) fp32


def bn_scale_shift(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as fp32 ``y = x * scale + shift``."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    shift = bn.bias.float() - bn.running_mean.float() * scale
    return scale, shift


def _fold_1x1(part: ConvBN, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift = bn_scale_shift(part.bn)
    w = part.conv.weight.float().reshape(part.conv.out_channels, -1) * scale[:, None]
    return w.to(dtype).contiguous(), shift.contiguous()


def fold_block(block, dtype: Optional[torch.dtype] = None) -> FoldedBlock:
    """Fold one block; GEMM weights in ``dtype`` (default: the block's own)."""
    p = block.parts()
    dtype = dtype or p.depthwise.conv.weight.dtype
    w_expand = b_expand = None
    if p.expand is not None:
        w_expand, b_expand = _fold_1x1(p.expand, dtype)
    dw_scale, dw_shift = bn_scale_shift(p.depthwise.bn)
    w_project, b_project = _fold_1x1(p.project, dtype)
    C, R, k = p.mid_channels, p.se.conv_reduce.out_channels, p.kernel
    w_dw = taps_major(p.depthwise.conv.weight)
    w_dw_mma = taps_diag(w_dw, dtype) if dtype in (torch.float16, torch.bfloat16) else None
    return FoldedBlock(
        kernel=k, stride=p.stride, has_skip=p.has_skip, w_expand=w_expand, b_expand=b_expand,
        w_dw=w_dw, w_dw_mma=w_dw_mma, w_dw_fused=pad_taps(w_dw if w_dw_mma is None else w_dw_mma),
        w_dw_conv=p.depthwise.conv.weight.to(dtype, copy=True).contiguous(),
        dw_scale=dw_scale.contiguous(), dw_shift=dw_shift.contiguous(),
        se_w_reduce=p.se.conv_reduce.weight.reshape(R, C).to(dtype, copy=True).contiguous(),
        se_b_reduce=p.se.conv_reduce.bias.to(torch.float32, copy=True),
        se_w_expand=p.se.conv_expand.weight.reshape(C, R).to(dtype, copy=True).contiguous(),
        se_b_expand=p.se.conv_expand.bias.to(torch.float32, copy=True),
        w_project=w_project, b_project=b_project,
    )


def fold_model(model, dtype: Optional[torch.dtype] = None) -> FoldedModel:
    """Fold every BN of ``model`` (no caching; see :func:`folded`). ``dtype`` is the compute
    dtype of the activations and GEMM weights (default: the model's)."""
    with torch.no_grad():
        scale, shift = bn_scale_shift(model.bn1)
        w = model.conv_stem.weight
        dtype = dtype or w.dtype
        head_weight = head_bias = None
        if model.has_head_conv:
            head_weight, head_bias = _fold_1x1(ConvBN(model.conv_head, model.bn2, "conv_head", "bn2"), dtype)
        return FoldedModel(
            stem_weight=(w.float() * scale[:, None, None, None]).permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous(),
            stem_bias=shift.contiguous(),
            stages=[[fold_block(b, dtype) for b in stage] for stage in model.blocks],
            head_weight=head_weight, head_bias=head_bias,
        )


def fold_tensors(fold: FoldedModel) -> list[Optional[torch.Tensor]]:
    """Every tensor of a fold, in a fixed order (``None`` for an absent part)."""
    out = [fold.stem_weight, fold.stem_bias, fold.head_weight, fold.head_bias]
    for block in (b for stage in fold.stages for b in stage):
        out += [v for v in vars(block).values() if not isinstance(v, (int, bool))]
    return out


def refill(captured: FoldedModel, fresh: FoldedModel) -> bool:
    """Write ``fresh``'s values into ``captured``'s tensors; False (nothing written) where a
    tensor's shape, dtype or device differs (e.g. after ``reset_classifier``)."""
    old, new = fold_tensors(captured), fold_tensors(fresh)
    same = [(a is None) == (b is None) and (a is None or (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device))
            for a, b in zip(old, new)]
    if len(old) != len(new) or not all(same):
        return False
    with torch.inference_mode():  # the captured tensors may be inference tensors
        for a, b in zip(old, new):
            if a is not None:
                a.copy_(b)
    return True


_live_caches: "weakref.WeakSet[FoldCache]" = weakref.WeakSet()  # every model's cache, while it lives
_watching_steps = False


def _note_optimizer_step(optimizer, args, kwargs) -> None:
    """Mark stale the fold of every model whose parameters this step wrote. Fused optimizers
    (``AdamW(fused=True)``) and compiled steps write them in kernels that bump no version
    counter, so a snapshot of versions alone would keep the old fold. Models the step did not
    touch (a frozen teacher beside its student) keep theirs."""
    if not _live_caches:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for cache in list(_live_caches):
        if not stepped.isdisjoint(cache.parameter_ids):
            cache.stepped = True


def _start_watching_optimizer_steps() -> None:
    global _watching_steps
    if not _watching_steps:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_note_optimizer_step)
        _watching_steps = True


class FoldCache:
    """Folded weights per compute dtype, valid while the model's weights are unchanged.

    A snapshot records, for the model and every submodule (the list is taken once), the
    identity of each child module, parameter and buffer, and each tensor's ``data_ptr`` and
    ``_version``, and every BatchNorm's ``eps``. Any in-place edit (bumps ``_version``), ``.data``
    swap or ``.to()`` (moves ``data_ptr``), replaced parameter or submodule (new identity) or new
    BN eps makes the snapshot differ and forces a refold, as does a ``torch.optim`` step over
    any of the model's parameters (``stepped``). Writes that touch none of these need
    :func:`refold`: in-place edits through ``.data``, collectives that write parameters
    (``torch.distributed.broadcast``) and optimizer steps replayed from a CUDA graph (which run
    no hook).
    The cache holds its model weakly (it lives on the model: a strong reference would keep a
    deleted model's GPU memory until the cycle collector runs).
    Checking costs ~0.15 ms of host time on B0; CUDA-graph replays skip it entirely.
    Inference tensors have no version counter, so a model built under ``inference_mode`` is
    refolded on every call (correct, slower).

    ``captured``: the dtypes whose fold a CUDA-graph capture read. A refold writes into those
    (see :func:`refill`), or, where it cannot, warns and keeps them alive in ``kept`` for the
    model's lifetime (a graph may still read them)."""

    def __init__(self, model, previous: Optional["FoldCache"] = None):
        _start_watching_optimizer_steps()
        self.owner = weakref.ref(model)
        self.submodules = list(model.modules())[1:]
        self.batchnorms = [m for m in self.submodules if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.parameter_ids = frozenset(id(p) for p in model.parameters())
        self.stepped = False
        self.snapshot = self.take_snapshot()
        _live_caches.add(self)
        self.by_dtype: dict[torch.dtype, FoldedModel] = {}
        self.shared: dict[torch.dtype, StreamShared] = {}  # by_dtype's streams that may read it
        self.lock = threading.Lock()
        self.captured: set[torch.dtype] = set()
        self.kept: list[FoldedModel] = list(previous.kept) if previous is not None else []
        for dtype in sorted(previous.captured, key=str) if previous is not None else ():
            fresh = fold_model(model, dtype)
            previous.shared[dtype].wait_for_readers()  # forwards still queued on other streams read them
            if refill(previous.by_dtype[dtype], fresh):
                self.by_dtype[dtype] = previous.by_dtype[dtype]
                self.captured.add(dtype)
            else:
                warnings.warn(f"the weights folded for {dtype} that a CUDA graph captured cannot take the new "
                              f"fold (its device or shapes changed): that graph keeps replaying the old "
                              f"weights; capture it again", stacklevel=3)
                self.kept.append(previous.by_dtype[dtype])
                self.by_dtype[dtype] = fresh
            self.shared[dtype] = StreamShared(fold_tensors(self.by_dtype[dtype]))

    def __deepcopy__(self, memo) -> None:
        return None  # a copy of the model (deepcopy, pickle) folds its own weights when first run

    def __reduce__(self):
        return _no_fold_cache, ()

    def take_snapshot(self) -> Optional[tuple]:
        model = self.owner()
        if model is None:
            return None
        members = [v for m in (model, *self.submodules) for d in (m._modules, m._parameters, m._buffers)
                   for v in d.values()]
        tensors = [t for t in members if isinstance(t, torch.Tensor)]
        try:
            versions = [t._version for t in tensors]
        except RuntimeError:  # an inference tensor: untrackable
            return None
        eps = tuple(m.eps for m in self.batchnorms)
        return tuple(map(id, members)), tuple(t.data_ptr() for t in tensors), tuple(versions), eps

    def still_valid(self) -> bool:
        return not self.stepped and self.snapshot is not None and self.take_snapshot() == self.snapshot


def _no_fold_cache() -> None:
    return None


def refold(model, dtype: Optional[torch.dtype] = None) -> FoldedModel:
    """Fold the model's weights again, now, for edits the cache cannot see: in-place changes
    through ``.data`` (``p.data.mul_(2)``: ``.data`` has a version counter of its own, so the
    parameter's does not move; autograd cannot see such edits either), and parameters written
    by a collective (``torch.distributed.broadcast``, ``all_reduce``). Folds a CUDA graph
    captured are refilled in place, as after any other edit."""
    cache = getattr(model, "_fused_fold_cache", None)
    if cache is not None and cache.owner() is model:
        cache.snapshot = None  # never valid again: the next look folds anew (see folded)
    return folded(model, dtype)


def folded(model, dtype: Optional[torch.dtype] = None) -> FoldedModel:
    """The model's folded weights for compute ``dtype`` (default: the model's), from the cache
    on the model when its weights are unchanged. After changing the weights of a model whose
    fold a CUDA graph captured, call this (or run a forward outside the graph) before replaying."""
    dtype = dtype or model.conv_stem.weight.dtype
    if torch.compiler.is_compiling() or getattr(model, "_is_replica", False):
        # A DataParallel replica lives for one forward, holds its weights as plain attributes
        # (which a snapshot does not see) and starts with a copy of the original's __dict__.
        return fold_model(model, dtype)
    capturing = _utils.cuda_capturing()
    cache = getattr(model, "_fused_fold_cache", None)
    if cache is not None and cache.owner() is not model:
        cache = None  # another module's, reached through a shallow copy of its __dict__
    if cache is None or not cache.still_valid():
        if capturing:
            return fold_model(model, dtype)
        cache = FoldCache(model, previous=cache)
        # Bypass nn.Module.__setattr__: the cache is neither a parameter nor a submodule.
        object.__setattr__(model, "_fused_fold_cache", cache)
    if dtype not in cache.by_dtype:
        if capturing:
            return fold_model(model, dtype)
        with cache.lock:  # threads that find no fold: one folds, and its event comes with it
            if dtype not in cache.by_dtype:
                fold = fold_model(model, dtype)
                cache.shared[dtype] = StreamShared(fold_tensors(fold))
                cache.by_dtype[dtype] = fold
    if capturing:
        cache.captured.add(dtype)
    else:
        cache.shared[dtype].use()
    return cache.by_dtype[dtype]
