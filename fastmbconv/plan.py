"""What one forward call must do, decided once before any layer runs.

``EfficientNet.forward`` and ``forward_features`` check their input here and hand a
:class:`ForwardPlan` to exactly one executor, the one :func:`fastmbconv.backend.select_path`
picks: :mod:`fastmbconv.reference` (the modules) or :mod:`fastmbconv.fused` (the Triton
kernels). Both take ``run(model, x, plan)`` and produce the whole output, head included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from .backend import select_path
from .geometry import PadMode, RaggedSizes

#: ``logits``: classifier output (pooled features when the classifier is Identity);
#: ``features``: the head's (N, C, H/32, W/32) map after conv + BN + SiLU;
#: ``stage_maps``: the outputs of the stages in ``ForwardPlan.stages`` (the forward stops after
#: the last of them);
#: ``intermediates``: (``features``, the ``stage_maps``).
Output = Literal["logits", "features", "stage_maps", "intermediates"]

#: The stage index of the stem's output in ``ForwardPlan.stages``; blocks' stages count from 0.
STEM = -1


@dataclass(frozen=True)
class ForwardPlan:
    output: Output
    pad_mode: PadMode
    dtype: torch.dtype  # what the activations compute in (see :func:`compute_dtype`)
    sizes: Optional[RaggedSizes] = None  # per-image valid sizes of a ragged batch
    stages: tuple[int, ...] = ()  # stage indices whose outputs are returned (STEM for the stem's)
    channels_last: bool = False  # returned maps in channels_last (as the input was), else contiguous
    path: str = "reference"  # the executor: "reference" or "fused" (fastmbconv.backend.select_path)

    @property
    def last_stage(self) -> int:
        """The last stage this call needs to run."""
        return max(self.stages) if self.output == "stage_maps" else 1 << 30


# Read once at import: dynamo (torch 2.11) cannot trace torch.amp.is_autocast_available, so a
# compiled forward may only look the answer up.
AUTOCAST_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda", "xpu", "mps", "hpu")
                                   if torch.amp.is_autocast_available(d))


def compute_dtype(model, x: torch.Tensor) -> torch.dtype:
    """The autocast dtype where autocast is on for the input's device and would lower this
    model's fp32 convs, else the model's own dtype."""
    dtype = model.conv_stem.weight.dtype
    device_type = x.device.type
    if (dtype == torch.float32 and device_type in AUTOCAST_DEVICE_TYPES
            and torch.is_autocast_enabled(device_type)):
        return torch.get_autocast_dtype(device_type)
    return dtype


def check_input(model, x) -> None:
    """Raise a clear error for inputs the model cannot run."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"EfficientNet expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"EfficientNet expects a 4-D (N, C, H, W) input, got {x.ndim}-D shape {tuple(x.shape)}")
    if x.shape[1] != model.in_chans:
        raise ValueError(f"EfficientNet expects {model.in_chans} input channels, got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"EfficientNet expects a floating-point input, got {x.dtype}; convert images with "
                        "x.float() / 255 and normalise (see fastmbconv.prepare_images)")
    weight = model.conv_stem.weight
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device} but the model is on {weight.device}; "
                         f"move one of them, e.g. x.to('{weight.device}')")
    autocast = x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type)
    if x.dtype != weight.dtype and not autocast:
        raise TypeError(f"input dtype {x.dtype} does not match the model's {weight.dtype}; "
                        f"use x.to({weight.dtype}) or model.to({x.dtype}), or run under torch.autocast")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"input spatial size must be at least 1x1, got {tuple(x.shape[2:])}")


def make_plan(model, x: torch.Tensor, valid_sizes, output: Output, stages=None) -> ForwardPlan:
    """Check ``x`` (and ``valid_sizes``, for a ragged batch) and plan the call. ``stages``: the
    stage outputs to return for ``stage_maps``/``intermediates``, as executor stage indices
    (``STEM`` or a ``blocks`` index; default: the maps ``model.feature_info`` selects)."""
    check_input(model, x)
    dtype, path = compute_dtype(model, x), select_path(model, x)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    sizes = None
    if valid_sizes is not None:
        if model.training:
            raise RuntimeError("ragged batches (valid_sizes) are inference-only: BatchNorm's batch statistics "
                               "would mix padding into every image; call model.eval()")
        sizes = RaggedSizes.from_user(valid_sizes, x.shape)
    if model.features_only and output != "intermediates":
        output = "stage_maps"
    if output in ("stage_maps", "intermediates"):
        stages = model.feature_info.plan_stages() if stages is None else tuple(sorted(set(stages)))
        if not stages or not all(STEM <= i < len(model.blocks) for i in stages):
            raise ValueError(f"stages {stages} must be {STEM} (the stem) or block stages 0..{len(model.blocks) - 1}")
    else:
        stages = ()
    return ForwardPlan(output, model.pad_mode, dtype, sizes, stages, channels_last, path)
