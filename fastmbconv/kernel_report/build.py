"""Assemble the report: record, specialise, compile, count, model, total."""
from __future__ import annotations

import math
import re
import time
from typing import Optional

from ..kernels._utils import interpreting
from . import model as M
from .compiled import analyse
from .ops import hints_for
from .record import DTYPES, Recording, build_model, distinct_bytes, record_forward
from .sass import Sass
from .specialize import grid_of, unwrap, variants

#: the lead's targets (issue 11), checked in ``totals["targets"]``
TARGETS = {"dw_k3_instructions_per_output": 80, "dw_k5_instructions_per_output": 160, "max_spill_bytes": 0,
           "floor_ratio": 1.3, "launches": 70, "fill_launches": 0}
DEPTHWISE = re.compile(r"dw|depthwise", re.IGNORECASE)
# expand + depthwise in one op: its instructions per output include the expand conv over the
# halo, so it is reported beside the depthwise targets, not held to them
EXPAND_DW = re.compile(r"expand_?dw", re.IGNORECASE)


def _tensors(values) -> list:
    """Tensors among launch arguments: inside tuples too, and a tensor descriptor's base."""
    import torch

    out = []
    for v in (values.values() if isinstance(values, dict) else values):
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out += _tensors(v)
        elif isinstance(getattr(v, "base", None), torch.Tensor):
            out.append(v.base)
    return out


def spill_bytes(stack: int, sass: Sass) -> int:
    """Register spills: the stack frame, where the code loads or stores local memory. ptxas can
    reserve a frame that nothing touches (an unused 1-byte local depot in the PTX gets 8 B):
    that costs nothing and is not a spill."""
    return stack if stack and sass.static_classes.get("local", 0) else 0


def variant_row(rec, v, analysis: dict, hbm: int, weights_bytes_fn) -> dict:
    """Numbers of one launch under one config."""
    hints, status = hints_for(rec.op, {**rec.args, **rec.constexprs, **v.config})
    grid = grid_of(rec.grid, v)
    programs = math.prod(grid)
    row = {"config": dict(v.config), "grid": list(grid), "programs": programs, "num_warps": v.num_warps,
           "num_stages": v.num_stages, "hints": status, "ksize": hints.ksize if hints else None,
           "hbm_bytes": hbm, "weight_bytes": weights_bytes_fn(hints.weights if hints else ()),
           "outputs": hints.outputs if hints else None, "flags": [],
           "l2_scratch_bytes": hints.l2_scratch_bytes if hints else 0,
           "recompute_flops": hints.recompute_flops if hints else 0}
    if "error" in analysis:
        row.update(registers=None, spill_bytes=None, shared_bytes=None, instructions_per_output=None,
                   modelled_us=None, bound_by=None, error=analysis["error"])
        row["flags"].append("compile failed")
        return row
    sass = Sass.from_json(analysis["sass"])
    dyn = M.dynamic_per_warp(sass, hints.loops if hints else None)
    warps = programs * v.num_warps
    warp_insns = warps * dyn["instructions"]
    tflops = warps * dyn["tensor_flops"]
    mufu = warps * dyn["classes"].get("mufu", 0)
    resident, limit = M.resident_programs(v.num_warps, analysis["registers"], analysis["shared"])
    row.update(resident_programs_per_sm=resident, residency_limited_by=limit)
    if not resident:
        row.update(registers=analysis["registers"], spill_bytes=None, shared_bytes=analysis["shared"],
                   instructions_per_output=None, modelled_us=None, bound_by=None,
                   error=f"needs {analysis['shared']} B of shared memory, more than a program may have "
                         f"({M.SHARED_PER_PROGRAM_MAX} B): the launch would fail")
        row["flags"].append("does not fit an SM")
        return row
    t, bound = M.modelled_seconds(hbm, warp_insns, tflops, mufu, resident * v.num_warps)
    factor = M.latency_factor(resident * v.num_warps)
    row["residency_extra_us"] = (t - M.LAUNCH_OVERHEAD_S) * (1 - 1 / factor) * 1e6
    outputs = row["outputs"]
    per_out = (lambda n: n * warps * M.THREADS_PER_WARP / outputs) if outputs else (lambda n: None)
    row.update(
        registers=analysis["registers"], spill_bytes=spill_bytes(analysis["stack"], sass),
        stack_bytes=analysis["stack"], local_bytes=analysis["local"],
        shared_bytes=analysis["shared"], static_instructions=analysis["static_instructions"],
        instructions_per_warp=dyn["instructions"], warp_instructions=warp_insns, mufu_warp_instructions=mufu,
        instructions_per_program=dyn["instructions"] * v.num_warps,
        instructions_per_output=per_out(dyn["instructions"]),
        per_output_by_class={k: per_out(n) for k, n in sorted(dyn["classes"].items())} if outputs else None,
        static_by_class=dict(sorted(sass.static_classes.items())),
        loops=[{"unroll": lp.unroll, "passes_per_warp": m, "size": lp.size}
               for lp, m in zip(sass.loops, dyn["loop_multipliers"])],
        tensor_flops=tflops, useful_tensor_flops=hints.tensor_flops if hints else None,
        modelled_us=t * 1e6, bound_by=bound)
    row["flags"] += analysis.get("flags", []) + dyn["flags"]
    if analysis["stack"] and not row["spill_bytes"]:
        row["flags"].append(f"a {analysis['stack']} B stack frame that no instruction touches (no LDL/STL): "
                            "not a spill")
    if status != "ok":
        row["flags"].append(f"hints {status}: no instructions per output, loops counted once")
    if resident * v.num_warps < M.FULL_RATE_WARPS:
        row["flags"].append(f"{limit} allow {resident} program(s) of {v.num_warps} warps per SM: time x "
                            f"{factor:g} (the model's rates need "
                            f"{M.FULL_RATE_WARPS} resident warps)")
    if programs < M.SMS:
        row["flags"].append(f"grid of {programs} programs fills fewer than {M.SMS} SMs (the model assumes all)")
    return row


