"""The expand + depthwise plan table: each block's modelled time with its expand and depthwise
convs fused (``expand_dwconv``) and separate, from two kernel reports of the same forward (see
:mod:`fastmbconv.fused.layer_plan`, which reads the table).

A block's time both ways is the sum of its launches' modelled times (its project conv and SE
launches are the same both ways, so the difference is the expand and depthwise part). A way
whose launches spill keeps its time but also its ``spill_bytes``, and is not chosen while the
other does not spill; a way with a launch that cannot run (more shared memory than an SM has)
is listed under ``fails``, without a time, and never chosen. Entries are keyed by layer
geometry and dtype, and their modelled times by the Triton release that compiled the kernels
(``"modelled": {"3.9": {...}}``); rewriting the table keeps other models' entries, other
releases' times and any measured times a GPU run added.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .._environ import environment


def layer_times(report: dict) -> dict:
    """Modelled µs per layer name, summed over the layer's launches; None for a layer with a
    launch that cannot run (its kernel does not fit an SM, or did not compile)."""
    times: dict = defaultdict(float)
    for r in report["launches"]:
        if r.get("layer"):
            fails = r.get("error") is not None or times[r["layer"]] is None
            times[r["layer"]] = None if fails else times[r["layer"]] + (r["modelled_us"] or 0.0)
    return dict(times)


def layer_spills(report: dict) -> dict:
    """The largest spill (bytes) of each layer's launches."""
    spills: dict = defaultdict(int)
    for r in report["launches"]:
        if r.get("layer"):
            spills[r["layer"]] = max(spills[r["layer"]], r.get("spill_bytes") or 0)
    return dict(spills)


def build_plan_table(model: str, batch: int, dtype: str, resolution: Optional[int] = None, **report_kwargs) -> dict:
    """(entries by layer key, the two reports' totals): both ways of every block of ``model``."""
    import fastmbconv.fused.layer_plan as lp
    from fastmbconv.shapes import walk

    from .build import build_report
    from .record import DTYPES, build_model

    reports = {}
    for choice in lp.CHOICES:
        with environment([(lp.ENV_VAR, choice)]):
            reports[choice] = build_report(model, batch, dtype, resolution, **report_kwargs)
    times = {c: layer_times(r) for c, r in reports.items()}
    spills = {c: layer_spills(r) for c, r in reports.items()}
    name, net = build_model(model, dtype)
    res = reports["fused"]["resolution"]
    release = lp.release_of(reports["fused"]["triton_version"])
    source = f"{name} batch {batch} {dtype} {res[0]}px"
    entries = {}
    for layer in walk(net, res[0], res[1]):
        if layer.kind != "block" or not layer.has_expand:
            continue
        key = lp.layer_key(layer, DTYPES[dtype])
        if key in entries:  # the same geometry again (repeated blocks of a stage): same times
            entries[key]["layers"].append(f"{name}.{layer.name}")
            continue
        modelled = {c: times[c].get(layer.name, 0.0) for c in lp.CHOICES}
        fails = [c for c in lp.CHOICES if modelled[c] is None]
        modelled = {c: None if t is None else round(t, 2) for c, t in modelled.items()}
        spilled = {c: spills[c].get(layer.name, 0) for c in lp.CHOICES}
        record = {"modelled_us": modelled, **({"spill_bytes": spilled} if any(spilled.values()) else {}),
                  **({"fails": fails} if fails else {})}
        record["choice"] = lp.record_choice(record)
        entries[key] = {"modelled": {release: {**record, "source": source}}, "layers": [f"{name}.{layer.name}"]}
    totals = {c: {"modelled_ms": r["totals"]["modelled_ms"], "hbm_bytes": r["totals"]["hbm_bytes"],
                  "max_spill_bytes_chosen": r["totals"]["max_spill_bytes_chosen"]} for c, r in reports.items()}
    return {"entries": entries, "totals": {f"{source} triton {release}": totals}}


def merge_into(path: Path, table: dict) -> dict:
    """Write ``table`` into the file at ``path``: its entries' modelled times replace those of
    the same key and Triton release (other releases', ``measured_us`` and layer names of other
    models sharing the key are kept)."""
    import fastmbconv.fused.layer_plan as lp

    try:
        old = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        old = {}
    entries = dict(old.get("entries") or {})
    for key, entry in table["entries"].items():
        prev = entries.get(key) or {}
        releases = {**(prev.get("modelled") or {}), **entry["modelled"]}
        merged = {"modelled": {r: releases[r] for r in sorted(releases, key=lp.release_order)}}
        for kept in ("measured_us", "measured_source"):  # GPU measurements outlive a re-model
            if prev.get(kept):
                merged[kept] = prev[kept]
        merged["layers"] = sorted(set(prev.get("layers", [])) | set(entry["layers"]))
        entries[key] = merged
    out = {
        "about": "Per layer geometry: modelled µs of the expand + depthwise convs fused and separate "
                 "(static sm_90 model, not measured; see fastmbconv.kernel_report), per Triton release "
                 "that compiled them (a machine uses its own release's, else the newest); spill_bytes, "
                 "where present, rules a spilling way out. measured_us, where present, came from a GPU "
                 "run and decides. Written by python -m fastmbconv.kernel_report --plan-table.",
        "entries": dict(sorted(entries.items())),
        "totals": {**(old.get("totals") or {}), **table["totals"]},
    }
    Path(path).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
