"""Ragged batches on the reference path: images of different sizes padded into one batch, each
computed exactly as if it had been run alone at its own size.

An image occupies the top-left (h, w) corner of its slot (its sizes are a
:class:`fastmbconv.geometry.RaggedSizes`). Through the network:

- every spatial op (stem conv, depthwise convs) treats positions outside an image's valid
  extent as zero padding, and uses that image's *own* padding offsets (TF "SAME" pads
  stride-2 layers asymmetrically, and the offset depends on the image's size, not the batch's);
- after a stride-``s`` layer an image's valid extent is ``ceil(h / s)`` in both conventions;
- SE and head pools average over valid positions only;
- pointwise ops (1x1 convs, BN, activations, residuals) may compute on the padded area, since
  nothing from there reaches a valid output (the next spatial op or pool masks it out).

The fused path does the same inside its kernels, from the same sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import RaggedSizes, device_view, out_size


def mask_invalid(x: torch.Tensor, sizes: RaggedSizes) -> torch.Tensor:
    """Zero everything outside each image's valid region (``where``, so NaN padding is dropped too)."""
    return torch.where(sizes.mask(x.shape[-2], x.shape[-1], x.device), x, x.new_zeros(()))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, groups: int,
           pad_mode: str, sizes: RaggedSizes) -> torch.Tensor:
    """A (grouped) kxk conv of a ragged batch: per-image padding offsets, invalid input treated
    as zero, output outside each image's valid extent zeroed. Images that share offsets are
    convolved together, so this costs at most four conv calls (two offsets per axis)."""
    k, s = weight.shape[-1], stride
    H, W = x.shape[-2:]
    H_out, W_out = out_size(H, s), out_size(W, s)
    x = mask_invalid(x, sizes)
    offsets = sizes.padding(k, s, pad_mode)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = None
    for top, left in sorted(set(offsets)):
        idx = device_view(tuple(i for i, o in enumerate(offsets) if o == (top, left)), torch.int64, x.device)
        bottom = max(0, (H_out - 1) * s + k - top - H)
        right = max(0, (W_out - 1) * s + k - left - W)
        xi = F.pad(x.index_select(0, idx), (left, right, top, bottom))
        yi = F.conv2d(xi, weight, bias, stride=s, groups=groups)
        if out is None:  # in the conv's dtype, which autocast lowers from x's
            out = yi.new_empty((x.shape[0], weight.shape[0], H_out, W_out)).contiguous(
                memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out.index_copy_(0, idx, yi[..., :H_out, :W_out])
    if out is None:  # an empty batch
        out = F.conv2d(x, weight, bias, stride=s, padding=k // 2, groups=groups)
    return mask_invalid(out, sizes.after(k, s))
