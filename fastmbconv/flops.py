"""FLOP and parameter counting with ``torch.utils.flop_counter`` (no hand counting)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, resolution: int | tuple[int, int], batch: int = 1) -> int:
    """FLOPs (2 x multiply-accumulates, as ``torch.utils.flop_counter`` counts them) of one
    forward pass at ``resolution``. Counted on the meta device, so nothing is computed and
    the model is left where it is. BN, activations and pooling are not counted (they are
    memory traffic, not FLOPs), matching how EfficientNet's 0.39 GMACs are quoted. Output sizes
    are ceil(n / stride) under both paddings, so tf_ models count the same as the others."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    # Imported here: torch's flop_counter imports triton, which must not happen at
    # `import fastmbconv` (TRITON_INTERPRET has to be set before triton's first import).
    from torch.utils.flop_counter import FlopCounterMode

    meta = _to_meta(model)
    x = torch.empty(batch, getattr(model, "in_chans", 3), h, w, device="meta")
    counter = FlopCounterMode(display=False)
    from .backend import use_backend

    with counter, torch.no_grad(), use_backend("reference"):
        meta(x)
    return int(counter.get_total_flops())


def _to_meta(model: nn.Module) -> nn.Module:
    import copy

    if next(model.parameters()).device.type == "meta":
        return model.eval()
    meta = copy.deepcopy(model).to("meta")
    return meta.eval()


def model_table(builders: dict[str, Callable[..., nn.Module]] | None = None) -> list[dict]:
    """Params, native resolution, GMACs and GFLOPs for each model (B0-B7 by default)."""
    if builders is None:
        from .builders import MODEL_BUILDERS as builders
    rows = []
    for name, build in builders.items():
        with torch.device("meta"):
            model = build()
        res = getattr(model, "default_resolution", 224)
        flops = count_flops(model, res)
        rows.append(
            {"model": name, "resolution": res, "params": count_params(model),
             "gmacs": flops / 2e9, "gflops": flops / 1e9}
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | resolution | params | GMACs | GFLOPs |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['resolution']} | {r['params']:,} | {r['gmacs']:.3f} | {r['gflops']:.3f} |"
        )
    return "\n".join(lines)
