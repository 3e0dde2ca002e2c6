"""Ragged batches: images of different sizes padded into one batch, each computed exactly as
if it had been run alone at its own size.

An image occupies the top-left (h, w) corner of its slot. Through the network:

- every spatial op (stem conv, depthwise convs) treats positions outside an image's valid
  extent as zero padding, and uses that image's *own* padding offsets (TF "SAME" pads
  stride-2 layers asymmetrically, and the offset depends on the image's size, not the batch's);
- after a stride-``s`` layer an image's valid extent is ``ceil(h / s)`` in both conventions;
- SE and head pools average over valid positions only;
- pointwise ops (1x1 convs, BN, activations, residuals) may compute on the padded area, since
  nothing from there reaches a valid output (the next spatial op or pool masks it out).

The sizes are host metadata: they decide padding offsets and launch arguments, so they are kept
as an int64 tensor on the CPU for the whole forward, and only the masks built from them go to
the device (non-blocking copies). Reading them from a CUDA tensor would cost a host sync per
layer; pass ``valid_sizes`` as a list or CPU tensor and a ragged forward makes none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import conv_padding


def check_valid_sizes(valid_sizes, x: torch.Tensor) -> torch.Tensor:
    """Validate per-image (height, width) against the batch ``x``; return them as an int64
    (N, 2) CPU tensor. A CUDA ``valid_sizes`` costs one host sync here; a list or CPU tensor none."""
    if not isinstance(valid_sizes, torch.Tensor):
        valid_sizes = torch.as_tensor(valid_sizes)
    if valid_sizes.is_floating_point() or valid_sizes.is_complex() or valid_sizes.dtype == torch.bool:
        raise TypeError(f"valid_sizes must be an integer tensor, got {valid_sizes.dtype}")
    if valid_sizes.ndim != 2 or valid_sizes.shape[1] != 2:
        raise ValueError(f"valid_sizes must have shape (N, 2) of (height, width), got {tuple(valid_sizes.shape)}")
    if valid_sizes.shape[0] != x.shape[0]:
        raise ValueError(f"valid_sizes has {valid_sizes.shape[0]} rows but the batch has {x.shape[0]} images")
    sizes = valid_sizes.to(device="cpu", dtype=torch.int64)
    if sizes.numel() and (sizes < 1).any():
        bad = sizes[(sizes < 1).any(1)].tolist()
        raise ValueError(f"valid_sizes must be positive; got {bad}")
    H, W = x.shape[-2:]
    too_big = (sizes[:, 0] > H) | (sizes[:, 1] > W)
    if too_big.any():
        raise ValueError(
            f"valid_sizes {sizes[too_big].tolist()} exceed the batch's spatial size ({H}, {W})"
        )
    return sizes


def _on(valid_hw: torch.Tensor, device: torch.device) -> torch.Tensor:
    # non_blocking: an H2D copy of host sizes must not wait for the queued kernels
    return valid_hw.to(device, non_blocking=True)


def out_valid(valid_hw: torch.Tensor, stride: int) -> torch.Tensor:
    """Valid extent after a stride-``stride`` layer (both padding conventions): ceil(h / s)."""
    return torch.div(valid_hw + stride - 1, stride, rounding_mode="floor")


def valid_mask(valid_hw: torch.Tensor, height: int, width: int, device=None) -> torch.Tensor:
    """Boolean (N, 1, H, W) mask of each image's valid region, on ``device`` (default:
    ``valid_hw``'s)."""
    device = valid_hw.device if device is None else torch.device(device)
    valid_hw = _on(valid_hw, device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    m = (rows[None, :, None] < valid_hw[:, 0, None, None]) & (cols[None, None, :] < valid_hw[:, 1, None, None])
    return m[:, None]


def mask_invalid(x: torch.Tensor, valid_hw: torch.Tensor) -> torch.Tensor:
    """Zero everything outside each image's valid region (``where``, so NaN padding is dropped too)."""
    return torch.where(valid_mask(valid_hw, x.shape[-2], x.shape[-1], x.device), x, x.new_zeros(()))


def per_image_padding(valid_hw: torch.Tensor, kernel: int, stride: int, pad_mode: str) -> list[tuple[int, int]]:
    """(top, left) padding of every image at its own size (reads the sizes on the host: pass
    them as a CPU tensor to avoid a sync)."""
    out = []
    for h, w in valid_hw.tolist():
        top, _, left, _ = conv_padding(h, w, kernel, stride, pad_mode)
        out.append((top, left))
    return out


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    groups: int,
    pad_mode: str,
    valid_hw: torch.Tensor,
) -> torch.Tensor:
    """A (grouped) kxk conv of a ragged batch: per-image padding offsets, invalid input treated
    as zero, output outside each image's valid extent zeroed. Images that share offsets are
    convolved together, so this costs at most four conv calls (two offsets per axis)."""
    k, s = weight.shape[-1], stride
    H, W = x.shape[-2:]
    H_out, W_out = -(-H // s), -(-W // s)
    x = mask_invalid(x, valid_hw)
    offsets = per_image_padding(valid_hw, k, s, pad_mode)
    out = x.new_empty((x.shape[0], weight.shape[0], H_out, W_out)).contiguous(
        memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous() else torch.contiguous_format
    )
    for top, left in sorted(set(offsets)):
        idx = _on(torch.tensor([i for i, o in enumerate(offsets) if o == (top, left)]), x.device)
        bottom = max(0, (H_out - 1) * s + k - top - H)
        right = max(0, (W_out - 1) * s + k - left - W)
        xi = F.pad(x.index_select(0, idx), (left, right, top, bottom))
        yi = F.conv2d(xi, weight, bias, stride=s, groups=groups)
        out.index_copy_(0, idx, yi[..., :H_out, :W_out])
    return mask_invalid(out, out_valid(valid_hw, s))


def masked_mean(x: torch.Tensor, valid_hw: torch.Tensor) -> torch.Tensor:
    """Per-image spatial mean over the valid region: (N, C, 1, 1)."""
    summed = mask_invalid(x, valid_hw).sum((2, 3), keepdim=True)
    count = _on(valid_hw[:, 0] * valid_hw[:, 1], x.device).to(x.dtype).view(-1, 1, 1, 1)
    return summed / count
