"""Building EfficientNets: at any scale (:func:`efficientnet`), the official B0-B7
(:func:`efficientnet_b0` ... :func:`efficientnet_b7`), and by timm's names
(:func:`create_model`, :func:`list_models`, :func:`resolve_model_name`)."""
from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import re
from typing import Mapping, Optional, Sequence, Union

import torch

from .config import (ARCHITECTURES, B0_HEAD_CHANNELS, B0_STEM_CHANNELS, VARIANTS, compound_scaling, round_channels,
                     scale_stages, torchvision_bn_eps)
from .geometry import PadMode
from .model import EfficientNet
from .pretrained import PRETRAINED_CFGS, for_features, has_weights, whole_cfg
from .pretrained import pretrained_cfg as lookup_cfg

FEATURE_INDICES = (0, 1, 2, 3, 4)
PathLike = Union[str, os.PathLike]


def efficientnet(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    resolution: int = 224,
    dropout: float = 0.2,
    *,
    phi: Optional[float] = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    pad_mode: PadMode = "symmetric",
    bn_eps: Optional[float] = None,
    drop_rate: Optional[float] = None,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int]] = FEATURE_INDICES,
    global_pool: str = "avg",
) -> EfficientNet:
    """Build an EfficientNet at any scale.

    Give ``width_mult``/``depth_mult``/``resolution`` directly, or ``phi`` to take them from
    :func:`fastmbconv.compound_scaling` (the exact formula, not the hand-picked B1-B7).
    ``dropout`` is the classifier's dropout (``drop_rate`` overrides it); the other keywords
    are :class:`EfficientNet`'s.
    """
    if phi is not None:
        scale = compound_scaling(phi)
        width_mult, depth_mult, resolution = scale.width_mult, scale.depth_mult, scale.resolution
    if width_mult <= 0 or depth_mult <= 0:
        raise ValueError(f"width_mult and depth_mult must be > 0, got {width_mult}, {depth_mult}")
    return EfficientNet(
        stages=scale_stages(width_mult, depth_mult),
        stem_channels=round_channels(B0_STEM_CHANNELS, width_mult),
        head_channels=round_channels(B0_HEAD_CHANNELS, width_mult),
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=dropout if drop_rate is None else drop_rate,
        drop_path_rate=drop_path_rate,
        pad_mode=pad_mode,
        bn_eps=bn_eps,
        default_resolution=resolution,
        features_only=features_only,
        out_indices=out_indices,
        global_pool=global_pool,
    )


# ---------------------------------------------------------------------------- names
class UnknownModelError(ValueError):
    """A model name or pretrained tag that fastmbconv does not know; the message lists close
    matches."""


def _all_names() -> list[str]:
    return sorted(ARCHITECTURES) + [f"{a}.{t}" for a in sorted(PRETRAINED_CFGS) for t in PRETRAINED_CFGS[a]]


def _unknown(name: str, candidates: Sequence[str], what: str = "model") -> UnknownModelError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownModelError(f"unknown {what} {name!r}{hint} (fastmbconv.list_models() lists the names, "
                             "list_models(pretrained=True) the ones with weights)")


def split_model_name(name: str) -> tuple[str, Optional[str]]:
    """``(architecture, tag)`` of a timm-style name such as ``"tf_efficientnet_b3.ns_jft_in1k"``
    (tag None when absent). The architecture may be given short (``"b3"``) for
    ``efficientnet_b3``. Unknown names raise :class:`UnknownModelError` with close matches."""
    base, _, tag = str(name).partition(".")
    arch = base if base in ARCHITECTURES else f"efficientnet_{base}"
    if arch not in ARCHITECTURES:
        raise _unknown(str(name), _all_names())
    if tag and tag not in PRETRAINED_CFGS[arch]:
        raise _unknown(f"{arch}.{tag}", [f"{arch}.{t}" for t in PRETRAINED_CFGS[arch]], "pretrained tag")
    return arch, tag or None


def resolve_model_name(name: str) -> str:
    """The architecture name for ``name``: ``"efficientnet_b0"`` for ``"b0"``, ``"efficientnet_b0"``
    or ``"efficientnet_b0.ra_in1k"``; ``"tf_efficientnet_b3"`` for the TF-padded names."""
    return split_model_name(name)[0]


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def list_models(filter: Union[str, Sequence[str]] = "", pretrained: bool = False,
                exclude_filters: Union[str, Sequence[str]] = "", include_tags: Optional[bool] = None) -> list[str]:
    """Model names, as ``timm.list_models``: ``filter``/``exclude_filters`` are shell-style
    wildcards (``"tf_efficientnet_b*"``); ``pretrained`` keeps names with published weights;
    ``include_tags`` (default: ``pretrained``) lists ``name.tag`` per pretrained configuration."""
    include_tags = pretrained if include_tags is None else include_tags
    names = []
    for arch in ARCHITECTURES:
        if include_tags:
            names += [f"{arch}.{t}" for t, c in PRETRAINED_CFGS[arch].items() if has_weights(c) or not pretrained]
        elif not pretrained or any(has_weights(c) for c in PRETRAINED_CFGS[arch].values()):
            names.append(arch)

    def matches(name: str, patterns) -> bool:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        return any(fnmatch.fnmatchcase(name, p) or (include_tags and fnmatch.fnmatchcase(name.split(".")[0], p))
                   for p in patterns if p)

    if filter:
        names = [n for n in names if matches(n, filter)]
    if exclude_filters:
        names = [n for n in names if not matches(n, exclude_filters)]
    return sorted(names, key=_natural_key)


