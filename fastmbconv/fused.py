"""Eval-mode fused forward of EfficientNet on the Triton kernels in :mod:`fastmbconv.kernels`.

Per MBConv block, four launches; the expanded tensor (the block's largest) is written by the
expand conv, read and rewritten once by the depthwise kernel, and read once by the project
conv, where eager PyTorch makes a separate pass for every BN, activation, pool and gate:

1. expand 1x1 with BN folded into the weights and an fp32 bias, written *before* SiLU
   (``pointwise_gated``, no gate);
2. depthwise kxk + BN + SiLU, applying the expand's SiLU as it loads, and summing the output per
   (sample, channel) for SE (``dwconv_bn_act`` with the pool epilogue);
3. the SE gate from those sums (``squeeze_excite_gate``, one tiny launch);
4. project 1x1 with the gate in its prologue and folded BN bias and the residual in its epilogue.

The stem is a torch conv with folded BN whose SiLU is likewise left to the first depthwise
kernel; the head conv + BN + SiLU + global average pool is one ``pointwise_gated`` launch that
writes only (N, C) sums. BN is folded once and cached on the model, keyed on every parameter's
and buffer's ``data_ptr`` and ``_version``, so in-place weight edits trigger a refold.
Activations are channels_last in the model's dtype (or autocast's, when autocast is on);
kernels accumulate in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import ragged
from .kernels._launch import layer_scope
from .kernels.dwconv_bn_act import dwconv_bn_act
from .kernels.pointwise_gated import pointwise_gated
from .kernels.squeeze_excite import squeeze_excite_gate
from .layers import DepthwiseSeparable, MBConv, conv_padding


# ---------------------------------------------------------------------- BN folding
@dataclass
class FoldedBlock:
    """One MBConv or DepthwiseSeparable block with BN folded in (weights in the model dtype for
    the GEMMs, everything per-channel in fp32)."""

    kernel: int
    stride: int
    has_skip: bool
    w_expand: Optional[torch.Tensor]  # (mid, in), None for DepthwiseSeparable
    b_expand: Optional[torch.Tensor]  # (mid,) fp32
    w_dw: torch.Tensor  # (mid, k, k) fp32
    dw_scale: torch.Tensor  # (mid,) fp32
    dw_shift: torch.Tensor  # (mid,) fp32
    se_w_reduce: torch.Tensor  # (R, mid) fp32
    se_b_reduce: torch.Tensor
    se_w_expand: torch.Tensor  # (mid, R) fp32
    se_b_expand: torch.Tensor
    w_project: torch.Tensor  # (out, mid), model dtype
    b_project: torch.Tensor  # (out,) fp32


@dataclass
class FoldedModel:
    stem_weight: torch.Tensor  # (C, in, 3, 3), model dtype
    stem_bias: torch.Tensor  # (C,), model dtype
    stages: list[list[FoldedBlock]]
    head_weight: Optional[torch.Tensor]  # (head, C), model dtype
    head_bias: Optional[torch.Tensor]  # (head,) fp32


def bn_scale_shift(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as fp32 ``y = x * scale + shift``."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    shift = bn.bias.float() - bn.running_mean.float() * scale
    return scale, shift


def _fold_1x1(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift = bn_scale_shift(bn)
    w = conv.weight.float().reshape(conv.out_channels, -1) * scale[:, None]
    return w.to(dtype).contiguous(), shift.contiguous()


def _fold_block(block, dtype: Optional[torch.dtype] = None) -> FoldedBlock:
    """Fold one block; GEMM weights in ``dtype`` (default: the block's own)."""
    dtype = dtype or block.conv_dw.weight.dtype
    if isinstance(block, MBConv):
        w_expand, b_expand = _fold_1x1(block.conv_pw, block.bn1, dtype)
        bn_dw, pw, bn_pw = block.bn2, block.conv_pwl, block.bn3
    elif isinstance(block, DepthwiseSeparable):
        w_expand = b_expand = None
        bn_dw, pw, bn_pw = block.bn1, block.conv_pw, block.bn2
    else:
        raise TypeError(f"the fused path does not know block type {type(block).__name__}")
    dw_scale, dw_shift = bn_scale_shift(bn_dw)
    w_project, b_project = _fold_1x1(pw, bn_pw, dtype)
    se = block.se
    C = block.conv_dw.out_channels
    R = se.conv_reduce.out_channels
    return FoldedBlock(
        kernel=block.kernel, stride=block.stride, has_skip=block.has_skip,
        w_expand=w_expand, b_expand=b_expand,
        w_dw=block.conv_dw.weight.float().reshape(C, block.kernel, block.kernel).contiguous(),
        dw_scale=dw_scale.contiguous(), dw_shift=dw_shift.contiguous(),
        se_w_reduce=se.conv_reduce.weight.float().reshape(R, C).contiguous(),
        se_b_reduce=se.conv_reduce.bias.float().contiguous(),
        se_w_expand=se.conv_expand.weight.float().reshape(C, R).contiguous(),
        se_b_expand=se.conv_expand.bias.float().contiguous(),
        w_project=w_project, b_project=b_project,
    )


def fold_model(model, dtype: Optional[torch.dtype] = None) -> FoldedModel:
    """Fold every BN of ``model`` (no caching; see :func:`folded`). ``dtype`` is the compute
    dtype of the activations and GEMM weights (default: the model's)."""
    with torch.no_grad():
        scale, shift = bn_scale_shift(model.bn1)
        w = model.conv_stem.weight
        dtype = dtype or w.dtype
        stem_weight = (w.float() * scale[:, None, None, None]).to(dtype)
        head_weight = head_bias = None
        if not model.features_only:
            head_weight, head_bias = _fold_1x1(model.conv_head, model.bn2, dtype)
        return FoldedModel(
            stem_weight=stem_weight.contiguous(memory_format=torch.channels_last),
            stem_bias=shift.to(dtype),
            stages=[[_fold_block(b, dtype) for b in stage] for stage in model.blocks],
            head_weight=head_weight, head_bias=head_bias,
        )


class _FoldCache:
    """Folded weights per compute dtype, valid while the model's weights are unchanged.

    A snapshot records, for every submodule (the list is taken once), the identity of each
    child module, parameter and buffer, and each tensor's ``data_ptr`` and ``_version``. Any
    in-place edit (bumps ``_version``), ``.data`` swap or ``.to()`` (moves ``data_ptr``) or
    replaced parameter/submodule (new identity) makes the snapshot differ and forces a refold.
    Checking costs ~0.15 ms of host time on B0; CUDA-graph replays skip it entirely.
    Inference tensors have no version counter, so a model built under ``inference_mode`` is
    refolded on every call (correct, slower)."""

    def __init__(self, model):
        self.modules = list(model.modules())
        self.snapshot = self.take_snapshot()
        self.by_dtype: dict[torch.dtype, FoldedModel] = {}

    def take_snapshot(self) -> Optional[tuple]:
        members = [v for m in self.modules for d in (m._modules, m._parameters, m._buffers) for v in d.values()]
        tensors = [t for t in members if isinstance(t, torch.Tensor)]
        try:
            versions = [t._version for t in tensors]
        except RuntimeError:  # an inference tensor: untrackable
            return None
        return tuple(map(id, members)), tuple(t.data_ptr() for t in tensors), tuple(versions)

    def still_valid(self) -> bool:
        return self.snapshot is not None and self.take_snapshot() == self.snapshot


def folded(model, dtype: Optional[torch.dtype] = None) -> FoldedModel:
    """The model's folded weights for compute ``dtype`` (default: the model's), cached on the
    model and refolded whenever a parameter, buffer or submodule was replaced or modified in
    place. Under ``torch.compile`` the fold is traced into the graph instead (dynamo cannot
    trace the cache check): the compiled model then always reads the live weights, and with
    ``torch._inductor.config.freezing = True`` inductor constant-folds it away."""
    dtype = dtype or model.conv_stem.weight.dtype
    if torch.compiler.is_compiling():
        return fold_model(model, dtype)
    cache = getattr(model, "_fused_fold_cache", None)
    if cache is None or not cache.still_valid():
        cache = _FoldCache(model)
        # Bypass nn.Module.__setattr__: the cache is neither a parameter nor a submodule.
        object.__setattr__(model, "_fused_fold_cache", cache)
    if dtype not in cache.by_dtype:
        cache.by_dtype[dtype] = fold_model(model, dtype)
    return cache.by_dtype[dtype]


def compute_dtype(model, x: torch.Tensor) -> torch.dtype:
    """The dtype the fused path computes in: the autocast dtype where autocast is on for the
    input's device and would lower this model's fp32 convs, else the model's own dtype."""
    dtype = model.conv_stem.weight.dtype
    device_type = x.device.type
    if (dtype == torch.float32 and torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)):
        return torch.get_autocast_dtype(device_type)
    return dtype


