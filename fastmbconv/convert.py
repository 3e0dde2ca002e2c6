"""Weight compatibility with timm and torchvision.

Both peers store the same EfficientNet; only the key names differ. Conversion reads the
architecture from the state dict itself (channels, repeats, kernels, expansion) and the padding
convention and BN eps from the source modules, so custom scales convert too.
"""
from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from .config import (ARCHITECTURES, B0_HEAD_CHANNELS, B0_STAGES, B0_STEM_CHANNELS, VARIANTS, StageConfig,
                     round_channels, scale_stages, torchvision_bn_eps)
from .geometry import PadMode
from .layers import DepthwiseSeparable, MBConv
from .model import GLOBAL_POOLS, EfficientNet, StateDictMismatchError
from .pretrained import generic_cfg
from .state_dict_checks import check_state_dict

# Limits on an architecture read from a state dict, which may come from an untrusted file: up to
# 2.5x B7's width and 2x its depth (timm's tf_efficientnet_l2 has width 4.3, depth 5.3).
_MAX_STAGES = scale_stages(5.0, 6.2)
_MAX_STEM = round_channels(B0_STEM_CHANNELS, 5.0)
_MAX_HEAD = round_channels(B0_HEAD_CHANNELS, 5.0)
_MAX_EXPAND = 2 * max(s.expand_ratio for s in B0_STAGES)
_MAX_KERNEL = 2 * max(s.kernel for s in B0_STAGES) - 1
_NUM = r"(\d{1,9})"  # a longer number is no layer index, and int() refuses over 4300 digits


def _listed(items, limit: int = 20) -> str:
    """Up to ``limit`` items, one a line, each cut to 200 characters (a crafted dict may hold
    millions of keys, or very long ones)."""
    lines = [f"    {str(item)[:200]}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... and {len(items) - limit} more")
    return "\n".join(lines)


def _torchvision_block_table(block_cls) -> dict[str, str]:
    """torchvision's ``block.K`` submodule names -> timm's, for one block kind: torchvision
    numbers the parts in order ([expand], depthwise, SE, project), each conv at ``.0`` and its
    BN at ``.1``, the SE's convs as ``fc1``/``fc2``."""
    names = block_cls.PART_NAMES
    order = [part for part in ("expand", "depthwise") if part in names] + ["se", "project"]
    table = {}
    for i, part in enumerate(order):
        if part == "se":
            table[f"{i}.fc1"], table[f"{i}.fc2"] = "se.conv_reduce", "se.conv_expand"
        else:
            table[f"{i}.0"], table[f"{i}.1"] = names[part]
    return table


_TV_EXPANDED = _torchvision_block_table(MBConv)
_TV_DEPTHWISE = _torchvision_block_table(DepthwiseSeparable)
_TV_BLOCK_KEY = re.compile(rf"^features\.{_NUM}\.{_NUM}\.block\.(\d\.(?:\d|fc1|fc2))\.(\w+)$")
_TV_LAYER_KEY = re.compile(rf"^features\.{_NUM}\.([01])\.(\w+)$")  # stem/head: conv at .0, BN at .1
_TV_CLASSIFIER_KEY = re.compile(r"^classifier\.1\.(\w+)$")


def _timm_key(key, head_id: int, expanded: set) -> str | None:
    """timm's name for one torchvision key, or None if it has none."""
    if not isinstance(key, str):
        return None
    if m := _TV_LAYER_KEY.match(key):
        names = {0: ("conv_stem", "bn1"), head_id: ("conv_head", "bn2")}.get(int(m[1]))
        return None if names is None else f"{names[int(m[2])]}.{m[3]}"
    if m := _TV_CLASSIFIER_KEY.match(key):
        return f"classifier.{m[1]}"
    if (m := _TV_BLOCK_KEY.match(key)) and 0 < int(m[1]) < head_id:
        stage, block, sub, leaf = m.groups()
        table = _TV_EXPANDED if (stage, block) in expanded else _TV_DEPTHWISE
        if sub in table:
            return f"blocks.{int(stage) - 1}.{int(block)}.{table[sub]}.{leaf}"
    return None


