"""The EfficientNet module: its layers, and a forward that plans each call once and hands it to
one executor, :mod:`fastmbconv.reference` (the modules) or :mod:`fastmbconv.fused` (the kernels).
Builders by name and scale live in :mod:`fastmbconv.builders`."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from . import reference
from .config import B0_HEAD_CHANNELS, B0_STAGES, B0_STEM_CHANNELS, BN_EPS, StageConfig
from .features import FeatureInfo, Indices, stage_feature_dicts, take_indices
from .geometry import PadMode, RaggedSizes, check_pad_mode
from .layers import DepthwiseSeparable, MBConv, PaddedConv2d, init_weights
from .plan import Output, make_plan
from .pretrained import for_features, generic_cfg

#: ``global_pool`` choices: average or max over the head map; ``""`` returns the head map
#: itself (with ``num_classes=0``), as in timm.
GLOBAL_POOLS = ("avg", "max", "")


class StateDictMismatchError(ValueError, RuntimeError):
    """A state dict does not fit the model; the message lists every offending key. Also a
    ``RuntimeError``, as ``nn.Module.load_state_dict``'s mismatches are, so code that catches
    those catches it."""


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
        out_indices: which of those five maps to return, as timm takes it: a sequence
            (negative counts from the end) or an int n (the last n).
        global_pool: ``"avg"`` (default), ``"max"``, or ``""`` (no pooling; needs num_classes=0).

    ``feature_info`` is a :class:`fastmbconv.features.FeatureInfo` with timm's stage numbers;
    ``pretrained_cfg`` is timm's configuration for the model's name and tag (the builders and
    :func:`fastmbconv.create_model` set it), which :func:`fastmbconv.eval_transform` reads.
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
        out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3, 4),
        global_pool: str = "avg",
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

        all_features = stage_feature_dicts(self.stages)
        self.grad_checkpointing = False
        if features_only:
            try:
                self.feature_info = FeatureInfo(all_features, out_indices)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"out_indices {out_indices!r} invalid for the {len(all_features)} feature maps "
                                 f"(strides 2, 4, 8, 16, 32): {exc}") from None
            self.out_indices = self.feature_info.out_indices
            self.num_features = self.head_channels = self.head_hidden_size = 0
            self.global_pool = ""
        else:
            self.feature_info = FeatureInfo(all_features, range(len(all_features)))
            self.out_indices = ()
            # head_hidden_size: timm's name for the width before the classifier (no pre-logits layer here)
            self.num_features = self.head_channels = self.head_hidden_size = head_channels
            self.conv_head = nn.Conv2d(in_ch, head_channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(head_channels, eps=bn_eps)
            self.global_pool = _checked_pool(global_pool, num_classes)
            self.classifier = (
                nn.Linear(head_channels, num_classes) if num_classes > 0 else nn.Identity()
            )
        cfg = generic_cfg(default_resolution)
        self.pretrained_cfg = for_features(cfg) if features_only else cfg
        init_weights(self)

    @property
    def default_cfg(self) -> dict:
        """timm's older name of ``pretrained_cfg``."""
        return self.pretrained_cfg

    # ------------------------------------------------------------------ forward
    def _execute(self, x: torch.Tensor, valid_sizes, output: Output, stages=None):
        plan = make_plan(self, x, valid_sizes, output, stages)
        if plan.path == "fused":
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

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Indices = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        extra_blocks: bool = False,
        valid_sizes=None,
    ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's ``forward_intermediates``: the feature maps at ``indices`` and the final map.

        ``indices`` select among the ``feature_info`` maps (or, with ``extra_blocks``, among the
        stem and every stage's output): None takes all, an int n the last n, a sequence each
        entry (negative from the end). Maps come in network order. Returns the list if
        ``intermediates_only``, else ``(final, list)`` where ``final`` is the head map after
        conv_head + bn2 + SiLU, or, with ``stop_early`` and a last index before the final stage,
        that stage's map (the forward stops there). After :meth:`prune_intermediate_layers`
        removed the head conv, ``final`` is the last kept stage's map and ``None`` takes the
        kept maps (a removed one, asked for, is refused). ``norm`` is accepted and ignored
        (EfficientNet has no norm on its intermediates, as in timm); ``output_fmt`` must be
        "NCHW".
        ``valid_sizes``: as in :meth:`forward`.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        _, stages = self._selected_stages(indices, extra_blocks)
        head = not intermediates_only and (not stop_early or stages[-1] == len(self.blocks) - 1)
        if head and self.features_only:
            raise RuntimeError("a features_only model has no head; use intermediates_only=True")
        if not head:
            maps = self._execute(x, valid_sizes, "stage_maps", stages)
            return maps if intermediates_only else (maps[-1], maps)
        final, maps = self._execute(x, valid_sizes, "intermediates", stages)
        return final, maps

    def _selected_stages(self, indices: Indices, extra_blocks: bool) -> tuple[list[int], list[int]]:
        """The indices ``forward_intermediates`` takes (as timm numbers them) and their executor
        stages in network order (:data:`fastmbconv.plan.STEM` for the stem). Feature indices
        count over all of ``feature_info``, as in timm, so maps of stages that
        :meth:`prune_intermediate_layers` removed are refused by name."""
        if extra_blocks:  # the stem, then every stage
            taken = take_indices(len(self.blocks) + 1, indices)
            return taken, sorted({i - 1 for i in taken})
        info = self.feature_info
        kept = [i for i in range(len(info)) if info[i]["stage"] <= len(self.blocks)]
        if not kept:
            raise ValueError("no feature map is left: prune_intermediate_layers kept the stem alone; "
                             "use extra_blocks=True")
        taken = take_indices(len(info), kept if indices is None else indices)
        removed = [i for i in taken if i not in kept]
        if removed:
            raise ValueError(f"feature index {removed[0]} ({info[removed[0]]['module']}) was removed by "
                             f"prune_intermediate_layers: this model keeps feature indices 0..{kept[-1]}")
        return taken, sorted({info[i]["stage"] - 1 for i in taken})

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

    # ------------------------------------------------------------------ timm's training hooks
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier for transfer learning; 0 returns pooled features.
        ``global_pool``: "avg", "max" or "" (no pooling, with num_classes=0); None (the
        default, as in timm 1.0.31) keeps the current one."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is None and self.global_pool == "" and num_classes > 0:
            raise ValueError(f"reset_classifier({num_classes}) keeps the current pooling, global_pool='' (none), "
                             f"which returns the head map: pass global_pool='avg' or 'max' for a classifier")
        self.global_pool = _checked_pool(self.global_pool if global_pool is None else global_pool, num_classes)
        self.num_classes = num_classes
        device, dtype = self.conv_stem.weight.device, self.conv_stem.weight.dtype
        if num_classes > 0:
            self.classifier = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype)
            init_weights(self.classifier)
            self.classifier.train(self.training)
        else:
            self.classifier = nn.Identity()

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False, prune_head: bool = True,
                                  extra_blocks: bool = False) -> list[int]:
        """timm's (as of 1.0.31): remove what ``forward_intermediates(x, indices, extra_blocks=...)``
        does not need. The stages after the last selected map go; with them, or with
        ``prune_head`` or ``prune_norm``, the head conv + BN (``conv_head``, ``bn2``) and the
        classifier go too: ``forward`` and ``forward_features`` then return the last kept
        stage's map (``global_pool=""``), ``num_features`` is its width, and
        :meth:`reset_classifier` can put a new classifier on it. ``feature_info`` and the feature
        indices are unchanged, as in timm. Returns the selected indices."""
        if self.features_only:
            raise RuntimeError("a features_only model has no head or stages to prune beyond its out_indices; "
                               "prune the full model, or choose out_indices")
        taken, stages = self._selected_stages(indices, extra_blocks)
        keep = stages[-1] + 1  # stages kept after the stem (the stem's STEM = -1 keeps none)
        if keep < len(self.blocks):
            self.blocks, self.stages = self.blocks[:keep], self.stages[:keep]
        elif not (prune_head or prune_norm):
            return taken
        self.conv_head, self.bn2 = nn.Identity(), nn.Identity()
        self.head_channels = 0
        width = self.stages[-1].out_channels if keep else self.conv_stem.out_channels
        self.num_features = self.head_hidden_size = width
        self.reset_classifier(0, "")
        return taken

    @property
    def has_head_conv(self) -> bool:
        """Whether the head conv + BN + SiLU runs after the last stage: not in a features_only
        model, nor after :meth:`prune_intermediate_layers` removed it."""
        return isinstance(getattr(self, "conv_head", None), nn.Conv2d)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter groups (for layer-wise learning-rate decay): the stem, then one group
        per block (per stage if ``coarse``), then the head."""
        return dict(
            stem=r"^conv_stem|bn1",
            blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None), (r"conv_head|bn2", (99999,))],
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them
        (``torch.utils.checkpoint``, non-reentrant) while autograd records: gradients are
        unchanged and activation memory drops to about one block's. As in timm, BatchNorm's
        running statistics see each training batch twice (forward and recomputation), and a
        block's forward pre-hooks run again in the recomputation (its forward hooks do not)."""
        self.grad_checkpointing = bool(enable)  # read by the layer walk, reference.stages

    # ------------------------------------------------------------------ weights
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Like ``nn.Module.load_state_dict``, but a mismatch raises
        :class:`StateDictMismatchError` listing every missing, unexpected and mis-shaped key."""
        own = self.state_dict()
        # BatchNorm fills in a missing count itself, as torch and timm load older checkpoints
        missing = sorted(k for k in set(own) - set(state_dict) if not k.endswith("num_batches_tracked"))
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


def _checked_pool(global_pool: str, num_classes: int) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    if global_pool == "" and num_classes > 0:
        raise ValueError("global_pool='' (no pooling) returns the head map: it needs num_classes=0")
    return global_pool

