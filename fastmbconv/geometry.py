"""Convolution geometry, the bottom of the package: padding in both conventions, output sizes,
and the per-image sizes of a ragged batch.

Both padding conventions give an output of ``ceil(size / stride)`` for the odd kernels
EfficientNet uses, so one rule (:func:`out_size`) serves the model, the kernels' launch
arguments, the roofline and ragged batches.
"""
from __future__ import annotations

import numbers
import threading
from collections import OrderedDict
from typing import Literal, Sequence

import torch

from . import streams

PadMode = Literal["symmetric", "same"]
PAD_MODES: tuple[str, ...] = ("symmetric", "same")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def out_size(size: int, stride: int) -> int:
    """Output extent of an odd-kernel conv with either padding convention: ceil(size / stride)."""
    return ceil_div(size, stride)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding for one spatial dim: (before, after).

    ``pad_total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``,
    with the odd pixel going after (bottom/right). It depends on the actual input size, so it is
    computed on every call rather than from a fixed image size.
    """
    total = max((ceil_div(size, stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def check_pad_mode(pad_mode: str) -> str:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"unknown pad_mode {pad_mode!r}; expected 'symmetric' or 'same'")
    return pad_mode


def conv_padding(height: int, width: int, kernel: int, stride: int, pad_mode: PadMode) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding for a ``kernel``x``kernel`` conv in either convention:
    ``symmetric`` pads ``kernel // 2`` everywhere (timm ``efficientnet_*``, torchvision), ``same``
    is TF "SAME" (timm ``tf_efficientnet_*``), asymmetric for stride 2."""
    if check_pad_mode(pad_mode) == "symmetric":
        p = kernel // 2
        return p, p, p, p
    top, bottom = same_padding(height, kernel, stride)
    left, right = same_padding(width, kernel, stride)
    return top, bottom, left, right