def launch_hbm_bytes(rec, config: dict) -> int:
    """Compulsory HBM traffic of one launch: every distinct tensor once, except what the op's
    hints say stays in L2 (a scratch) or is read more than once (a halo re-read)."""
    hints, _ = hints_for(rec.op, {**rec.args, **rec.constexprs, **config})
    skip = set(hints.scratch) | set(hints.traffic) if hints else set()
    tensors = _tensors({n: v for n, v in rec.args.items() if n not in skip})
    return distinct_bytes(tensors) + (sum(hints.traffic.values()) if hints else 0)


def _best(rows: list) -> int:
    ok = [i for i, r in enumerate(rows) if r.get("modelled_us") is not None]
    return min(ok, key=lambda i: rows[i]["modelled_us"]) if ok else 0


def triton_rows(launches: list, fixed: Optional[list], jobs=None, cache_dir=None, progress=None) -> tuple[list, dict]:
    """One row per LaunchRecord in ``launches``; ``fixed`` are the same launches recorded with
    ``FASTMBCONV_AUTOTUNE=0`` (matched by position, op and layer), or None."""
    plans = []
    for i, r in enumerate(launches):
        vs, autotuned = variants(r.kernel, r.args, r.constexprs)
        fv = None
        if autotuned and fixed is not None and i < len(fixed):
            f = fixed[i]
            if (f.op, f.layer) == (r.op, r.layer):
                fv = (f, variants(f.kernel, f.args, f.constexprs)[0][0])
        plans.append((r, vs, autotuned, fv))
    every = [v for _, vs, _, fv in plans for v in vs + ([fv[1]] if fv else [])]
    analyses = analyse(every, jobs=jobs, cache_dir=cache_dir, progress=progress)
    rows = []
    for r, vs, autotuned, fv in plans:
        hbm = launch_hbm_bytes(r, vs[0].config)

        def weight_bytes(names, r=r):
            return distinct_bytes(_tensors([r.args[n] for n in names if n in r.args]))

        per_config = [variant_row(r, v, analyses[v.key()], hbm, weight_bytes) for v in vs]
        best = _best(per_config)
        row = {"kind": "triton", "op": r.op, "layer": r.layer, "kernel": unwrap(r.kernel)[0].__name__,
               "autotuned": autotuned, **per_config[best]}
        if autotuned:
            row["configs"] = per_config
            row["chosen_config"] = best
            row["choice"] = "autotuned: the config with the lowest modelled time"
            if fv is not None:
                f, v = fv
                row["fixed_config"] = variant_row(f, v, analyses[v.key()], launch_hbm_bytes(f, v.config),
                                                  lambda names, f=f: distinct_bytes(_tensors([f.args[n] for n in names
                                                                                              if n in f.args])))
            else:
                row["flags"].append("no FASTMBCONV_AUTOTUNE=0 counterpart recorded")
        rows.append(row)
    return rows, analyses["_stats"]