def torchvision_to_timm_keys(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename a torchvision EfficientNet (B0-B7) state dict to timm's key names."""
    feature_key = re.compile(rf"^features\.{_NUM}\.")
    feature_ids = sorted({int(m[1]) for k in state_dict if isinstance(k, str) and (m := feature_key.match(k))})
    if not feature_ids:
        found = "it has\n" + _listed([repr(k) for k in state_dict], 5) if state_dict else "it is empty"
        raise StateDictMismatchError(f"not a torchvision EfficientNet state dict: no 'features.<n>.*' keys; {found}")
    head_id = feature_ids[-1]
    # A block has expansion iff its SE sits at block.2 (expand conv at block.0, dw at block.1).
    expanded = {m.group(1, 2) for k in state_dict
                if isinstance(k, str) and (m := _TV_BLOCK_KEY.match(k)) and m.group(3) == "2.fc1"}
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    sources: dict[str, str] = {}
    unknown = []
    for key, value in state_dict.items():
        target = _timm_key(key, head_id, expanded)
        if target is None:
            unknown.append(key)
        elif target in sources:  # e.g. features.1.0 and features.1.00: one would silently win
            raise StateDictMismatchError(f"torchvision keys {str(key)[:200]!r} and {sources[target]!r} both map "
                                         f"to {target!r}")
        else:
            out[target], sources[target] = value, key
    if unknown:
        raise StateDictMismatchError("torchvision state dict has keys with no timm counterpart:\n" + _listed(unknown))
    return out


def _tensor(state_dict: Mapping, key: str, ndim: int, what: str) -> torch.Tensor:
    """``state_dict[key]``: present, a tensor of ``ndim`` dimensions, none of them empty."""
    if key not in state_dict:
        raise StateDictMismatchError(f"state dict has no {key!r} ({what})")
    value = state_dict[key]
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or 0 in shape:
        raise StateDictMismatchError(f"{key!r} ({what}) should be a non-empty {ndim}-d tensor, got {shape}")
    return value


def _bounded(key: str, value: int, what: str, limit: int, why: str = "EfficientNet up to 2.5x B7's width") -> int:
    if not 1 <= value <= limit:
        raise StateDictMismatchError(f"{key!r} gives {what} {value}; accepted: 1 to {limit} ({why})")
    return value


def _block_indices(state_dict: Mapping) -> dict[int, dict[int, str]]:
    """stage -> block index -> one key under ``blocks.<stage>.<block>.``; every stage's indices
    checked to run 0..n-1 with n within the limit."""
    found: dict[int, dict[int, str]] = {}
    pattern = re.compile(rf"^blocks\.{_NUM}\.{_NUM}\.")
    for key in state_dict:
        if isinstance(key, str) and (m := pattern.match(key)):
            found.setdefault(int(m[1]), {}).setdefault(int(m[2]), key)
    if sorted(found) != list(range(len(B0_STAGES))):
        pruned = 0 < len(found) < len(B0_STAGES) and sorted(found) == list(range(len(found)))
        raise StateDictMismatchError(f"expected {len(B0_STAGES)} stages of blocks (EfficientNet B0-B7), found "
                                     f"stages {sorted(found)[:10]}" + (" (cut by prune_intermediate_layers? it loads "
                                     "with load_state_dict into a model pruned alike)" if pruned else ""))
    for i, limit in enumerate(_MAX_STAGES):
        indices = sorted(found[i])
        if indices[-1] != len(indices) - 1:
            gap = next(k for k, j in enumerate(indices) if j != k)
            raise StateDictMismatchError(f"blocks.{i} has no block {gap} but has {found[i][indices[gap]]!r}: block "
                                         "indices must run 0, 1, 2, ... without gaps")
        if len(indices) > limit.repeats:
            raise StateDictMismatchError(f"blocks.{i} has {len(indices)} blocks ({found[i][indices[-1]]!r}); at most "
                                         f"{limit.repeats} are accepted (EfficientNet up to 2x B7's depth)")
    return found


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read stage configs, stem/head widths and classes from a timm-keyed state dict. Raises
    :class:`StateDictMismatchError` naming the key where the dict is not a well-formed
    EfficientNet within the limits (2.5x B7's width, 2x its depth)."""
    stem = _tensor(state_dict, "conv_stem.weight", 4, "the stem conv: not an EfficientNet state dict?")
    in_ch = _bounded("conv_stem.weight", stem.shape[0], "stem channels", _MAX_STEM)
    blocks = _block_indices(state_dict)
    mbconv_only = {name for pair in MBConv.PART_NAMES.values() for name in pair} - {
        name for pair in DepthwiseSeparable.PART_NAMES.values() for name in pair}
    stages = []
    for i, (base, limit) in enumerate(zip(B0_STAGES, _MAX_STAGES)):
        prefix = f"blocks.{i}.0."
        mbconv = any(isinstance(k, str) and k.startswith(prefix) and k[len(prefix):].split(".")[0] in mbconv_only
                     for k in state_dict)
        cls, kind = (MBConv, "an MBConv") if mbconv else (DepthwiseSeparable, "a DepthwiseSeparable")
        for j in range(len(blocks[i])):  # every block has the convs of its stage's kind
            for part, (conv, _) in cls.PART_NAMES.items():
                _tensor(state_dict, f"blocks.{i}.{j}.{conv}.weight", 4, f"the {part} conv of {kind} block")
            for conv in ("conv_reduce", "conv_expand"):
                _tensor(state_dict, f"blocks.{i}.{j}.se.{conv}.weight", 4, "an SE conv")
        key = f"{prefix}{cls.PART_NAMES['project'][0]}.weight"
        out_ch = _bounded(key, state_dict[key].shape[0], "output channels", limit.out_channels)
        expand = 1
        if mbconv:
            key = f"{prefix}{cls.PART_NAMES['expand'][0]}.weight"
            mid = state_dict[key].shape[0]
            if mid % in_ch:
                raise StateDictMismatchError(f"{key!r} has {mid} output channels, not a multiple of the block's "
                                             f"{in_ch} input channels")
            expand = _bounded(key, mid // in_ch, "expansion ratio", _MAX_EXPAND, "twice B0's")
        key = f"{prefix}{cls.PART_NAMES['depthwise'][0]}.weight"
        kh, kernel = state_dict[key].shape[-2:]
        if kh != kernel or kernel % 2 == 0 or kernel > _MAX_KERNEL:
            raise StateDictMismatchError(f"{key!r} has a {kh}x{kernel} kernel; EfficientNet's are square and odd, "
                                         f"at most {_MAX_KERNEL}")
        key = prefix + "se.conv_reduce.weight"
        se = _bounded(key, state_dict[key].shape[0], "SE channels", in_ch, "SE narrows the block's input")
        stages.append(StageConfig("ir" if mbconv else "ds", kernel, base.stride, expand, out_ch, len(blocks[i]),
                                  se / in_ch))
        in_ch = out_ch
    head = None
    if "conv_head.weight" in state_dict:
        head = _bounded("conv_head.weight", _tensor(state_dict, "conv_head.weight", 4, "the head conv").shape[0],
                        "head channels", _MAX_HEAD)
    classifier = _tensor(state_dict, "classifier.weight", 2, "the classifier") if "classifier.weight" in state_dict \
        else None
    return {
        "stages": tuple(stages),
        "stem_channels": stem.shape[0],
        "in_chans": stem.shape[1],
        "head_channels": head,
        "num_classes": 0 if classifier is None else classifier.shape[0],
    }


def _match_variant(arch: dict) -> str | None:
    for name, v in VARIANTS.items():
        if (
            scale_stages(v.width_mult, v.depth_mult) == arch["stages"]
            and round_channels(32, v.width_mult) == arch["stem_channels"]
            and round_channels(1280, v.width_mult) == arch["head_channels"]
        ):
            return name
    return None


def from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    pad_mode: PadMode | None = None,
    bn_eps: float | None = None,
    key_format: str = "timm",
    **kwargs,
) -> EfficientNet:
    """Build a fastmbconv EfficientNet from a timm- or torchvision-keyed state dict and load it
    strictly. The architecture is read from the tensors' shapes.

    ``pad_mode``: ``"symmetric"`` (timm ``efficientnet_*``, torchvision) or ``"same"`` (timm
    ``tf_efficientnet_*``). The weights do not tell them apart and the wrong one changes every
    output, so timm-keyed dicts need it; torchvision's default to ``"symmetric"``, its only
    padding. ``bn_eps`` defaults to 1e-5 for symmetric, 1e-3 for same (timm's), and for
    torchvision's keys to torchvision's (1e-3 for B5-B7, 1e-5 otherwise). ``kwargs`` go to
    :class:`EfficientNet`; what the weights fix (``num_classes``, ``in_chans``, widths, depths)
    comes from them.

    The dict is checked before any memory is allocated: keys, tensor ranks and sizes (up to 2.5x
    B7's width and 2x its depth), then the inferred model is fitted on the meta device. Anything
    amiss raises :class:`StateDictMismatchError` naming the key.
    """
    if key_format not in ("timm", "torchvision"):
        raise ValueError(f"key_format must be 'timm' or 'torchvision', got {key_format!r}")
    if pad_mode is None and key_format == "timm":
        raise TypeError("from_state_dict needs pad_mode for timm-keyed weights: 'symmetric' for efficientnet_*, "
                        "'same' for tf_efficientnet_* (the weights do not say which, and the wrong one changes every "
                        "output); torchvision's weights under their own keys need key_format='torchvision' instead "
                        "(renamed to timm's, as read_checkpoint does, they also need bn_eps=1e-3 for B5-B7)")
    check_state_dict(state_dict)
    if key_format == "torchvision":
        state_dict = torchvision_to_timm_keys(state_dict)
        pad_mode = pad_mode or "symmetric"
    arch = infer_architecture(state_dict)
    if arch["head_channels"] is None:
        raise StateDictMismatchError("state dict has no 'conv_head.weight' (a features-only or pruned model?)")
    fixed = sorted(set(kwargs) & set(arch))
    if fixed:
        hint = ("; for another number of classes or input channels, load the file with create_model(name, "
                "checkpoint_path=..., num_classes=..., in_chans=...), or reset_classifier after converting"
                if {"num_classes", "in_chans"} & set(fixed) else "")
        raise TypeError(f"from_state_dict reads {', '.join(fixed)} from the weights' shapes and cannot take them "
                        f"as arguments{hint}")
    variant = _match_variant(arch)
    if key_format == "torchvision" and bn_eps is None:
        bn_eps = torchvision_bn_eps(variant)
    defaults = VARIANTS[variant] if variant else None
    kwargs.setdefault("default_resolution", defaults.resolution if defaults else 224)
    kwargs.setdefault("drop_rate", defaults.dropout if defaults else 0.2)
    with torch.device("meta"):
        probe = EfficientNet(pad_mode=pad_mode, bn_eps=bn_eps, **arch, **kwargs)
    shapes = {k: torch.empty(v.shape, device="meta") for k, v in state_dict.items()}
    # Weights without BN counts (frozen BNs): BatchNorm fills a missing one with a CPU tensor,
    # which on the meta probe makes torch warn once per BN that the copy does nothing.
    shapes.update({k: torch.empty((), dtype=torch.long, device="meta") for k in probe.state_dict()
                   if k.endswith("num_batches_tracked") and k not in shapes})
    probe.load_state_dict(shapes, strict=True)
    model = EfficientNet(pad_mode=pad_mode, bn_eps=bn_eps, **arch, **kwargs)
    if variant:
        model.variant = ("tf_" if pad_mode == "same" else "") + f"efficientnet_{variant}"
    model.load_state_dict(state_dict, strict=True)
    return model


def _bn_eps(model: nn.Module) -> float:
    """The source's one BN eps, frozen BatchNorms (timm's ``FrozenBatchNorm2d``: BN's buffers
    and eps, no module of torch's) included."""
    eps = {m.eps for m in model.modules()
           if isinstance(m, nn.BatchNorm2d) or (hasattr(m, "running_var") and hasattr(m, "eps"))}
    if not eps:
        raise ValueError("source model has no BatchNorm (nor a module with BN's running_var and eps)")
    if len(eps) != 1:
        raise ValueError(f"source model mixes BatchNorm eps values {sorted(eps)}; cannot convert")
    return eps.pop()


def _drop_path_rate(probs: list[float]) -> float:
    """The stochastic-depth rate behind per-block probabilities ``rate * i / n`` (timm's and
    torchvision's rule, and fastmbconv's)."""
    n = len(probs)
    last = max((i for i, p in enumerate(probs) if p > 0), default=None)
    return 0.0 if last is None else round(probs[last] * n / last, 12)


def _finish(out: EfficientNet, source: nn.Module, drop_probs: list[float]) -> EfficientNet:
    """Carry the source's per-block drop-path probabilities (exactly), dtype, device and
    train/eval mode over to the converted model."""
    blocks = [b for stage in out.blocks for b in stage]
    if len(blocks) != len(drop_probs):
        raise ValueError(f"source has {len(drop_probs)} blocks, the converted model {len(blocks)}")
    for block, p in zip(blocks, drop_probs):
        block.drop_path.drop_prob = float(p)
    p = next(source.parameters())
    return out.to(device=p.device, dtype=p.dtype).train(source.training)


def _prob(module) -> float:
    return float(getattr(module, "drop_prob", getattr(module, "p", 0.0)) or 0.0)


def _timm_pool(model: nn.Module) -> str:
    """The global pool of a timm model (a SelectAdaptivePool2d's ``pool_type``) as ours."""
    pool = getattr(model, "global_pool", "avg")
    pool_type = str(getattr(pool, "pool_type", pool)).lower()  # timm lowercases it to choose
    name = (pool_type[4:] or "avg") if pool_type.startswith("fast") else pool_type  # "fast*": same maths
    if name not in GLOBAL_POOLS:
        raise ValueError(f"from_timm supports global_pool 'avg', 'max' or ''; this model pools with {pool_type!r}")
    return name


def from_timm(model: nn.Module) -> EfficientNet:
    """Convert a timm ``efficientnet_b0..b7`` or ``tf_efficientnet_b0..b7`` instance.

    Carried over: the weights, the padding convention (timm's ``Conv2dSame`` means TF "SAME"),
    BN eps, the global pool, the classifier dropout, every block's drop-path probability,
    ``pretrained_cfg``, dtype, device and train/eval mode. A ``torch.compile``d model converts
    its original module; frozen BatchNorms (``timm.layers.freeze_batch_norm_2d``) become
    ordinary ones with their values (freeze again after converting).
    """
    model = getattr(model, "_orig_mod", model)
    for attr in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier"):
        if not hasattr(model, attr):
            raise TypeError(f"from_timm expects a timm EfficientNet; {type(model).__name__} has no {attr!r}")
    act = getattr(model.bn1, "act", None)
    if act is not None and not isinstance(act, nn.SiLU):
        raise ValueError(
            f"from_timm supports SiLU EfficientNets (B0-B7); this one uses {type(act).__name__}"
        )
    pad_mode: PadMode = "same" if "Same" in type(model.conv_stem).__name__ else "symmetric"
    probs = [_prob(getattr(b, "drop_path", None)) for stage in model.blocks for b in stage]
    out = from_state_dict(
        model.state_dict(), pad_mode=pad_mode, bn_eps=_bn_eps(model), global_pool=_timm_pool(model),
        drop_rate=float(getattr(model, "drop_rate", 0.0)), drop_path_rate=_drop_path_rate(probs),
    )
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg:
        out.pretrained_cfg = copy.deepcopy(dict(cfg))
        if "input_size" in cfg:
            out.default_resolution = int(cfg["input_size"][-1])
    if cfg and cfg.get("architecture") in ARCHITECTURES:
        out.variant = cfg["architecture"]
    return _finish(out, model, probs)


def torchvision_cfg(weights) -> dict:
    """A timm-style ``pretrained_cfg`` from torchvision weights (e.g.
    ``EfficientNet_B3_Weights.IMAGENET1K_V1``): resize the short side to ``resize_size``, centre
    crop ``crop_size``, their interpolation, mean and std."""
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    crop_pct = crop / resize
    while math.floor(crop / crop_pct) < resize:  # timm resizes to floor(crop / crop_pct)
        crop_pct = math.nextafter(crop_pct, 0.0)
    cfg = generic_cfg(crop, len(weights.meta.get("categories", ())) or 1000)
    interpolation = getattr(t.interpolation, "value", t.interpolation)
    cfg.update(crop_pct=crop_pct, interpolation=str(interpolation), mean=tuple(t.mean), std=tuple(t.std))
    return cfg


def from_torchvision(model: nn.Module, weights=None) -> EfficientNet:
    """Convert a torchvision ``efficientnet_b0..b7`` instance (symmetric padding; BN eps is read
    from the model: torchvision's B5-B7 use 1e-3).

    Carried over: the weights, BN eps, the classifier dropout, every block's stochastic-depth
    probability (torchvision's default rate is 0.2), dtype, device and train/eval mode. The
    model does not know which weights it holds: pass them as ``weights`` (a torchvision
    ``EfficientNet_BN_Weights``) to set ``pretrained_cfg`` from their eval transforms. A
    ``torch.compile``d model converts its original module.
    """
    model = getattr(model, "_orig_mod", model)
    if not (hasattr(model, "features") and hasattr(model, "classifier")):
        raise TypeError(f"from_torchvision expects a torchvision EfficientNet, got {type(model).__name__}")
    dropout = next((m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)), 0.0)
    probs = [_prob(getattr(b, "stochastic_depth", None))
             for stage in list(model.features)[1:-1] for b in stage]
    out = from_state_dict(
        model.state_dict(), pad_mode="symmetric", bn_eps=_bn_eps(model),
        key_format="torchvision", drop_rate=float(dropout), drop_path_rate=_drop_path_rate(probs),
    )
    if weights is not None:
        out.pretrained_cfg = torchvision_cfg(weights)
        out.default_resolution = out.pretrained_cfg["input_size"][-1]
    return _finish(out, model, probs)
