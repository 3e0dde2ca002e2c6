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
from dataclasses import replace
from typing import Mapping

import torch
from torch import nn

from .config import ARCHITECTURES, B0_STAGES, VARIANTS, StageConfig, round_channels, scale_stages
from .geometry import PadMode
from .layers import DepthwiseSeparable, MBConv
from .model import EfficientNet, StateDictMismatchError
from .pretrained import generic_cfg

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
_TV_BLOCK_KEY = re.compile(r"^features\.(\d+)\.(\d+)\.block\.(\d+\.(?:\d+|fc1|fc2))\.(\w+)$")


def torchvision_to_timm_keys(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Rename a torchvision EfficientNet (B0-B7) state dict to timm's key names."""
    keys = list(state_dict)
    feature_ids = sorted({int(k.split(".")[1]) for k in keys if k.startswith("features.")})
    if not feature_ids:
        raise StateDictMismatchError("not a torchvision EfficientNet state dict: no 'features.*' keys")
    head_id = feature_ids[-1]
    # A block has expansion iff its SE sits at block.2 (expand conv at block.0, dw at block.1).
    expanded = {
        m.group(1, 2) for k in keys if (m := _TV_BLOCK_KEY.match(k)) and m.group(3) == "2.fc1"
    }
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    unknown = []
    for key, value in state_dict.items():
        parts = key.split(".")
        if key.startswith("features.0.0."):
            out["conv_stem." + parts[-1]] = value
        elif key.startswith("features.0.1."):
            out["bn1." + parts[-1]] = value
        elif key.startswith(f"features.{head_id}.0."):
            out["conv_head." + parts[-1]] = value
        elif key.startswith(f"features.{head_id}.1."):
            out["bn2." + parts[-1]] = value
        elif key.startswith("classifier.1."):
            out["classifier." + parts[-1]] = value
        elif m := _TV_BLOCK_KEY.match(key):
            stage, block, sub, leaf = m.groups()
            table = _TV_EXPANDED if (stage, block) in expanded else _TV_DEPTHWISE
            if sub not in table:
                unknown.append(key)
                continue
            out[f"blocks.{int(stage) - 1}.{block}.{table[sub]}.{leaf}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise StateDictMismatchError(
            "torchvision state dict has keys with no timm counterpart:\n"
            + "\n".join(f"    {k}" for k in unknown)
        )
    return out


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Read stage configs, stem/head widths and classes from a timm-keyed state dict."""
    try:
        stem = state_dict["conv_stem.weight"]
    except KeyError:
        raise StateDictMismatchError("not an EfficientNet state dict: no 'conv_stem.weight'") from None
    counts: dict[int, int] = {}
    for key in state_dict:
        if m := re.match(r"^blocks\.(\d+)\.(\d+)\.", key):
            i, j = int(m.group(1)), int(m.group(2))
            counts[i] = max(counts.get(i, 0), j + 1)
    if sorted(counts) != list(range(len(B0_STAGES))):
        raise StateDictMismatchError(
            f"expected {len(B0_STAGES)} stages of blocks (EfficientNet B0-B7), found stages {sorted(counts)}"
        )
    stages, in_ch = [], stem.shape[0]
    for i, base in enumerate(B0_STAGES):
        prefix = f"blocks.{i}.0."
        mbconv = f"{prefix}{MBConv.PART_NAMES['project'][0]}.weight" in state_dict
        names = (MBConv if mbconv else DepthwiseSeparable).PART_NAMES
        out_ch = state_dict[f"{prefix}{names['project'][0]}.weight"].shape[0]
        expand = state_dict[f"{prefix}{names['expand'][0]}.weight"].shape[0] // in_ch if mbconv else 1
        block = "ir" if mbconv else "ds"
        kernel = state_dict[f"{prefix}{names['depthwise'][0]}.weight"].shape[-1]
        se_ratio = state_dict[prefix + "se.conv_reduce.weight"].shape[0] / in_ch
        stages.append(StageConfig(block, kernel, base.stride, expand, out_ch, counts[i], se_ratio))
        in_ch = out_ch
    head = state_dict["conv_head.weight"].shape[0] if "conv_head.weight" in state_dict else None
    classifier = state_dict.get("classifier.weight")
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
            scale_stages(v.width_mult, v.depth_mult) == tuple(replace(s, se_ratio=0.25) for s in arch["stages"])
            and round_channels(32, v.width_mult) == arch["stem_channels"]
            and round_channels(1280, v.width_mult) == arch["head_channels"]
        ):
            return name
    return None


def from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    pad_mode: PadMode = "symmetric",
    bn_eps: float | None = None,
    key_format: str = "timm",
    **kwargs,
) -> EfficientNet:
    """Build a fastmbconv EfficientNet from a timm- or torchvision-keyed state dict and load it
    strictly. The architecture is read from the tensors' shapes."""
    if key_format == "torchvision":
        state_dict = torchvision_to_timm_keys(state_dict)
    elif key_format != "timm":
        raise ValueError(f"key_format must be 'timm' or 'torchvision', got {key_format!r}")
    arch = infer_architecture(state_dict)
    if arch["head_channels"] is None:
        raise StateDictMismatchError("state dict has no 'conv_head.weight' (a features-only model?)")
    variant = _match_variant(arch)
    defaults = VARIANTS[variant] if variant else None
    kwargs.setdefault("default_resolution", defaults.resolution if defaults else 224)
    kwargs.setdefault("drop_rate", defaults.dropout if defaults else 0.2)
    model = EfficientNet(pad_mode=pad_mode, bn_eps=bn_eps, **arch, **kwargs)
    if variant:
        model.variant = ("tf_" if pad_mode == "same" else "") + f"efficientnet_{variant}"
    model.load_state_dict(state_dict, strict=True)
    return model


def _bn_eps(model: nn.Module) -> float:
    eps = {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
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


def from_timm(model: nn.Module) -> EfficientNet:
    """Convert a timm ``efficientnet_b0..b7`` or ``tf_efficientnet_b0..b7`` instance.

    Carried over: the weights, the padding convention (timm's ``Conv2dSame`` means TF "SAME"),
    BN eps, the classifier dropout, every block's drop-path probability, ``pretrained_cfg``,
    dtype, device and train/eval mode.
    """
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
        model.state_dict(), pad_mode=pad_mode, bn_eps=_bn_eps(model),
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
    ``EfficientNet_BN_Weights``) to set ``pretrained_cfg`` from their eval transforms.
    """
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
