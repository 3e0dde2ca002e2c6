"""Per-layer choices of the fused forward: for each MBConv block, its expand 1x1 and depthwise
kxk as one kernel (``expand_dwconv``: the expanded tensor never touches HBM) or as two
(``pointwise_gated`` then ``dwconv_bn_act``).

The choice comes, in order, from ``FASTMBCONV_EXPAND_DW`` (``fused``, ``separate`` or
``auto``, the default), then from the table the static kernel report writes
(``python -m fastmbconv.kernel_report --plan-table``, committed as ``expand_dw_plan.json``
beside this file: each layer geometry's modelled time both ways, and measured times where a
GPU run added them, which then decide), then from :func:`_rule` where the table has no entry.
A block whose fused program would not fit the GPU's shared memory is always separate (none on
an H100; some of B7's on GPUs of 99 KiB per program).

Modelled times are kept per Triton release (``"modelled"``, keyed by major.minor): the same
source compiles to different machine code (B0's fused blocks model within 2% of their 3.9
times with 3.6, the GPU image's release, and some blocks' choices differ), so a machine takes
the times its own Triton's code was modelled with, else those of the newest release the table
has.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..kernels._expand_dw_tiles import fits_one_program
from ..shapes import LayerShape

ENV_VAR = "FASTMBCONV_EXPAND_DW"
CHOICES = ("fused", "separate")
TABLE = Path(__file__).with_name("expand_dw_plan.json")


def layer_key(layer: LayerShape, dtype: torch.dtype) -> str:
    """The table's key: what decides the kernels' cost (not the layer's name, so models that
    share a geometry share an entry)."""
    return (f"{layer.in_channels}-{layer.mid_channels}-k{layer.kernel}-s{layer.stride}-"
            f"{layer.height}x{layer.width}-{str(dtype).replace('torch.', '')}")


@functools.lru_cache(maxsize=None)
def load_table(path: Path = TABLE) -> dict:
    """The table's entries by :func:`layer_key` (empty when the file is missing or unreadable:
    the rule then decides)."""
    try:
        entries = json.loads(Path(path).read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def release_of(version: str) -> str:
    """A Triton version's major.minor, the table's key ("3.6.0+git1a2b" -> "3.6")."""
    return ".".join(version.split(".")[:2])


def installed_triton_release() -> Optional[str]:
    """The installed Triton's major.minor ("3.6"), read from its package metadata without
    importing it; None without Triton."""
    try:
        return release_of(importlib.metadata.version("triton"))
    except importlib.metadata.PackageNotFoundError:
        return None


TRITON_RELEASE = installed_triton_release()  # read once: plans are made inside torch.compile traces


def release_order(release: str) -> tuple:
    """A sort key of major.minor strings (3.10 after 3.9)."""
    return tuple(int(p) if p.isdigit() else -1 for p in release.split("."))


def modelled_record(entry: dict, release: Optional[str] = None) -> tuple[Optional[str], dict]:
    """(release, record) of an entry's modelled times: ``release``'s (default: the installed
    Triton's) if the entry has them, else the newest release's; (None, {}) if it has none. A
    record holds ``modelled_us`` and, where a way spilled, ``spill_bytes``."""
    records = entry.get("modelled")
    if not isinstance(records, dict) or not records:
        return None, {}
    release = release or TRITON_RELEASE
    if release not in records:
        release = max(records, key=release_order)
    record = records[release]
    return (release, record) if isinstance(record, dict) else (None, {})


def table_choice(entry: dict, release: Optional[str] = None) -> Optional[str]:
    """The faster way by the entry's measured times if it has both, else by its modelled ones
    (:func:`modelled_record`) among the ways whose kernels do not spill (the report's
    ``spill_bytes``; all if both do)."""
    measured = entry.get("measured_us") or {}
    if all(isinstance(measured.get(c), (int, float)) for c in CHOICES):
        return min(CHOICES, key=lambda c: measured[c])
    return record_choice(modelled_record(entry, release)[1])


def record_choice(record: dict) -> Optional[str]:
    """The faster way of one release's modelled times, among the ways that do not spill (a way
    listed under ``fails`` cannot run and is never chosen)."""
    modelled = record.get("modelled_us") or {}
    ways = [c for c in CHOICES if c not in (record.get("fails") or ())]
    if ways and all(isinstance(modelled.get(c), (int, float)) for c in ways):
        spills = record.get("spill_bytes") or {}
        clean = [c for c in ways if not spills.get(c)] or ways
        return min(clean, key=lambda c: modelled[c])
    return None


def _rule(layer: LayerShape, dtype: torch.dtype) -> str:
    """Without a table entry, the table's finding (by the input map's side). fp16/bf16 (both
    ways run tensor-core taps; the fused kernel's halo recompute decides): fuse, except blocks
    of 1300 and more expanded channels on maps of 12 and up (B4-B7's widest, where the halo's
    expand costs more than the expanded tensor's bytes it saves). Against the 3.9 table's
    fp16/bf16 entries it picks the slower way for 7 of 106 geometries, costing 0.37 ms summed,
    none in B0. fp32 (FMA taps both ways; the expanded tensor's bytes decide): fuse 3x3 blocks
    on maps of 28 and up with at most 48 input channels (40 at stride 2: wider ones spill in
    B2-B7 or lose to the separate pair) and 5x5 stride-2 blocks on maps of 56 and up (3 of 95
    wrong, 0.99 ms, none in B0). Triton 3.8's fp32 fused kernel also spills at three geometries
    this fuses, whose neighbours do not spill; its table records keep those separate."""
    side = min(layer.height, layer.width)
    k, s = layer.kernel, layer.stride
    if dtype == torch.float32:
        narrow = layer.in_channels <= (48 if s == 1 else 40)
        fused = (k == 3 and side >= 28 and narrow) or (k == 5 and s == 2 and side >= 56)
    else:
        fused = layer.mid_channels < 1300 or side < 12
    return "fused" if fused else "separate"


@torch.compiler.assume_constant_result
def _env_choice() -> str:
    return os.environ.get(ENV_VAR, "auto").strip().lower()


def explain(layer: LayerShape, dtype: torch.dtype, device: torch.device = torch.device("meta")) -> tuple[str, str]:
    """(choice, why) on ``device`` (``meta``: an H100): ``why`` is ``"no expand"``,
    ``"shared memory"`` (a fused program would not fit the device), ``"env"``,
    ``"table (measured)"``, ``"table (modelled, triton 3.9)"`` (the release whose times
    decided) or ``"rule"``."""
    choice, why = _preference(layer, dtype)
    if choice == "fused" and not fits_one_program(layer.out_height, layer.out_width, layer.in_channels,
                                                  layer.mid_channels, layer.kernel, layer.stride, dtype, device):
        return "separate", "shared memory"
    return choice, why


def _preference(layer: LayerShape, dtype: torch.dtype) -> tuple[str, str]:
    """:func:`explain`'s (choice, why) before the device's shared memory has its say."""
    if not layer.has_expand:
        return "separate", "no expand"
    forced = _env_choice()
    if forced in CHOICES:
        return forced, "env"
    if forced != "auto":
        raise ValueError(f"{ENV_VAR} must be one of {CHOICES + ('auto',)}, got {forced!r}")
    entry = load_table().get(layer_key(layer, dtype))
    choice = table_choice(entry) if isinstance(entry, dict) else None
    if choice is not None:
        if all(isinstance((entry.get("measured_us") or {}).get(c), (int, float)) for c in CHOICES):
            return choice, "table (measured)"
        return choice, f"table (modelled, triton {modelled_record(entry)[0]})"
    return _rule(layer, dtype), "rule"


def expand_dw_choice(layer: LayerShape, dtype: torch.dtype, device: torch.device = torch.device("meta")) -> str:
    """``"fused"`` or ``"separate"`` for one MBConv block on ``device`` (blocks without
    expansion: separate)."""
    return _choice(layer.in_channels, layer.mid_channels, layer.kernel, layer.stride, layer.height, layer.width,
                   layer.has_expand, dtype, device)


@torch.compiler.assume_constant_result
def _choice(in_channels: int, mid_channels: int, kernel: int, stride: int, height: int, width: int,
            has_expand: bool, dtype: torch.dtype, device: torch.device) -> str:
    """:func:`explain`'s choice from the geometry it depends on: a constant under
    ``torch.compile``, which can neither read the table's file nor afford to trace the tile
    search."""
    layer = LayerShape("", "block", in_channels, 0, kernel, stride, height, width, mid_channels=mid_channels,
                       has_expand=has_expand)
    return explain(layer, dtype, device)[0]


def plan_rows(model, height: int, width: int, dtype: torch.dtype,
              device: torch.device = torch.device("meta")) -> list[dict]:
    """Every block's choice for one input size on ``device``, for reports and benchmarks."""
    from ..shapes import walk

    rows = []
    for layer in walk(model, height, width):
        if layer.kind == "block":
            choice, why = explain(layer, dtype, device)
            rows.append({"layer": layer.name, "key": layer_key(layer, dtype), "expand_dw": choice, "why": why})
    return rows
