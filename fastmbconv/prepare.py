"""One-pass image preparation: uint8 images (as decoders produce them) to one normalised,
channels_last batch, in a single call of the compiled op ``fastmbconv::prepare_images_v2``
(one kernel launch on CUDA, one parallel loop on CPU).

    batch, valid_hw = prepare_images(images, 224, mode="letterbox", dtype=torch.float16,
                                     device="cuda")
    batch, _ = eval_transform(model)(images)  # timm's eval preprocessing for the model

The op takes the images where they are plus one int64 table of (tensor, offset, size, resized
size, window) per image: a list costs one op call and one launch, and no packing copy. Images on
the CPU with ``device="cuda"`` are packed once on the CPU and uploaded as one uint8 buffer.

:func:`prepare_images_ref` is the same computation composed of torch ops, per image. The op
matches it within one unit in the last place of the output dtype (plus ~1e-6 absolute fp32
rounding) on the F.interpolate bilinear path, and within one 8-bit step, 1 / (255 std), on the
Pillow (antialiased) paths, which round to uint8 in fixed point where the reference rounds fp32.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import _ext, streams
from ._prepare_plan import (  # noqa: F401  (re-exported)
    ALIGNS,
    DEFAULT_CROP_PCT,
    DTYPES,
    INTERPOLATIONS,
    MODES,
    Images,
    Plan,
    Size,
    center_crop_size,
    checked_crop_pct,
    checked_size,
    letterbox_size,
    make_plan,
    per_channel,
    pillow_vertical_first,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MODES", "INTERPOLATIONS", "EvalTransform",
           "center_crop_size", "eval_transform", "letterbox_size", "pillow_vertical_first",
           "prepare_images", "prepare_images_ref"]


def _valid_hw(plan: Plan) -> torch.Tensor:
    return torch.tensor(plan.resized, dtype=torch.int32).to(plan.device, non_blocking=True)


_fake_registered = False


def _register_fake() -> None:
    """The fake (meta) implementation of fastmbconv::prepare_images_v2, for torch.compile and
    FakeTensorMode; the op's C++ definition names this module as its home."""
    global _fake_registered
    if _fake_registered:
        return

    torch.library.register_fake("fastmbconv::prepare_images_v2")(
        _ext.prepare_images_fake(meta_cols=11, mode="filter", modes=(0, 1, 2)))
    _fake_registered = True


def _op():
    ops = _ext.ops()
    _register_fake()
    return ops.prepare_images_v2