# ---------------------------------------------------------------------- ragged bookkeeping
class _Ragged:
    """Per-image valid sizes of a ragged batch, tracked on the host, with the per-layer device
    tensors (valid extent, per-image padding, pixel counts) built once per distinct layer.
    ``valid_hw`` is the host (CPU) tensor from :func:`fastmbconv.ragged.check_valid_sizes`, so
    reading it costs no sync; the device tensors are non-blocking uploads."""

    def __init__(self, valid_hw: torch.Tensor, pad_mode: str, device: torch.device):
        self.sizes = [tuple(int(v) for v in row) for row in valid_hw.tolist()]
        self.device = device
        self.pad_mode = pad_mode
        self._cache: dict = {}

    def _tensor(self, rows, dtype=torch.int32) -> torch.Tensor:
        return torch.tensor(rows, dtype=dtype).to(self.device, non_blocking=True)

    def host(self, sizes=None) -> torch.Tensor:
        """Valid sizes as an int64 (N, 2) CPU tensor, for the torch-side helpers in ``ragged``."""
        return torch.tensor(list(self.sizes if sizes is None else sizes), dtype=torch.int64).reshape(-1, 2)

    def valid(self, sizes=None) -> torch.Tensor:
        sizes = tuple(self.sizes if sizes is None else sizes)
        key = ("valid", sizes)
        if key not in self._cache:
            self._cache[key] = self._tensor(list(sizes)).reshape(-1, 2)
        return self._cache[key]

    def conv(self, sizes, kernel: int, stride: int):
        """(valid_hw, pad_tl, out_sizes, out_count) for a kxk stride-s conv on images of ``sizes``."""
        sizes = tuple(sizes)
        key = ("conv", sizes, kernel, stride)
        if key not in self._cache:
            pads = [conv_padding(h, w, kernel, stride, self.pad_mode) for h, w in sizes]
            out_sizes = tuple((-(-h // stride), -(-w // stride)) for h, w in sizes)
            self._cache[key] = (
                self.valid(sizes),
                self._tensor([[p[0], p[2]] for p in pads]).reshape(-1, 2),
                out_sizes,
                self._tensor([h * w for h, w in out_sizes], torch.float32),
            )
        return self._cache[key]


# ---------------------------------------------------------------------- the forward pieces
def block_forward(fb: FoldedBlock, x: torch.Tensor, pad_mode: str, input_preact: bool = False,
                  ragged_sizes=None, rg: Optional[_Ragged] = None):
    """One fused block on a channels_last activation. ``input_preact``: ``x`` is a
    pre-SiLU tensor (the stem's), whose SiLU the first kernel applies on load.
    Returns (output, output valid sizes or None)."""
    if input_preact and (fb.has_skip or fb.w_expand is not None):
        x, input_preact = F.silu(x), False  # the activated tensor is needed in full
    if fb.w_expand is not None:
        h = pointwise_gated(x, fb.w_expand, fb.b_expand, act="identity")
        input_act = "silu"
    else:
        h, input_act = x, ("silu" if input_preact else "identity")
    H, W = h.shape[-2:]
    padding = conv_padding(H, W, fb.kernel, fb.stride, pad_mode)
    if rg is None:
        valid_hw = pad_tl = count = None
        out_sizes = None
    else:
        valid_hw, pad_tl, out_sizes, count = rg.conv(ragged_sizes, fb.kernel, fb.stride)
    d, pool = dwconv_bn_act(h, fb.w_dw, fb.dw_scale, fb.dw_shift, padding, fb.stride, act="silu",
                            input_act=input_act, with_pool=True, valid_hw=valid_hw, pad_tl=pad_tl)
    gate = squeeze_excite_gate(pool, fb.se_w_reduce, fb.se_b_reduce, fb.se_w_expand, fb.se_b_expand,
                               count=count, hw=d.shape[-2] * d.shape[-1])
    out = pointwise_gated(d, fb.w_project, fb.b_project, gate=gate,
                          residual=x if fb.has_skip else None)
    return out, out_sizes


def _stem(model, fm: FoldedModel, x: torch.Tensor, rg: Optional[_Ragged]) -> torch.Tensor:
    """Stem conv with BN folded, *before* SiLU (the first block applies it)."""
    x = x.to(fm.stem_weight.dtype).contiguous(memory_format=torch.channels_last)
    if rg is not None:
        return ragged.conv2d(x, fm.stem_weight, fm.stem_bias, 2, 1, model.pad_mode, rg.host())
    top, bottom, left, right = conv_padding(x.shape[-2], x.shape[-1], 3, 2, model.pad_mode)
    if top == bottom == left == right:
        return F.conv2d(x, fm.stem_weight, fm.stem_bias, stride=2, padding=top)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), fm.stem_weight, fm.stem_bias, stride=2)


def _run(model, x: torch.Tensor, valid_hw: Optional[torch.Tensor]):
    """Yield (stage index, stage output, valid sizes or None) through the blocks."""
    fm = folded(model, compute_dtype(model, x))
    rg = None if valid_hw is None else _Ragged(valid_hw, model.pad_mode, x.device)
    with layer_scope("conv_stem"):
        x = _stem(model, fm, x, rg)
    sizes = None if rg is None else tuple((-(-h // 2), -(-w // 2)) for h, w in rg.sizes)
    preact = True
    for i, stage in enumerate(fm.stages):
        for j, fb in enumerate(stage):
            with layer_scope(f"blocks.{i}.{j}"):
                x, sizes = block_forward(fb, x, model.pad_mode, preact, sizes, rg)
            preact = False
        yield i, x, sizes, fm, rg


def _mask(x: torch.Tensor, sizes, rg: Optional[_Ragged]) -> torch.Tensor:
    return x if rg is None else ragged.mask_invalid(x, rg.host(sizes))


def forward_feature_maps(model, x: torch.Tensor, valid_hw: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """The stride 2/4/8/16/32 maps of a ``features_only`` model (zero outside each image's
    valid extent for a ragged batch)."""
    wanted = {info["stage"] for info in model.feature_info}
    return [_mask(fmap, sizes, rg) for i, fmap, sizes, _, rg in _run(model, x, valid_hw) if i in wanted]


def _last(model, x, valid_hw):
    for _, out, sizes, fm, rg in _run(model, x, valid_hw):
        pass
    return out, sizes, fm, rg


def forward_features(model, x: torch.Tensor, valid_hw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The head's (N, head_channels, H/32, W/32) map after conv + BN + SiLU."""
    if model.features_only:
        return forward_feature_maps(model, x, valid_hw)
    out, sizes, fm, rg = _last(model, x, valid_hw)
    with layer_scope("conv_head"):
        head = pointwise_gated(out, fm.head_weight, fm.head_bias, act="silu")
    return _mask(head, sizes, rg)


def forward(model, x: torch.Tensor, valid_hw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits, or pooled features when ``num_classes == 0`` (dropout is identity in eval).
    The head conv, BN, SiLU and average pool are one launch that never writes the head map."""
    if model.features_only:
        return forward_feature_maps(model, x, valid_hw)
    out, sizes, fm, rg = _last(model, x, valid_hw)
    if rg is None:
        pool_valid, count = None, float(out.shape[-2] * out.shape[-1])
    else:
        pool_valid = rg.valid(sizes)
        count = pool_valid.float().prod(1, keepdim=True)
    with layer_scope("conv_head"):
        sums = pointwise_gated(out, fm.head_weight, fm.head_bias, act="silu", pool_only=True,
                               valid_hw=pool_valid)
    pooled = (sums / count).to(fm.head_weight.dtype)
    return model.classifier(pooled)


def pointwise_choices(model, batch: int, height: int, width: int, dtype=None, device=None) -> list[dict]:
    """Which implementation (``"triton"`` or ``"torch"``) each 1x1 conv of the fused forward
    would use for an input of this size: one row per conv with its name, GEMM shape (M pixels,
    K in, N out) and choice, from :func:`fastmbconv.kernels.pointwise_gated.choose_pointwise_impl`.
    For benchmark reports; nothing is launched."""
    from .kernels.pointwise_gated import choose_pointwise_impl

    weight = model.conv_stem.weight
    dtype = dtype or weight.dtype
    device = torch.device(device) if device is not None else weight.device
    h, w = -(-height // 2), -(-width // 2)
    rows = []

    def add(name, k, n, pool_only=False):
        m = batch * h * w
        rows.append({"layer": name, "M": m, "K": k, "N": n, "pool_only": pool_only,
                     "impl": choose_pointwise_impl(m, k, n, dtype, device, pool_only)})

    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            if isinstance(block, MBConv):
                add(f"blocks.{i}.{j}.conv_pw", block.in_channels, block.mid_channels)
                mid, project = block.mid_channels, "conv_pwl"
            else:
                mid, project = block.in_channels, "conv_pw"
            h, w = -(-h // block.stride), -(-w // block.stride)
            add(f"blocks.{i}.{j}.{project}", mid, block.out_channels)
    if not model.features_only:
        add("conv_head", model.conv_head.in_channels, model.conv_head.out_channels, pool_only=True)
    return rows
