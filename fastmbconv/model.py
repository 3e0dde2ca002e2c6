"""The EfficientNet module: its layers, and a forward that plans each call once and hands it to
one executor, :mod:`fastmbconv.reference` (the modules) or :mod:`fastmbconv.fused` (the kernels).
Builders by name and scale live in :mod:`fastmbconv.builders`."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import reference
from .backend import select_path
from .config import B0_HEAD_CHANNELS, B0_STAGES, B0_STEM_CHANNELS, BN_EPS, StageConfig
from .geometry import PadMode, RaggedSizes, check_pad_mode
from .layers import DepthwiseSeparable, MBConv, PaddedConv2d, init_weights
from .plan import Output, make_plan


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
        check_pad_mode(pad_mode)
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

    # ------------------------------------------------------------------ forward
    def _execute(self, x: torch.Tensor, valid_sizes, output: Output):
        plan = make_plan(self, x, valid_sizes, output)
        if select_path(self, x) == "fused":
            from . import fused as executor  # imports triton: only when a fused call needs it
        else:
            executor = reference
        return executor.run(self, x, plan)

    def forward_features(self, x: torch.Tensor, valid_sizes=None) -> torch.Tensor | list[torch.Tensor]:
        """The head's (N, head_channels, H/32, W/32) map, or the feature maps if ``features_only``.

        ``valid_sizes``: optional (N, 2) per-image valid (height, width) of a ragged batch (a
        list or CPU tensor costs no host sync); each image is then computed as if run alone at
        that size, and positions outside its valid extent are zero in the returned maps.
        """
        return self._execute(x, valid_sizes, "features")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, valid_hw=None) -> torch.Tensor:
        """Pool (over each image's valid region when ``valid_hw`` gives the head map's valid
        sizes), dropout, classifier; ``pre_logits`` stops before the classifier."""
        sizes = None if valid_hw is None else RaggedSizes.from_user(valid_hw, x.shape)
        return reference.head(self, x, sizes, pre_logits)

    def forward(self, x: torch.Tensor, valid_sizes=None) -> torch.Tensor | list[torch.Tensor]:
        """Logits (or pooled features if ``num_classes == 0``; feature maps if ``features_only``).

        ``valid_sizes``: optional (N, 2) per-image valid (height, width) for a ragged batch, as
        returned by :func:`fastmbconv.prepare_images`; see :mod:`fastmbconv.ragged`.
        """
        return self._execute(x, valid_sizes, "logits")

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
