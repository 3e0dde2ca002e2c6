"""What fastmbconv.prepare computes, before any pixel is touched: the inputs checked and turned
into tensors (numpy arrays included, in place), and each image's size, resized size and kept
window for the chosen mode, with the timm / torchvision rounding rules. Pure Python."""
from __future__ import annotations

import math
import numbers
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch

if TYPE_CHECKING:
    import numpy

MODES = ("resize", "letterbox", "pad", "center_crop")
INTERPOLATIONS = ("bilinear", "bicubic")
DEFAULT_CROP_PCT = 0.875  # timm's
ALIGNS = (8, 16, 32)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1
_FILTERS = {("bilinear", False): 0, ("bilinear", True): 1, ("bicubic", True): 2}  # prepare_math.h

Images = Union[torch.Tensor, Sequence[torch.Tensor], "numpy.ndarray", Sequence["numpy.ndarray"]]
Size = Union[int, Tuple[int, int]]


def letterbox_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """(h, w) after scaling the longer side to ``size`` and keeping the aspect ratio: the shorter
    side is round(short * size / long), halves rounded up, and at least 1."""
    long = max(height, width)
    h = max(1, (2 * height * size + long) // (2 * long))
    w = max(1, (2 * width * size + long) // (2 * long))
    return h, w


def center_crop_size(height: int, width: int, size: Size, crop_pct: float = DEFAULT_CROP_PCT):
    """``((sh, sw), (top, left))``: the size an image is resized to and the corner of the centred
    (H, W) window, exactly as timm's eval transform (crop_mode "center") computes them.

    Square targets (torchvision ``Resize(s)``): s = floor(H / crop_pct); the shorter side
    becomes s, the longer int(s * long / short). Non-square (timm ``ResizeKeepRatio``): with
    (ph, pw) = floor((H, W) / crop_pct) and r = min(height / ph, width / pw), (sh, sw) =
    round((height, width) / r), Python's round. Then torchvision ``CenterCrop``:
    top = round((sh - H) / 2), left = round((sw - W) / 2), halves to even."""
    th, tw = (size, size) if isinstance(size, numbers.Integral) else size
    if th == tw:
        s = math.floor(th / crop_pct)
        sh, sw = (int(s * height / width), s) if width <= height else (s, int(s * width / height))
    else:
        ratio = min(height / math.floor(th / crop_pct), width / math.floor(tw / crop_pct))
        sh, sw = round(height / ratio), round(width / ratio)
    return (sh, sw), (int(round((sh - th) / 2.0)), int(round((sw - tw) / 2.0)))


def pillow_vertical_first(height: int, width: int, sh: int, sw: int) -> bool:
    """Whether Pillow (>= 13) resizes (height, width) to (sh, sw) with the vertical pass first:
    when the height shrinks by more than twice as many pixels as the width does. Earlier Pillow
    always runs the horizontal pass first; the two orders round differently, by one 8-bit step
    at most."""
    return height - sh > 0 and height - sh > (width - sw) * 2


@dataclass
class Plan:
    images: List[torch.Tensor]  # the HWC images of a list (only the first of a 4-D batch)
    batch: Optional[torch.Tensor]  # the NHWC input, when one was given
    channels: List[int]  # of each image
    sizes: List[Tuple[int, int]]  # (h, w) of each image
    scaled: List[Tuple[int, int]]  # the size each image is resized to
    corners: List[Tuple[int, int]]  # (top, left) of the window kept of the resized image
    resized: List[Tuple[int, int]]  # (rh, rw): the window's size, the image's valid extent
    out_h: int
    out_w: int
    filter: int  # 0: F.interpolate bilinear; 1, 2: Pillow bilinear, bicubic
    interpolation: str
    dtype: torch.dtype
    mean: List[float]
    std: List[float]
    device: torch.device  # where the output lives


def per_channel(name: str, values) -> List[float]:
    """Three floats (R, G, B) from one number or a sequence of 1 or 3."""
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


def _as_tensor(x):
    """torch tensors as they are; numpy arrays as tensors sharing their memory."""
    np = sys.modules.get("numpy")  # an ndarray implies numpy is imported
    if isinstance(x, torch.Tensor) or np is None or not isinstance(x, np.ndarray):
        return x
    if any(s < 0 for s in x.strides):
        x = np.ascontiguousarray(x)
    with warnings.catch_warnings():  # read-only arrays (np.asarray(PIL image)): never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(x)


def _chw_error(shape, where: str) -> ValueError:
    batch = len(shape) == 4
    perm, n = ("0, 2, 3, 1", "N") if batch else ("1, 2, 0", "")
    return ValueError(f"{where} has shape {tuple(shape)}: looks like {n}CHW; pass {n}HWC (channels "
                      f"last, C = 1 or 3), e.g. x.permute({perm}) (numpy: x.transpose({perm}))")


def _inputs(images) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    images = _as_tensor(images)
    if isinstance(images, torch.Tensor):
        if images.dim() == 4:
            if images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
                raise _chw_error(images.shape, "images")
            if images.shape[0] == 0:
                raise ValueError("images is an empty batch (N = 0)")
            return [images[0]], images  # every image of a batch shares shape, dtype and device
        if images.dim() not in (2, 3):
            raise ValueError("images must be a uint8 NHWC batch (N, H, W, C), one HWC or HW image, or "
                             f"a list of them; got a tensor of shape {tuple(images.shape)}")
        return [images if images.dim() == 3 else images[..., None]], None
    if not isinstance(images, (list, tuple)):
        raise TypeError("images must be a uint8 NHWC tensor or array, one HWC image, or a list of "
                        f"HWC images, got {type(images).__name__}")
    if not images:
        raise ValueError("images is an empty list")
    items = []
    for i, im in enumerate(images):
        im = _as_tensor(im)
        if not isinstance(im, torch.Tensor):
            raise TypeError(f"images[{i}] is a {type(im).__name__}, not a tensor or a numpy array")
        items.append(im[..., None] if im.dim() == 2 else im)
    return items, None


def checked_size(size, mode: str) -> Tuple[int, int]:
    hw = size if isinstance(size, (tuple, list)) and len(size) == 2 and mode != "letterbox" else (size, size)
    for s in hw:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            kind = "an int" if mode == "letterbox" else "an int or an (H, W) pair of ints"
            raise TypeError(f"size must be {kind} for mode={mode!r}, got {size!r}")
        if s <= 0:
            raise ValueError(f"size must be positive, got {size!r}")
        if s > _INT32_MAX:
            raise ValueError(f"size {s} overflows 32-bit image sizes (valid_hw is int32); max {_INT32_MAX}")
    return int(hw[0]), int(hw[1])


def checked_crop_pct(crop_pct) -> float:
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, numbers.Real) or not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    return float(crop_pct)


def make_plan(images, size, mode, dtype, mean, std, align, device, interpolation, antialias,
              crop_pct) -> Plan:
    """Checks prepare_images' arguments (see there) and works out every size; reads no pixel."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise TypeError(f"dtype must be one of torch.float32, torch.float16, torch.bfloat16, got {dtype}")
    if isinstance(align, bool) or align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if antialias is None:
        antialias = mode == "center_crop"
    if not isinstance(antialias, bool):
        raise TypeError(f"antialias must be True, False or None, got {antialias!r}")
    if interpolation == "bicubic" and not antialias and mode != "pad":
        raise ValueError("interpolation='bicubic' needs antialias=True (Pillow's bicubic, a = -0.5); "
                         "F.interpolate's non-antialiased bicubic (a = -0.75) is not implemented")
    if mode != "center_crop" and crop_pct is not None:
        raise ValueError(f"crop_pct applies to mode='center_crop' only, not {mode!r}")
    crop_pct = checked_crop_pct(DEFAULT_CROP_PCT if crop_pct is None else crop_pct)
    target = checked_size(size, mode) if mode != "pad" else None
    mean_l, std_l = per_channel("mean", mean), per_channel("std", std)
    if any(s == 0.0 for s in std_l):
        raise ValueError(f"std must be non-zero, got {std_l}")

    items, batch = _inputs(images)
    first = items[0]
    for i, im in enumerate(items):
        if im.dim() != 3:
            raise ValueError(f"images[{i}] has {im.dim()} dims (shape {tuple(im.shape)}); every image "
                             "must be HWC (3 dims) or HW (2 dims, grayscale)")
        if im.dtype != torch.uint8:
            raise TypeError(f"images[{i}] must be uint8, got {im.dtype}")
        if im.shape[0] in (1, 3) and im.shape[2] not in (1, 3):
            raise _chw_error(im.shape, f"images[{i}] ({im.shape[2]} channels last)")
        if im.shape[2] not in (1, 3):
            raise ValueError(f"images[{i}] has {im.shape[2]} channels (shape {tuple(im.shape)}); need 3 "
                             "(RGB) or 1 (grayscale, expanded to RGB), channels last (HWC)")
        if im.device != first.device:
            raise ValueError(f"images[{i}] is on {im.device} but images[0] is on {first.device}; "
                             "all images must be on one device")
        if im.shape[0] == 0 or im.shape[1] == 0:
            raise ValueError(f"images[{i}] is empty (shape {tuple(im.shape)})")
        if im.shape[0] > _INT32_MAX or im.shape[1] > _INT32_MAX:
            raise ValueError(f"images[{i}] of shape {tuple(im.shape)} overflows 32-bit image sizes")

    if batch is not None:
        n = int(batch.shape[0])
        sizes, channels = [(int(batch.shape[1]), int(batch.shape[2]))] * n, [int(batch.shape[3])] * n
    else:
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in items]
        channels = [int(im.shape[2]) for im in items]
    corners = [(0, 0)] * len(sizes)
    if mode == "resize":
        scaled = [target] * len(sizes)
        out_h, out_w = target
    elif mode == "letterbox":
        scaled = [letterbox_size(h, w, target[0]) for h, w in sizes]
        out_h, out_w = target
    elif mode == "center_crop":
        scaled, corners = zip(*(center_crop_size(h, w, target, crop_pct) for h, w in sizes))
        if max(max(s) for s in scaled) > _INT32_MAX:
            raise ValueError(f"resizing to {target} / crop_pct {crop_pct} overflows 32-bit image sizes")
        out_h, out_w = target
    else:
        scaled = list(sizes)
        out_h = -(-max(h for h, _ in sizes) // align) * align
        out_w = -(-max(w for _, w in sizes) // align) * align
        if out_h > _INT32_MAX or out_w > _INT32_MAX:
            raise ValueError(f"padded size ({out_h}, {out_w}) overflows 32-bit image sizes")
    resized = [target] * len(sizes) if mode == "center_crop" else list(scaled)
    if len(sizes) * 3 * out_h * out_w >= 2**63:
        raise ValueError(f"output of {len(sizes)} x 3 x {out_h} x {out_w} elements overflows int64 indexing")
    dev = torch.device(device) if device is not None else first.device
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())  # CUDA images then match it: no packing copy
    return Plan(items, batch, channels, sizes, list(scaled), list(corners), resized, out_h, out_w,
                _FILTERS[(interpolation, antialias)] if mode != "pad" else 0, interpolation, dtype,
                mean_l, std_l, dev)
