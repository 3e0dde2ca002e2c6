"""One-pass image preparation: uint8 HWC images (as decoders produce them) to one normalised,
channels_last batch, in a single call of the compiled op ``fastmbconv::prepare_images``
(one kernel launch on CUDA, one parallel loop on CPU).

    batch, valid_hw = prepare_images(images, 224, mode="letterbox", dtype=torch.float16,
                                     device="cuda")

``images`` is a uint8 NHWC tensor or a list of uint8 HWC tensors of different sizes. The op
takes the tensors as they are plus one int64 table of (tensor, offset, size, resized size) per
image, so a list costs one op call and one launch, never one per image, and no packing copy.
Images on the CPU with ``device="cuda"`` are packed once on the CPU (one concatenation) and
uploaded as one uint8 buffer (a quarter of the bytes of fp32).

:func:`prepare_images_ref` is the same computation composed of torch ops (F.interpolate, F.pad,
normalise, per image); the op matches it within one unit in the last place of the output dtype
(plus fp32 rounding, ~1e-6 absolute, which shows only near zero in fp16/bf16).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from . import _ext

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("resize", "letterbox", "pad")
ALIGNS = (8, 16, 32)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1

Images = Union[torch.Tensor, Sequence[torch.Tensor]]

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODES",
    "prepare_images",
    "prepare_images_ref",
    "letterbox_size",
]


def letterbox_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """(h, w) after scaling the longer side to ``size`` and keeping the aspect ratio: the shorter
    side is round(short * size / long), halves rounded up, and at least 1."""
    long = max(height, width)
    h = max(1, (2 * height * size + long) // (2 * long))
    w = max(1, (2 * width * size + long) // (2 * long))
    return h, w


@dataclass
class _Plan:
    images: List[torch.Tensor]  # the HWC images of a list (only the first of a 4-D batch)
    batch: Optional[torch.Tensor]  # the NHWC input, when one was given
    channels: int
    sizes: List[Tuple[int, int]]  # (h, w) of each image
    resized: List[Tuple[int, int]]  # (rh, rw) of each image: its valid extent in the output
    out_h: int
    out_w: int
    dtype: torch.dtype
    mean: List[float]
    std: List[float]
    device: torch.device  # where the output lives


def _floats(name: str, values) -> List[float]:
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    elif isinstance(values, (int, float)):
        values = [values]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number or a sequence of 1 or 3 numbers, got {values!r}") from exc
    if len(out) == 1:
        out = out * 3
    if len(out) != 3:
        raise ValueError(f"{name} must have 1 or 3 values (one per RGB channel), got {len(out)}")
    return out


def _plan(images: Images, size, mode, dtype, mean, std, align, device) -> _Plan:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise TypeError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16, got {dtype}")
    if isinstance(align, bool) or align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if mode != "pad":
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"size must be an int for mode={mode!r}, got {size!r}")
        size = int(size)
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if size > _INT32_MAX:
            raise ValueError(f"size {size} overflows 32-bit image sizes (valid_hw is int32); max {_INT32_MAX}")
    mean_l, std_l = _floats("mean", mean), _floats("std", std)
    if any(s == 0.0 for s in std_l):
        raise ValueError(f"std must be non-zero, got {std_l}")

    batch = None
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(
                "images must be a uint8 NHWC tensor (N, H, W, C) or a list of uint8 HWC tensors; "
                f"got a tensor of shape {tuple(images.shape)} (wrap a single image as [image])"
            )
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch (N = 0)")
        batch = images
        items = [images[0]]  # every image of a batch shares shape, dtype and device
    elif isinstance(images, (list, tuple)):
        items = list(images)
        if not items:
            raise ValueError("images is an empty list")
    else:
        raise TypeError(f"images must be a uint8 NHWC tensor or a list of uint8 HWC tensors, got {type(images).__name__}")

    first = items[0]
    for i, im in enumerate(items):
        if not isinstance(im, torch.Tensor):
            raise TypeError(f"images[{i}] is a {type(im).__name__}, not a tensor")
        if im.dim() != 3:
            raise ValueError(
                f"images[{i}] has {im.dim()} dims (shape {tuple(im.shape)}); every image must be "
                "HWC (3 dims)" + ("" if i == 0 else f" like images[0] {tuple(first.shape)}")
            )
        if im.dtype != torch.uint8:
            raise TypeError(f"images[{i}] must be uint8, got {im.dtype}")
        if im.shape[2] not in (1, 3):
            raise ValueError(
                f"images[{i}] has {im.shape[2]} channels (shape {tuple(im.shape)}); need 3 (RGB) "
                "or 1 (grayscale, expanded to RGB), channels last (HWC)"
            )
        if im.shape[2] != first.shape[2]:
            raise ValueError(
                f"images[{i}] has {im.shape[2]} channels but images[0] has {first.shape[2]}; "
                "all images of a batch must have the same channel count"
            )
        if im.device != first.device:
            raise ValueError(f"images[{i}] is on {im.device} but images[0] is on {first.device}; "
                             "all images must be on one device")
        if im.shape[0] == 0 or im.shape[1] == 0:
            raise ValueError(f"images[{i}] is empty (shape {tuple(im.shape)})")
        if im.shape[0] > _INT32_MAX or im.shape[1] > _INT32_MAX:
            raise ValueError(f"images[{i}] of shape {tuple(im.shape)} overflows 32-bit image sizes")

    if batch is not None:
        sizes = [(int(batch.shape[1]), int(batch.shape[2]))] * int(batch.shape[0])
    else:
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in items]
    if mode == "resize":
        resized = [(size, size)] * len(sizes)
        out_h = out_w = size
    elif mode == "letterbox":
        resized = [letterbox_size(h, w, size) for h, w in sizes]
        out_h = out_w = size
    else:
        resized = list(sizes)
        out_h = -(-max(h for h, _ in sizes) // align) * align
        out_w = -(-max(w for _, w in sizes) // align) * align
        if out_h > _INT32_MAX or out_w > _INT32_MAX:
            raise ValueError(f"padded size ({out_h}, {out_w}) overflows 32-bit image sizes")
    if len(sizes) * 3 * out_h * out_w >= 2**63:
        raise ValueError(f"output of {len(sizes)} x 3 x {out_h} x {out_w} elements overflows int64 indexing")
    target = torch.device(device) if device is not None else first.device
    return _Plan(items, batch, int(first.shape[2]), sizes, resized, out_h, out_w, dtype,
                 mean_l, std_l, target)


def _valid_hw(plan: _Plan) -> torch.Tensor:
    return torch.tensor(plan.resized, dtype=torch.int32).to(plan.device, non_blocking=True)


def prepare_images(
    images: Images,
    size: Optional[int] = None,
    mode: str = "resize",
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    align: int = 32,
    device: Union[str, torch.device, None] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Resize / letterbox / pad, normalise and batch uint8 images in one op call.

    Args:
        images: a uint8 NHWC tensor (N, H, W, C), or a list of uint8 HWC tensors whose heights
            and widths may differ. C is 3 (RGB), or 1 (grayscale, expanded to 3 equal channels);
            every image must have the same C and be on the same device.
        size: output side for ``resize`` and ``letterbox`` (a positive int); ignored by ``pad``.
        mode:
            ``"resize"``: bilinear to (size, size), as ``F.interpolate(mode="bilinear",
            align_corners=False, antialias=False)`` on the float image (no antialiasing, so
            strong downscaling aliases, like that call).
            ``"letterbox"``: bilinear so the longer side is ``size`` and the aspect ratio is
            kept (shorter side round(short * size / long), at least 1), placed top-left and
            zero-padded bottom/right to (size, size).
            ``"pad"``: no resize; each image top-left, zero-padded bottom/right to the batch's
            largest height and width, each rounded up to a multiple of ``align``.
        dtype: torch.float32, torch.float16 or torch.bfloat16.
        mean, std: per-channel (RGB) normalisation ``(x / 255 - mean) / std`` in fp32, then
            cast to ``dtype`` (one number is used for all three channels). The op folds it into
            ``x * scale + shift``, within a few fp32 ulps of the three-step formula; unresized
            images (``pad``) get the three-step values exactly.
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
        3, empty images or lists, mismatched list entries, size <= 0, align not in {8, 16, 32},
        sizes overflowing 32-bit image extents); ``fastmbconv._ext.ExtensionNotBuiltError`` when
        the compiled extension is missing (build it with ``pip install -e .
        --no-build-isolation``).
    """
    plan = _plan(images, size, mode, dtype, mean, std, align, device)
    op = _ext.ops().prepare_images
    if plan.device.type == "cuda":
        if not _ext.has_cuda_kernels():
            raise RuntimeError(
                "fastmbconv._C was built without its CUDA kernels (CPU-only torch or no nvcc at "
                f"build time); rebuild with a CUDA torch and nvcc: `{_ext.BUILD_COMMAND}`, or "
                "prepare on the CPU and move the batch"
            )
    elif plan.device.type != "cpu":
        raise ValueError(f"prepare_images runs on cpu or cuda, not {plan.device}; "
                         "use prepare_images_ref there")

    c = plan.channels
    if plan.batch is not None:
        n, h, w, _ = plan.batch.shape
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
        for h, w in plan.sizes:
            rows.append((0, pos))
            pos += h * w * c
    meta = torch.tensor(
        [[s, o, h, w, rh, rw] for (s, o), (h, w), (rh, rw) in zip(rows, plan.sizes, plan.resized)],
        dtype=torch.int64,
    )
    batch = op(sources, meta, c, plan.out_h, plan.out_w, plan.dtype, plan.mean, plan.std)
    return batch, _valid_hw(plan)


