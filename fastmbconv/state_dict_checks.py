"""Checks of a state dict from outside (a file, a user's dict) before it reaches a model.

``load_state_dict`` casts what it is given: integer or complex weights, NaN, negative BN
variances all load, and the model then computes NaN or zeros. A view that claims a large shape
on one stored element (``expand``) would make a model built from the dict's shapes allocate
without bound. Both loading paths (:func:`fastmbconv.weights.load_weights` and
:func:`fastmbconv.convert.from_state_dict`) refuse these here, naming the key.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .model import StateDictMismatchError


def check_state_dict(state_dict: Mapping, source: str = "state dict") -> None:
    """Raise :class:`~fastmbconv.StateDictMismatchError` unless every key is a string and every
    value a dense tensor whose elements are stored, of finite real floating-point values (BN
    variances not negative; ``num_batches_tracked`` a finite count)."""
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise StateDictMismatchError(f"{source}: key {key!r} is a {type(key).__name__}, not a parameter name")
        if not isinstance(value, torch.Tensor):
            raise StateDictMismatchError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        kind = "meta" if value.is_meta else "quantized" if value.is_quantized else str(value.layout)
        if kind != "torch.strided":
            raise StateDictMismatchError(f"{source}: {key!r} is a {kind} tensor, not dense values")
        stored = value.untyped_storage().nbytes() // value.element_size() - value.storage_offset()
        if value.numel() > stored:
            raise StateDictMismatchError(f"{source}: {key!r} claims shape {tuple(value.shape)} on {stored} stored "
                                         "elements (an expanded view); a state dict holds dense tensors")
        if value.is_complex() or value.dtype == torch.bool:
            raise StateDictMismatchError(f"{source}: {key!r} is {value.dtype}; weights are real numbers")
        real = value if value.element_size() > 1 else value.float()  # fp8 has neither isfinite nor comparisons
        if key.endswith("num_batches_tracked"):  # a count, stored as int64 (or cast with the weights)
            if value.is_floating_point() and not torch.isfinite(real).all():
                raise StateDictMismatchError(f"{source}: {key!r} is not a finite count")
            continue
        if not value.is_floating_point():
            raise StateDictMismatchError(f"{source}: {key!r} is {value.dtype}; weights must be floating point")
        finite = torch.isfinite(real)
        if not finite.all():
            raise StateDictMismatchError(f"{source}: {key!r} holds {int((~finite).sum())} NaN or infinite values")
        if key.endswith("running_var") and (real < 0).any():
            raise StateDictMismatchError(f"{source}: {key!r} holds negative variances")