# ---------------------------------------------------------------------------- by name
def create_model(
    model_name: str,
    pretrained: bool = False,
    pretrained_cfg: Union[str, Mapping, None] = None,  # or timm's PretrainedCfg
    pretrained_cfg_overlay: Optional[dict] = None,
    checkpoint_path: Optional[PathLike] = None,
    cache_dir: Optional[PathLike] = None,
    *,
    num_classes: Optional[int] = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Union[int, Sequence[int]] = FEATURE_INDICES,
    global_pool: str = "avg",
    bn_eps: Optional[float] = None,
) -> EfficientNet:
    """A model by timm's name, as ``timm.create_model`` builds it.

    ``model_name``: ``efficientnet_b0`` ... ``efficientnet_b7`` (symmetric padding, BN eps
    1e-5) or ``tf_efficientnet_b0`` ... ``tf_efficientnet_b7`` (TF "SAME" padding, eps 1e-3),
    optionally with a pretrained tag (``"tf_efficientnet_b3.ns_jft_in1k"``; without one, timm's
    default tag). ``pretrained_cfg`` may name the tag instead, or be a whole configuration
    dict or timm ``PretrainedCfg`` (completed as timm does, with its defaults and the
    architecture's name); ``pretrained_cfg_overlay`` overrides entries of it. The model
    carries the result as ``pretrained_cfg`` (what :func:`fastmbconv.eval_transform` reads).

    ``pretrained=True`` loads timm's published weights from the Hugging Face Hub (needs
    ``pip install 'fastmbconv[pretrained]'``; the Hub's cache and ``HF_HUB_OFFLINE`` apply,
    ``cache_dir`` overrides the cache); ``checkpoint_path`` loads a local safetensors or torch
    file in timm's or torchvision's key format (after the pretrained weights, if both are
    given). As in timm, a configuration's ``file`` (``pretrained_cfg_overlay=dict(file=path)``)
    makes ``pretrained=True`` read that local file instead of the Hub. Unless ``bn_eps`` is
    given, a torchvision-keyed file (the last one loaded) sets the BN eps torchvision trained
    it with, whatever the name's default: 1e-3 for B5-B7, 1e-5 for B0-B4 (a state dict does
    not hold eps, so a timm-keyed copy of converted torchvision B5-B7 weights needs
    ``bn_eps=1e-3``). A ``num_classes`` given and other than the weights' leaves the classifier freshly
    initialised; weights of another number of classes without ``num_classes`` are refused, by
    name. ``in_chans`` other than 3 adapts the stem conv's RGB weights, as timm does.

    Defaults follow timm: ``num_classes`` from the configuration (1000, or 11821 for
    ``efficientnet_b5.sw_in12k``), ``drop_rate`` and ``drop_path_rate`` 0 (the efficientnet_bN
    builders use the paper's dropout instead).
    """
    from . import weights

    arch, tag = split_model_name(model_name)
    if isinstance(pretrained_cfg, str):
        tag = split_model_name(f"{arch}.{pretrained_cfg}")[1]
        pretrained_cfg = None
    given = _cfg_dict(pretrained_cfg) if pretrained_cfg is not None else {}
    cfg = whole_cfg(arch, given) if given else lookup_cfg(arch, tag)  # empty: timm's, as timm does
    cfg.update(pretrained_cfg_overlay or {})
    variant, pad_mode = ARCHITECTURES[arch]
    # Files are read before anything is built or downloaded: a bad one fails first, and the
    # weights' key format sets the BN eps they were trained with (torchvision's B5-B7: 1e-3).
    pretrained_file = cfg.get("file") or None  # timm reads an empty entry as none
    files = []  # (source, state dict, key format), in the order they load
    for source, path in ((f"pretrained file {str(pretrained_file)!r}", pretrained_file if pretrained else None),
                         (f"checkpoint {str(checkpoint_path)!r}", checkpoint_path)):
        if path is not None:
            files.append((source, *weights.read_checkpoint_and_format(path)))
    if bn_eps is None and files and files[-1][2] == "torchvision":
        bn_eps = torchvision_bn_eps(variant)
    new_classifier = num_classes is not None  # the caller chose it: a classifier of another size starts fresh
    if num_classes is None:
        num_classes = int(cfg.get("num_classes", 1000))
    spec = VARIANTS[variant]
    model = efficientnet(spec.width_mult, spec.depth_mult, spec.resolution, num_classes=num_classes,
                         in_chans=in_chans, pad_mode=pad_mode, bn_eps=bn_eps, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate, features_only=features_only, out_indices=out_indices,
                         global_pool=global_pool)
    model.variant = arch
    model.pretrained_cfg = for_features(cfg) if features_only else cfg
    if pretrained and pretrained_file is None:
        weights.load_weights(model, weights.hub_state_dict(cfg, cache_dir), f"weights {cfg.get('hf_hub_id')!r}",
                             new_classifier)
    for source, state_dict, _ in files:
        weights.load_weights(model, state_dict, source, new_classifier)
    return model