class RaggedSizes:
    """Per-image valid (height, width) of a ragged batch, held on the host as Python ints.

    An image occupies the top-left (h, w) corner of its slot. The sizes decide padding offsets
    and launch arguments, so they stay host values for the whole forward and their arithmetic
    is plain Python (under ``torch.export`` a torch op on them would be traced as data and
    could not choose offsets); the device tensors built from them (sizes, per-image padding,
    pixel counts) are non-blocking uploads, each made once per distinct set of values and
    shared by every forward (:func:`device_view`). Reading sizes from a CUDA tensor would cost
    a host sync per layer; :meth:`from_user` costs one at most, and none for a list or CPU tensor.
    """

    def __init__(self, sizes):
        rows = sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes
        self.host: tuple[tuple[int, int], ...] = tuple((int(h), int(w)) for h, w in rows)
        self._cache: dict = {}

    @property
    def sizes(self) -> torch.Tensor:
        """The sizes as an int64 (N, 2) CPU tensor."""
        return torch.tensor(self.host, dtype=torch.int64).reshape(-1, 2)

    @classmethod
    def from_user(cls, valid_sizes, batch_shape: Sequence[int]) -> "RaggedSizes":
        """Validate user-given ``valid_sizes`` (a list, CPU or CUDA tensor of (N, 2) integers; not
        a CUDA tensor inside a CUDA-graph capture, where its values cannot be read)
        against a batch of shape (N, C, H, W). Under ``torch.export`` give a list: the sizes are
        then constants of the exported program (they choose per-image padding on the host)."""
        if isinstance(valid_sizes, (list, tuple)):
            rows = [list(r) if isinstance(r, (list, tuple)) else [r] for r in valid_sizes]
            if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for r in rows for v in r):
                raise TypeError(f"valid_sizes must hold integers, got {valid_sizes!r}"[:200])
            widths = {len(r) for r in rows}
            shape = (len(rows), widths.pop()) if len(widths) == 1 else (0, 2) if not rows else (len(rows),)
        else:
            valid_sizes = torch.as_tensor(valid_sizes)
            if valid_sizes.is_floating_point() or valid_sizes.is_complex() or valid_sizes.dtype == torch.bool:
                raise TypeError(f"valid_sizes must be an integer tensor, got {valid_sizes.dtype}")
            if torch.compiler.is_exporting():
                raise ValueError(
                    "under torch.export, pass valid_sizes as a Python list of (height, width): the sizes "
                    "choose each image's padding on the host, so they are constants of the exported program")
            if valid_sizes.device.type != "cpu" and streams.capturing(valid_sizes.device):
                raise RuntimeError(
                    "inside a CUDA-graph capture, pass valid_sizes as a list or a CPU tensor (e.g. "
                    "valid.tolist() before capturing): reading a GPU tensor's values on the host "
                    "synchronises, which CUDA forbids during a capture")
            shape = tuple(valid_sizes.shape)
            rows = valid_sizes.tolist()
        if len(shape) != 2 or shape[1] != 2:
            raise ValueError(f"valid_sizes must have shape (N, 2) of (height, width), got {shape}")
        n, height, width = batch_shape[0], batch_shape[-2], batch_shape[-1]
        if shape[0] != n:
            raise ValueError(f"valid_sizes has {shape[0]} rows but the batch has {n} images")
        bad = [r for r in rows if min(r) < 1]
        if bad:
            raise ValueError(f"valid_sizes must be positive; got {bad}")
        too_big = [r for r in rows if r[0] > height or r[1] > width]
        if too_big:
            raise ValueError(f"valid_sizes {too_big} exceed the batch's spatial size ({height}, {width})")
        return cls(rows)

    def __len__(self) -> int:
        return len(self.host)

    def after(self, kernel: int, stride: int) -> "RaggedSizes":
        """The sizes after a ``kernel``x``kernel`` stride-``stride`` conv (either padding):
        ceil(h / s). Stride 1 keeps this object, and with it its cached device tensors."""
        if stride == 1:
            return self
        return RaggedSizes([(ceil_div(h, stride), ceil_div(w, stride)) for h, w in self.host])

    def padding(self, kernel: int, stride: int, pad_mode: PadMode) -> list[tuple[int, int]]:
        """(top, left) padding of every image at its own size."""
        key = ("padding", kernel, stride, pad_mode)
        if key not in self._cache:
            rows = []
            for h, w in self.host:
                top, _, left, _ = conv_padding(h, w, kernel, stride, pad_mode)
                rows.append((top, left))
            self._cache[key] = rows
        return self._cache[key]

    def on(self, device, what: str = "sizes", kernel: int = 0, stride: int = 1, pad_mode: PadMode = "same") -> torch.Tensor:
        """A device copy (see :func:`device_view`): ``"sizes"`` int32 (N, 2), ``"padding"`` int32
        (N, 2) (top, left) for the given conv, or ``"counts"`` float32 (N,) valid pixels per image."""
        if not self.host and what in ("sizes", "padding", "counts"):  # an empty tuple has no row shape
            shape, dtype = ((0,), torch.float32) if what == "counts" else ((0, 2), torch.int32)
            return torch.empty(shape, dtype=dtype, device=device)
        if what == "sizes":
            return device_view(self.host, torch.int32, device)
        if what == "padding":
            return device_view(tuple(self.padding(kernel, stride, pad_mode)), torch.int32, device)
        if what == "counts":
            return device_view(tuple(h * w for h, w in self.host), torch.float32, device)
        raise ValueError(f"unknown device view {what!r}")

    def mask(self, height: int, width: int, device) -> torch.Tensor:
        """Boolean (N, 1, H, W) mask of each image's valid region, on ``device``."""
        from .kernels._utils import valid_mask

        key = ("mask", height, width, str(torch.device(device)))
        if key not in self._cache:
            self._cache[key] = valid_mask(self.on(device), height, width)[:, None]
        return self._cache[key]

    def masked_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image spatial mean of ``x`` (N, C, H, W) over each image's valid region:
        (N, C, 1, 1) in x's dtype. Positions outside it (NaN padding included) count as nothing.
        Sums and counts are fp32, as ``Tensor.mean`` accumulates: in fp16 a large map's sum, or
        its pixel count (90000 at 300x300), would pass 65504."""
        valid = torch.where(self.mask(x.shape[-2], x.shape[-1], x.device), x, x.new_zeros(()))
        summed = valid.sum((2, 3), keepdim=True, dtype=torch.float32)
        return (summed / self.on(x.device, "counts").float().view(-1, 1, 1, 1)).to(x.dtype)


DEVICE_VIEWS_MAX = 1024  # distinct (values, dtype, device) uploads kept; each is a few hundred bytes
_device_views: "OrderedDict[tuple, tuple[torch.Tensor, streams.StreamShared]]" = OrderedDict()
_captured_views: set = set()  # keys read during a CUDA-graph capture: a graph replays their addresses
_views_lock = threading.Lock()


def device_view(values: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """``values`` (host ints, flat or rows) as a read-only ``dtype`` tensor on ``device``, shared by
    every forward with the same values: each ragged forward builds its :class:`RaggedSizes` anew,
    and a CUDA graph cannot capture a host-to-device copy, so the upload happens once, outside
    capture, and a captured forward reads the cached tensor. A tensor read during a capture is
    never evicted (its graph may replay it); others go least recently used first. A forward on
    another stream than the upload's waits for the upload once (:class:`.streams.StreamShared`)."""
    device = torch.device(device)
    if torch.compiler.is_compiling():  # traced as a constant of the graph; no shared state there
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (values, dtype, device)
    capturing = streams.capturing(device)
    with _views_lock:
        cached = _device_views.get(key)
        if cached is not None:
            _device_views.move_to_end(key)
            if capturing:
                _captured_views.add(key)
    if cached is not None:
        view, shared = cached
        shared.use()
        return view
    if capturing:
        raise RuntimeError(
            "a ragged batch's sizes must reach the GPU before CUDA-graph capture: run the forward "
            "once with the same valid_sizes (and input size) outside capture, then capture it")
    # non_blocking: uploading host sizes must not wait for the kernels already queued
    with torch.inference_mode(False):  # a normal tensor: a later forward under autograd may save it
        view = torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
    mine = (view, streams.StreamShared([view]))
    with _views_lock:
        # Another thread may have uploaded the same values meanwhile, and a capture may already
        # have read its tensor: the first stays, as replacing it could free what a graph replays.
        cached = _device_views.setdefault(key, mine)
        _device_views.move_to_end(key)
        evictable = (k for k in list(_device_views) if k not in _captured_views)
        for _, k in zip(range(len(_device_views) - DEVICE_VIEWS_MAX), evictable):
            del _device_views[k]
    view, shared = cached
    if cached is not mine:
        shared.use()
    return view