def torch_row(k) -> dict:
    return {"kind": "torch", "op": f"torch:{k.name}", "aten": k.aten, "layer": k.layer, "fill": k.fill,
            "ksize": None, "grid": None, "config": None, "registers": None, "spill_bytes": None,
            "shared_bytes": None, "instructions_per_output": None, "hbm_bytes": k.hbm_bytes,
            "modelled_us": M.torch_op_seconds(k.hbm_bytes) * 1e6, "bound_by": "memory", "shapes": k.shapes,
            "note": k.note, "flags": []}


def _merge(rec: Recording, rows: list) -> list:
    out = []
    pending = list(rec.torch_kernels)
    for i, row in enumerate(rows):
        while pending and pending[0].after_triton <= i:
            out.append(torch_row(pending.pop(0)))
        out.append(row)
    out += [torch_row(k) for k in pending]
    for i, row in enumerate(out):
        row["index"] = i
    return out


def totals(rec: Recording, launches: list) -> dict:
    from fastmbconv.roofline import roofline

    modelled_us = sum(r["modelled_us"] or 0.0 for r in launches)
    fixed_us = sum((r.get("fixed_config") or r)["modelled_us"] or 0.0 for r in launches)
    floor_bytes = roofline(rec.model_name, rec.resolution[0], rec.batch, rec.dtype).bytes("layer_fused")
    floor_ms = floor_bytes / M.HBM_BYTES_PER_S * 1e3
    spills = [c["spill_bytes"] for r in launches if r["kind"] == "triton"
              for c in r.get("configs", [r]) + ([r["fixed_config"]] if r.get("fixed_config") else [])
              if c.get("spill_bytes") is not None]
    # depthwise launches: a kernel size and an op named for it (a stem conv has a ksize too)
    def per_output(k, fused):
        return [r["instructions_per_output"] for r in launches if r.get("ksize") == k and DEPTHWISE.search(r["op"])
                and bool(EXPAND_DW.search(r["op"])) == fused and r.get("instructions_per_output") is not None]

    dw = {k: per_output(k, False) for k in (3, 5)}
    expand_dw = {k: per_output(k, True) for k in (3, 5)}
    hbm = sum(r["hbm_bytes"] or 0 for r in launches)
    # what the modelled time is made of: were every launch's memory, issue and tensor work to
    # overlap perfectly across launches, the forward would still need the largest of these sums
    # (plus what launches with too few resident warps add, residency_extra_ms)
    issue_ms = sum(r.get("warp_instructions") or 0 for r in launches) / M.WARP_ISSUE_PER_S * 1e3
    t = {
        "launches": len(launches),
        "triton_launches": sum(r["kind"] == "triton" for r in launches),
        "torch_launches": sum(r["kind"] == "torch" for r in launches),
        "fill_launches": sum(bool(r.get("fill")) for r in launches),
        "modelled_ms": modelled_us / 1e3,
        "modelled_ms_fixed_configs": fixed_us / 1e3,
        "layer_fused_floor_bytes": floor_bytes,
        "layer_fused_floor_ms": floor_ms,
        "floor_ratio": (modelled_us / 1e3) / floor_ms if floor_ms else None,
        "hbm_bytes": hbm,
        "hbm_vs_layer_fused_floor": hbm / floor_bytes if floor_bytes else None,
        "memory_ms": hbm / M.HBM_BYTES_PER_S * 1e3,
        "issue_ms": issue_ms,
        "tensor_ms": sum(r.get("tensor_flops") or 0 for r in launches) / M.TENSOR_FLOPS_PER_S * 1e3,
        "sfu_ms": sum(r.get("mufu_warp_instructions") or 0 for r in launches) * M.THREADS_PER_WARP
        / M.MUFU_LANES_PER_S * 1e3,
        "launch_overhead_ms": len(launches) * M.LAUNCH_OVERHEAD_S * 1e3,
        "residency_extra_ms": sum(r.get("residency_extra_us") or 0.0 for r in launches) / 1e3,
        "launches_below_full_rate_warps": sum(1 for r in launches if r.get("residency_extra_us")),
        "l2_scratch_bytes": sum(r.get("l2_scratch_bytes") or 0 for r in launches),
        "recompute_flops": sum(r.get("recompute_flops") or 0 for r in launches),
        "expand_dw_launches": sum(bool(EXPAND_DW.search(r["op"])) for r in launches),
        "max_spill_bytes": max(spills) if spills else 0,
        "max_spill_bytes_chosen": max([r["spill_bytes"] or 0 for r in launches if r["kind"] == "triton"] or [0]),
        "dw_k3_max_instructions_per_output": max(dw[3]) if dw[3] else None,
        "dw_k5_max_instructions_per_output": max(dw[5]) if dw[5] else None,
        "expand_dw_k3_max_instructions_per_output": max(expand_dw[3]) if expand_dw[3] else None,
        "expand_dw_k5_max_instructions_per_output": max(expand_dw[5]) if expand_dw[5] else None,
        "bound_by": {b: sum(r.get("bound_by") == b for r in launches) for b in ("memory", "issue", "tensor", "sfu")},
        "launches_with_flags": sum(bool(r.get("flags")) for r in launches),
        "compile_failures": sum(1 for r in launches if r["kind"] == "triton"
                                for c in r.get("configs", [r]) if c.get("error")),
    }
    values = {"dw_k3_instructions_per_output": t["dw_k3_max_instructions_per_output"],
              "dw_k5_instructions_per_output": t["dw_k5_max_instructions_per_output"],
              "max_spill_bytes": t["max_spill_bytes"], "floor_ratio": t["floor_ratio"],
              "launches": t["launches"], "fill_launches": t["fill_launches"]}
    t["targets"] = {k: {"value": values[k], "limit": lim, "met": None if values[k] is None else values[k] <= lim}
                    for k, lim in TARGETS.items()}
    return t