def _cfg_dict(cfg) -> dict:
    """A whole ``pretrained_cfg`` as a dict: a mapping, or timm's ``PretrainedCfg`` (its
    ``to_dict()``, which leaves out unset entries)."""
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if callable(getattr(cfg, "to_dict", None)):
        return dict(cfg.to_dict())
    raise TypeError(f"pretrained_cfg must be a tag (str), a dict or timm's PretrainedCfg, got {type(cfg).__name__}")


def _variant_builder(variant: str):
    spec = VARIANTS[variant]

    def build(
        *,
        pretrained: bool = False,
        checkpoint_path: Optional[PathLike] = None,
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        pad_mode: PadMode = "symmetric",
        bn_eps: Optional[float] = None,
        drop_rate: float = spec.dropout,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Union[int, Sequence[int]] = FEATURE_INDICES,
        global_pool: str = "avg",
    ) -> EfficientNet:
        arch = ("tf_" if pad_mode == "same" else "") + f"efficientnet_{variant}"
        if pad_mode not in ("symmetric", "same"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'symmetric' or 'same'")
        return create_model(arch, pretrained=pretrained, checkpoint_path=checkpoint_path, num_classes=num_classes,
                            in_chans=in_chans, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
                            features_only=features_only, out_indices=out_indices, global_pool=global_pool,
                            bn_eps=bn_eps)

    build.__name__ = build.__qualname__ = f"efficientnet_{variant}"
    build.__doc__ = f"""EfficientNet-{variant.upper()}: width {spec.width_mult}, depth {spec.depth_mult}, \
resolution {spec.resolution}, classifier dropout {spec.dropout} (the paper's; ``drop_rate`` overrides it).

    Args:
        pretrained: load timm's published weights (see :func:`fastmbconv.create_model`).
        checkpoint_path: a local safetensors or torch file, timm's or torchvision's keys.
        num_classes: classifier outputs (default: the weights' configuration's, 1000); 0 returns the pooled
            features; given, and other than a checkpoint's, a fresh classifier.
        in_chans: input channels.
        pad_mode: "symmetric" (timm ``efficientnet_{variant}``, torchvision) or "same" (TF
            "SAME", timm ``tf_efficientnet_{variant}``, BN eps 1e-3).
        bn_eps: BatchNorm eps (default: 1e-5 symmetric, 1e-3 same; with a torchvision-keyed
            checkpoint, torchvision's: 1e-3 for B5-B7, 1e-5 below).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth at the last block (rising linearly from 0).
        features_only: a backbone returning the stride 2/4/8/16/32 maps.
        out_indices: which of those maps (timm's forms: a sequence, negatives, an int n = last n).
        global_pool: "avg", "max", or "" (no pooling, with num_classes=0).

    The model's ``pretrained_cfg`` is timm's default configuration for that name.
    """
    return build


efficientnet_b0 = _variant_builder("b0")
efficientnet_b1 = _variant_builder("b1")
efficientnet_b2 = _variant_builder("b2")
efficientnet_b3 = _variant_builder("b3")
efficientnet_b4 = _variant_builder("b4")
efficientnet_b5 = _variant_builder("b5")
efficientnet_b6 = _variant_builder("b6")
efficientnet_b7 = _variant_builder("b7")

#: The B0-B7 builders (the study's and the FLOPs table's models).
MODEL_BUILDERS = {f"efficientnet_{n}": globals()[f"efficientnet_{n}"] for n in VARIANTS}


@functools.lru_cache(maxsize=None)
def model_structure(name: str) -> EfficientNet:
    """The named model on the ``meta`` device: its structure only (no memory, no init cost),
    cached. For the layer walk and the roofline; never run it."""
    with torch.device("meta"):
        return create_model(resolve_model_name(name))
