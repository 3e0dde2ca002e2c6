"""The depthwise weights' layouts: the fold, the kernels and the cuDNN route each read one.

- (C, 1, k, k): the module's, and cuDNN's;
- (k*k, C) fp32, taps-major (:func:`taps_major`): the FMA kernel's;
- (k*k, C, 16) fp16/bf16 diagonal blocks (:func:`taps_diag`): the tensor-core kernel's.
"""
from __future__ import annotations

import torch


def taps_major(weight: torch.Tensor) -> torch.Tensor:
    """Depthwise weights (C, 1, k, k) or (C, k, k) in the kernel's (k*k, C) layout, fp32."""
    C, k = weight.shape[0], weight.shape[-1]
    return weight.reshape(C, k * k).t().float().contiguous()


def taps_diag(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Depthwise weights (C, 1, k, k), (C, k, k) or (k*k, C) as the tensor-core layout (k*k, C, 16)
    in ``dtype`` (fp16 or bf16, the activations'): row c of tap t holds the weight at column
    c % 16 and zeros elsewhere, so each 16-channel group of a tap is one diagonal (16, 16) block."""
    taps = weight if weight.ndim == 2 else taps_major(weight)
    kk, C = taps.shape
    diag = torch.zeros((kk, C, 16), dtype=dtype, device=weight.device)
    diag.scatter_(2, (torch.arange(C, device=weight.device) % 16).expand(kk, C)[..., None], taps.to(dtype)[..., None])
    return diag


def taps_of(weight: torch.Tensor) -> torch.Tensor:
    """(k*k, C) taps of any accepted layout, in the weight's dtype."""
    if weight.ndim == 3 and weight.shape[-1] == 16:
        return weight.gather(2, (torch.arange(weight.shape[1], device=weight.device) % 16)
                             .expand(weight.shape[:2])[..., None])[..., 0]
    return weight if weight.ndim == 2 else weight.reshape(weight.shape[0], -1).t()
