"""The EfficientNet model (reference path) and its builders."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import backend as _backend
from . import ragged
from .config import (
    B0_HEAD_CHANNELS,
    B0_STAGES,
    B0_STEM_CHANNELS,
    BN_EPS,
    VARIANTS,
    PadMode,
    StageConfig,
    compound_scaling,
    round_channels,
    scale_stages,
)
from .layers import DepthwiseSeparable, MBConv, PaddedConv2d, init_weights


class StateDictMismatchError(ValueError):
    """A state dict does not fit the model; the message lists every offending key."""


def feature_stage_indices(stages: Sequence[StageConfig]) -> list[int]:
    """Indices of the stages whose outputs are the stride 2, 4, 8, 16, 32 feature maps:
    the last stage at each reduction (timm's ``feature_info`` for EfficientNet)."""
    indices = []
    for i in range(len(stages)):
        is_last_at_reduction = i + 1 == len(stages) or stages[i + 1].stride > 1
        if is_last_at_reduction:
            indices.append(i)
    return indices


class EfficientNet(nn.Module):
    """EfficientNet with timm's parameter names.

    Args:
        stages: the resolved (already width/depth-scaled) stage configs.
        stem_channels, head_channels: widths of the stem and head convs.
        num_classes: classifier outputs; 0 makes ``forward`` return the pooled features.
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly to this value at the last block.
        pad_mode: ``"symmetric"`` (k//2, timm ``efficientnet_*``/torchvision) or ``"same"``
            (TF "SAME", timm ``tf_efficientnet_*``), computed from the actual input size.
        bn_eps: BatchNorm eps; defaults to 1e-5 for symmetric and 1e-3 for same.
        default_resolution: the resolution the variant was designed for.
        features_only: build a backbone whose forward returns the stride 2/4/8/16/32 maps.
        out_indices: which of those five maps to return.
    """

    def __init__(
        self,
        stages: Sequence[StageConfig] = B0_STAGES,
        stem_channels: int = B0_STEM_CHANNELS,
        head_channels: int = B0_HEAD_CHANNELS,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        pad_mode: PadMode = "symmetric",
        bn_eps: float | None = None,
        default_resolution: int = 224,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3, 4),
    ):
        super().__init__()
        if pad_mode not in BN_EPS:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'symmetric' or 'same'")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if not 0.0 <= drop_rate < 1.0 or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError("drop_rate and drop_path_rate must be in [0, 1)")
        bn_eps = BN_EPS[pad_mode] if bn_eps is None else bn_eps
        self.stages = tuple(stages)
        self.pad_mode, self.bn_eps = pad_mode, bn_eps
        self.in_chans, self.num_classes = in_chans, num_classes
        self.drop_rate, self.drop_path_rate = drop_rate, drop_path_rate
        self.default_resolution = default_resolution
        self.features_only = features_only

        self.conv_stem = PaddedConv2d(in_chans, stem_channels, 3, stride=2, pad_mode=pad_mode)
        self.bn1 = nn.BatchNorm2d(stem_channels, eps=bn_eps)

        total_blocks = sum(s.repeats for s in self.stages)
        block_idx, in_ch, blocks = 0, stem_channels, []
        for stage in self.stages:
            stage_blocks = []
            for j in range(stage.repeats):
                kwargs = dict(
                    in_channels=in_ch,
                    out_channels=stage.out_channels,
                    kernel=stage.kernel,
                    stride=stage.stride if j == 0 else 1,
                    se_ratio=stage.se_ratio,
                    pad_mode=pad_mode,
                    bn_eps=bn_eps,
                    drop_path=drop_path_rate * block_idx / total_blocks,
                )
                if stage.block == "ds":
                    stage_blocks.append(DepthwiseSeparable(**kwargs))
                elif stage.block == "ir":
                    stage_blocks.append(MBConv(expand_ratio=stage.expand_ratio, **kwargs))
                else:
                    raise ValueError(f"unknown block type {stage.block!r}")
                in_ch = stage.out_channels
                block_idx += 1
            blocks.append(nn.Sequential(*stage_blocks))
        self.blocks = nn.Sequential(*blocks)

        feature_stages = feature_stage_indices(self.stages)
        self.feature_info = [
            {"stage": i, "reduction": 2 ** (k + 1), "module": f"blocks.{i}",
             "num_chs": self.stages[i].out_channels}
            for k, i in enumerate(feature_stages)
        ]
        if features_only:
            out_indices = tuple(out_indices)
            bad = [i for i in out_indices if not 0 <= i < len(feature_stages)]
            if bad or not out_indices:
                raise ValueError(
                    f"out_indices {out_indices} invalid; choose from 0..{len(feature_stages) - 1} "
                    "(strides 2, 4, 8, 16, 32)"
                )
            self.out_indices = out_indices
            self.feature_info = [self.feature_info[i] for i in out_indices]
            self.num_features = self.head_channels = 0
        else:
            self.out_indices = ()
            self.num_features = self.head_channels = head_channels
            self.conv_head = nn.Conv2d(in_ch, head_channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(head_channels, eps=bn_eps)
            self.classifier = (
                nn.Linear(head_channels, num_classes) if num_classes > 0 else nn.Identity()
            )
        init_weights(self)

    # ------------------------------------------------------------------ input checks
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs the model cannot run."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"EfficientNet expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(
                f"EfficientNet expects a 4-D (N, C, H, W) input, got {x.ndim}-D shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"EfficientNet expects {self.in_chans} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"EfficientNet expects a floating-point input, got {x.dtype}; convert images with "
                "x.float() / 255 and normalise (see fastmbconv.prepare_images)"
            )
        weight = self.conv_stem.weight
        if x.device != weight.device:
            raise ValueError(
                f"input is on {x.device} but the model is on {weight.device}; "
                f"move one of them, e.g. x.to('{weight.device}')"
            )
        autocast = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
        if x.dtype != weight.dtype and not autocast:
            raise TypeError(
                f"input dtype {x.dtype} does not match the model's {weight.dtype}; "
                f"use x.to({weight.dtype}) or model.to({x.dtype}), or run under torch.autocast"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"input spatial size must be at least 1x1, got {tuple(x.shape[2:])}")

    # ------------------------------------------------------------------ reference path
    def _stem(self, x: torch.Tensor, valid_hw: torch.Tensor | None) -> torch.Tensor:
        return F.silu(self.bn1(self.conv_stem(x, valid_hw)))

    def _run_blocks(self, x: torch.Tensor, valid_hw: torch.Tensor | None):
        """Stem and blocks; yields (stage index, output, valid extent) at each stage end."""
        x = self._stem(x, valid_hw)
        valid_hw = None if valid_hw is None else ragged.out_valid(valid_hw, 2)
        for i, stage in enumerate(self.blocks):
            for block in stage:
                x = block(x, valid_hw)
                if valid_hw is not None:
                    valid_hw = ragged.out_valid(valid_hw, block.stride)
            yield i, x, valid_hw

    def _reference_feature_maps(self, x: torch.Tensor, valid_hw: torch.Tensor | None) -> list[torch.Tensor]:
        wanted = {info["stage"] for info in self.feature_info}
        return [
            fmap if valid is None else ragged.mask_invalid(fmap, valid)
            for i, fmap, valid in self._run_blocks(x, valid_hw)
            if i in wanted
        ]

    def _reference_features(self, x: torch.Tensor, valid_hw: torch.Tensor | None):
        """(head map, valid extent of the head map or None)."""
        for _, x, valid in self._run_blocks(x, valid_hw):
            pass
        x = F.silu(self.bn2(self.conv_head(x)))
        if valid is not None:
            x = ragged.mask_invalid(x, valid)
        return x, valid

    def _prepare_call(self, x: torch.Tensor, valid_sizes) -> tuple[torch.Tensor | None, bool]:
        self.check_input(x)
        valid_hw = None
        if valid_sizes is not None:
            if self.training:
                raise RuntimeError(
                    "ragged batches (valid_sizes) are inference-only: BatchNorm's batch statistics "
                    "would mix padding into every image; call model.eval()"
                )
            valid_hw = ragged.check_valid_sizes(valid_sizes, x)
        return valid_hw, _backend.select_path(self, x) == "fused"

    # ------------------------------------------------------------------ public API
    def forward_features(
        self, x: torch.Tensor, valid_sizes: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """The head's (N, head_channels, H/32, W/32) map, or the feature maps if ``features_only``.

        ``valid_sizes``: optional (N, 2) per-image valid (height, width) of a ragged batch; each
        image is then computed as if run alone at that size, and positions outside its valid
        extent are zero in the returned maps.
        """
        valid_hw, fused = self._prepare_call(x, valid_sizes)
        if fused:
            from . import fused as _fused

            if self.features_only:
                return _fused.forward_feature_maps(self, x, valid_hw)
            return _fused.forward_features(self, x, valid_hw)
        if self.features_only:
            return self._reference_feature_maps(x, valid_hw)
        return self._reference_features(x, valid_hw)[0]

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False, valid_hw: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x.mean((2, 3)) if valid_hw is None else ragged.masked_mean(x, valid_hw).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(
        self, x: torch.Tensor, valid_sizes: torch.Tensor | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits (or pooled features if ``num_classes == 0``; feature maps if ``features_only``).

        ``valid_sizes``: optional (N, 2) per-image valid (height, width) for a ragged batch, as
        returned by :func:`fastmbconv.prepare_images`; see :mod:`fastmbconv.ragged`.
        """
        if self.features_only:
            return self.forward_features(x, valid_sizes)
        valid_hw, fused = self._prepare_call(x, valid_sizes)
        if fused:
            from . import fused as _fused

            return _fused.forward(self, x, valid_hw)
        features, valid = self._reference_features(x, valid_hw)
        return self.forward_head(features, valid_hw=valid)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier for transfer learning; 0 returns pooled features."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        device, dtype = self.conv_head.weight.device, self.conv_head.weight.dtype
        if num_classes > 0:
            self.classifier = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype)
            init_weights(self.classifier)
        else:
            self.classifier = nn.Identity()

    # ------------------------------------------------------------------ weights
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``, but a mismatch raises
        :class:`StateDictMismatchError` listing every missing, unexpected and mis-shaped key."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        shapes = sorted(
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(state_dict)
            if tuple(own[k].shape) != tuple(state_dict[k].shape)
        )
        if shapes or (strict and (missing or unexpected)):
            lines = ["state dict does not fit this EfficientNet:"]
            for title, items in (
                ("missing keys", missing if strict else []),
                ("unexpected keys", unexpected if strict else []),
                ("shape mismatches", shapes),
            ):
                if items:
                    lines.append(f"  {len(items)} {title}:")
                    lines.extend(f"    {item}" for item in items)
            raise StateDictMismatchError("\n".join(lines))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


# ---------------------------------------------------------------------- builders
def efficientnet(
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    resolution: int = 224,
    dropout: float = 0.2,
    *,
    phi: float | None = None,
    num_classes: int = 1000,
    pad_mode: PadMode = "symmetric",
    **kwargs,
) -> EfficientNet:
    """Build an EfficientNet at any scale.

    Give ``width_mult``/``depth_mult``/``resolution`` directly, or ``phi`` to take them from
    :func:`fastmbconv.compound_scaling` (the exact formula, not the hand-picked B1-B7).
    Further keyword arguments go to :class:`EfficientNet`.
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
        drop_rate=kwargs.pop("drop_rate", dropout),
        pad_mode=pad_mode,
        default_resolution=resolution,
        **kwargs,
    )


def _variant_builder(name: str):
    cfg = VARIANTS[name]

    def build(**kwargs) -> EfficientNet:
        model = efficientnet(cfg.width_mult, cfg.depth_mult, cfg.resolution, cfg.dropout, **kwargs)
        model.variant = f"efficientnet_{name}"
        return model

    build.__name__ = build.__qualname__ = f"efficientnet_{name}"
    build.__doc__ = (
        f"EfficientNet-{name.upper()}: width {cfg.width_mult}, depth {cfg.depth_mult}, "
        f"resolution {cfg.resolution}, dropout {cfg.dropout}. Keyword arguments go to "
        "EfficientNet (num_classes, pad_mode='same' for TF weights, drop_path_rate, "
        "features_only, ...)."
    )
    return build


efficientnet_b0 = _variant_builder("b0")
efficientnet_b1 = _variant_builder("b1")
efficientnet_b2 = _variant_builder("b2")
efficientnet_b3 = _variant_builder("b3")
efficientnet_b4 = _variant_builder("b4")
efficientnet_b5 = _variant_builder("b5")
efficientnet_b6 = _variant_builder("b6")
efficientnet_b7 = _variant_builder("b7")

MODEL_BUILDERS = {f"efficientnet_{n}": globals()[f"efficientnet_{n}"] for n in VARIANTS}