def prepare_images_ref(
    images: Images,
    size: Optional[int] = None,
    mode: str = "resize",
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    align: int = 32,
    device: Union[str, torch.device, None] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`prepare_images` composed of torch ops, one image at a time (the reference):
    ``F.interpolate`` (bilinear, align_corners=False, antialias=False) on the fp32 image, then
    ``(x / 255 - mean) / std``, ``F.pad`` bottom/right with zeros, cast, stack, channels_last.
    Same arguments, validation and result as :func:`prepare_images`; needs no extension and
    runs on any device."""
    plan = _plan(images, size, mode, dtype, mean, std, align, device)
    mean_t = torch.tensor(plan.mean, dtype=torch.float32, device=plan.device).view(1, 3, 1, 1)
    std_t = torch.tensor(plan.std, dtype=torch.float32, device=plan.device).view(1, 3, 1, 1)
    images = list(plan.batch.unbind(0)) if plan.batch is not None else plan.images
    out = []
    for im, (h, w), (rh, rw) in zip(images, plan.sizes, plan.resized):
        x = im.to(plan.device).permute(2, 0, 1)[None].float()
        x = x.expand(1, 3, h, w)  # grayscale (C = 1) to RGB; a no-op for C = 3
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=False)
        x = (x / 255 - mean_t) / std_t
        x = F.pad(x, (0, plan.out_w - rw, 0, plan.out_h - rh))
        out.append(x[0].to(plan.dtype))
    batch = torch.stack(out).contiguous(memory_format=torch.channels_last)
    return batch, _valid_hw(plan)