def build_report(model: str = "efficientnet_b0", batch: int = 256, dtype: str = "fp16",
                 resolution: Optional[int] = None, jobs: Optional[int] = None, cache_dir: Optional[str] = None,
                 progress=None, configs: str = "all") -> dict:
    """The whole report as a JSON-ready dict (see the package docstring). ``configs="fixed"``
    reports the forward as recorded with ``FASTMBCONV_AUTOTUNE=0`` only (one config per
    launch, far fewer compiles: a smoke test, not the report the targets are judged on)."""
    if configs not in ("all", "fixed"):
        raise ValueError(f"configs must be 'all' or 'fixed', got {configs!r}")
    if interpreting():
        raise RuntimeError("the kernel report needs TRITON_INTERPRET unset (the launchers pick their GPU "
                           "configs and autotuned kernels only then); run `python -m fastmbconv.kernel_report`, "
                           "which re-runs itself without it")
    import torch
    import triton

    t0 = time.perf_counter()
    fixed = record_forward(model, batch, dtype, resolution, autotune=False)
    rec = record_forward(model, batch, dtype, resolution) if configs == "all" else fixed
    t1 = time.perf_counter()
    rows, stats = triton_rows(rec.launches, fixed.launches if configs == "all" else None, jobs, cache_dir, progress)
    launches = _merge(rec, rows)
    from fastmbconv.fused.layer_plan import plan_rows

    _, net = build_model(model, dtype)
    report = {
        "model": rec.model_name, "batch": batch, "dtype": dtype, "resolution": list(rec.resolution),
        "configs": configs, "target": "cuda sm_90 (H100)", "triton_version": triton.__version__,
        "torch_version": torch.__version__,
        "model_constants": M.CONSTANTS, "emulated_cuda_behaviour": rec.emulated,
        "launches": launches,
        "totals": totals(rec, launches),
        "expand_dw_plan": plan_rows(net, rec.resolution[0], rec.resolution[1], DTYPES[dtype]),
        "cache": stats,
        "seconds": {"record": t1 - t0, "compile_and_model": time.perf_counter() - t1},
    }
    return report