def prepare_images(
    images: Images,
    size: Optional[Size] = None,
    mode: str = "resize",
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    align: int = 32,
    device: Union[str, torch.device, None] = None,
    *,
    interpolation: str = "bilinear",
    antialias: Optional[bool] = None,
    crop_pct: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Resize / letterbox / pad / centre-crop, normalise and batch uint8 images in one op call.

    Args:
        images: a uint8 NHWC batch (N, H, W, C), one HWC (or HW) image, or a list of HWC (or HW)
            images whose sizes and channel counts may differ; torch tensors or numpy arrays
            (used in place, not copied), all on one device. C is 3 (RGB) or 1 (grayscale,
            expanded to 3 equal channels; an HW image is grayscale). A 3-D image whose first
            dim is 1 or 3 and last is not raises "looks like CHW; pass HWC".
        size: ``resize``: int or (H, W); ``letterbox``: int; ``center_crop``: int or (H, W), the
            crop; ignored by ``pad``.
        mode:
            ``"resize"``: to (H, W), aspect ratio not kept.
            ``"letterbox"``: the longer side to ``size``, aspect kept (shorter side round(short *
            size / long), at least 1), top-left, zero-padded bottom/right to (size, size).
            ``"pad"``: no resize; top-left, zero-padded to the batch's largest height and width,
            each rounded up to a multiple of ``align``.
            ``"center_crop"``: timm's / torchvision's eval transform: the shorter side to
            floor(size / crop_pct), aspect kept, then the centred (H, W) window (see
            :func:`center_crop_size` for the exact sizes and rounding).
        interpolation: ``"bilinear"`` or ``"bicubic"``.
        antialias: True: resample exactly as Pillow's ``Image.resize`` (torchvision's and timm's
            PIL path): two separable passes, the filter's support widened by the downscale
            factor, bicubic with a = -0.5, fixed-point coefficients, each pass rounded to uint8,
            horizontal first unless the height shrinks by more than twice what the width does
            (:func:`pillow_vertical_first`): bit-exact to Pillow 13's 8-bit resampling (Pillow
            12 and earlier always go horizontal first: one 8-bit step apart on such images).
            False (bilinear only): ``F.interpolate(mode="bilinear", align_corners=False,
            antialias=False)`` on the float image, unrounded; strong downscaling aliases.
            None (default): True for ``center_crop``, False otherwise.
        crop_pct: ``center_crop`` only, in (0, 1]; default 0.875 (timm's).
        dtype: torch.float32, torch.float16 or torch.bfloat16.
        mean, std: per-channel (RGB) normalisation ``(x / 255 - mean) / std`` in fp32, then
            cast to ``dtype`` (one number is used for all three channels). Integer values
            (Pillow paths, unresized images) get the three-step fp32 values exactly; the
            F.interpolate path folds it into ``x * scale + shift``, within a few fp32 ulps.
        align: 8, 16 or 32 (``pad`` mode's rounding; checked in every mode).
        device: where the batch is made; default the images' device. CPU images with
            ``device="cuda"`` are packed on the CPU and uploaded as uint8.

    Padding is applied *after* normalisation: padded pixels are exactly 0 in the output (not
    the normalised value of black), as EfficientDet does.

    Returns:
        ``(batch, valid_hw)``: batch is (N, 3, H, W) in ``dtype``, channels_last memory format;
        valid_hw is an int32 (N, 2) tensor on the same device with each image's valid (height,
        width), i.e. the top-left region holding it.

    Raises:
        TypeError / ValueError for bad input (non-uint8 images, channel counts other than 1 or
        3, CHW images, empty images or lists, mismatched devices, bad size / align /
        interpolation / crop_pct, bicubic without antialias, sizes overflowing 32-bit image
        extents); ``fastmbconv._ext.ExtensionNotBuiltError`` when the compiled extension is
        missing (build it with ``pip install -e . --no-build-isolation``).
    """
    plan = make_plan(images, size, mode, dtype, mean, std, align, device, interpolation, antialias, crop_pct)
    op = _op()
    if plan.device.type == "cuda":
        if streams.capturing(plan.device):
            # The op builds its table of image addresses on the host and uploads it: a replay
            # would read the capture's images through a host buffer freed since.
            raise RuntimeError(
                "prepare_images cannot be captured in a CUDA graph; run it outside the capture and "
                "copy its batch into the graph's static input (batch_in.copy_(batch))")
        if not _ext.has_cuda_kernels():
            raise RuntimeError(
                "fastmbconv._C was built without its CUDA kernels (CPU-only torch or no nvcc at "
                f"build time); rebuild with a CUDA torch and nvcc: `{_ext.BUILD_COMMAND}`, or "
                "prepare on the CPU and move the batch"
            )
    elif plan.device.type != "cpu":
        raise ValueError(f"prepare_images runs on cpu or cuda, not {plan.device}; "
                         "use prepare_images_ref there")

    if plan.batch is not None:
        n, h, w, c = plan.batch.shape
        sources = [plan.batch.to(plan.device).contiguous()]
        rows = [(0, i * h * w * c) for i in range(n)]
    elif plan.images[0].device == plan.device:
        # The op reads each image where it is: no packing copy (non-contiguous ones are copied).
        sources = [im.contiguous() for im in plan.images]
        rows = [(i, 0) for i in range(len(sources))]
    else:
        # Another device: pack once where the images are and move one uint8 buffer.
        sources = [torch.cat([im.reshape(-1) for im in plan.images]).to(plan.device)]
        rows, pos = [], 0
        for (h, w), c in zip(plan.sizes, plan.channels):
            rows.append((0, pos))
            pos += h * w * c
    meta = torch.tensor(
        [[s, o, h, w, c, sh, sw, top, left, rh, rw] for (s, o), (h, w), c, (sh, sw), (top, left), (rh, rw)
         in zip(rows, plan.sizes, plan.channels, plan.scaled, plan.corners, plan.resized)],
        dtype=torch.int64,
    )
    batch = op(sources, meta, plan.filter, plan.out_h, plan.out_w, plan.dtype, plan.mean, plan.std)
    return batch, _valid_hw(plan)


def _resample_ref(x: torch.Tensor, size: Tuple[int, int], plan: Plan) -> torch.Tensor:
    """x (1, 3, h, w) fp32 resized to ``size`` as the op does: F.interpolate bilinear, or the
    Pillow path as two antialiased F.interpolate passes in Pillow's order, each rounded half up
    and clamped to [0, 255] as Pillow rounds to uint8."""
    h, w = x.shape[-2:]
    if plan.filter == 0:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    first = (size[0], w) if pillow_vertical_first(h, w, *size) else (h, size[1])
    for step in (first, size):
        if tuple(step) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=step, mode=plan.interpolation, align_corners=False, antialias=True)
            x = x.add(0.5).floor_().clamp_(0, 255)
    return x


def prepare_images_ref(
    images: Images,
    size: Optional[Size] = None,
    mode: str = "resize",
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    align: int = 32,
    device: Union[str, torch.device, None] = None,
    *,
    interpolation: str = "bilinear",
    antialias: Optional[bool] = None,
    crop_pct: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`prepare_images` composed of torch ops, one image at a time (the reference): the
    resize of ``_resample_ref`` on the fp32 image, the window sliced out, ``(x / 255 - mean) /
    std``, ``F.pad`` bottom/right with zeros, cast, stack, channels_last. Same arguments,
    validation and result as :func:`prepare_images`; needs no extension and runs on any
    device. Antialiased (Pillow) resizes agree with the op within one 8-bit step: F.interpolate
    computes Pillow's filter in fp32 where Pillow uses fixed point, so an intermediate value
    within ~1e-4 of a rounding boundary can round the other way."""
    plan = make_plan(images, size, mode, dtype, mean, std, align, device, interpolation, antialias, crop_pct)
    mean_t = torch.tensor(plan.mean, dtype=torch.float32, device=plan.device).view(1, 3, 1, 1)
    std_t = torch.tensor(plan.std, dtype=torch.float32, device=plan.device).view(1, 3, 1, 1)
    images = list(plan.batch.unbind(0)) if plan.batch is not None else plan.images
    out = []
    for im, (h, w), (sh, sw), (top, left), (rh, rw) in zip(
            images, plan.sizes, plan.scaled, plan.corners, plan.resized):
        x = im.to(plan.device).permute(2, 0, 1)[None].float()
        x = x.expand(1, 3, h, w)  # grayscale (C = 1) to RGB; a no-op for C = 3
        if (sh, sw) != (h, w):
            x = _resample_ref(x, (sh, sw), plan)
        x = x[:, :, top:top + rh, left:left + rw]
        x = (x / 255 - mean_t) / std_t
        x = F.pad(x, (0, plan.out_w - rw, 0, plan.out_h - rh))
        out.append(x[0].to(plan.dtype))
    batch = torch.stack(out).contiguous(memory_format=torch.channels_last)
    return batch, _valid_hw(plan)


@dataclass(frozen=True)
class EvalTransform:
    """timm's eval preprocessing of one model as one :func:`prepare_images` call (mode
    ``center_crop``): ``batch, valid_hw = transform(images, dtype=..., device=...)``. Made by
    :func:`eval_transform`; ``interpolation`` is the one timm applies (see there)."""

    size: Tuple[int, int]
    crop_pct: float
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def __call__(self, images: Images, dtype: torch.dtype = torch.float32, device=None):
        return prepare_images(images, self.size, "center_crop", dtype, self.mean, self.std,
                              device=device, interpolation=self.interpolation, crop_pct=self.crop_pct)


def eval_transform(cfg_or_model, use_test_size: bool = False) -> EvalTransform:
    """The eval preprocessing of a model from its timm-style ``pretrained_cfg``: a mapping, or
    a model with a ``pretrained_cfg`` mapping attribute. Keys are resolved as timm's
    ``resolve_data_config`` does: ``input_size`` (3, H, W) (default (3, 224, 224);
    ``test_input_size`` with ``use_test_size``), ``crop_pct`` (default 0.875;
    ``test_crop_pct`` with ``use_test_size``), ``interpolation`` (default "bicubic"), ``mean``,
    ``std`` (default ImageNet's), ``crop_mode`` (only "center", the default, is supported).

    The result reproduces ``timm.data.create_transform(**resolve_data_config(...))`` on PIL
    RGB images (Resize, CenterCrop, ToTensor, Normalize): the same resized and cropped uint8
    pixels (Pillow 13's resampling, done bit-exactly), then the same fp32 normalisation, so in
    float32 the batch equals timm's bit for bit; fp16 / bf16 round it once. Tested within one
    8-bit step, 1 / (255 std), per value against a PIL implementation of timm's transform. As
    timm does, a non-square input_size is resized with bilinear whatever the config says (timm
    builds its ``ResizeKeepRatio`` without the interpolation argument)."""
    cfg = cfg_or_model if isinstance(cfg_or_model, Mapping) else getattr(cfg_or_model, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping):
        raise TypeError("eval_transform takes a pretrained_cfg mapping or a model with a "
                        f"pretrained_cfg mapping, got {type(cfg_or_model).__name__}")
    input_size = (use_test_size and cfg.get("test_input_size")) or cfg.get("input_size") or (3, 224, 224)
    if len(input_size) != 3 or input_size[0] != 3:
        raise ValueError(f"input_size must be (3, H, W) (RGB), got {input_size!r}")
    crop_pct = (use_test_size and cfg.get("test_crop_pct")) or cfg.get("crop_pct") or DEFAULT_CROP_PCT
    crop_mode = cfg.get("crop_mode") or "center"
    if crop_mode != "center":
        raise ValueError(f"crop_mode {crop_mode!r} is not supported (only 'center')")
    interpolation = cfg.get("interpolation") or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    size = checked_size(tuple(input_size[1:]), "center_crop")
    if size[0] != size[1]:
        interpolation = "bilinear"
    mean = tuple(per_channel("mean", cfg.get("mean") or IMAGENET_MEAN))
    std = tuple(per_channel("std", cfg.get("std") or IMAGENET_STD))
    if 0.0 in std:
        raise ValueError(f"std must be non-zero, got {std}")
    return EvalTransform(size, checked_crop_pct(crop_pct), interpolation, mean, std)


# The extension was loaded before this module was imported: register the fake now.
if sys.modules.get("fastmbconv._C") is not None:
    _register_fake()
