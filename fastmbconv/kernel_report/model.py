"""The fixed time model (H100 SXM figures; deliberately not tuned to any measurement).

    t = max(hbm_bytes / 3.0e12 B/s,
            warp_instructions / (132 SMs x 4 issues per cycle x 1.755e9 Hz),
            tensor_flops / 700e12 FLOP/s,
            MUFU lanes / (132 SMs x 16 per cycle x 1.755e9 Hz)) + 2 us

The last term is the special-function pipe: every MUFU (a SiLU takes an ex2 and an rcp in fp32,
one tanh in fp16/bf16: ``kernels/_math.py``) takes one issue slot like any instruction, but the
SM computes only 16 of them per cycle (the CUDA programming guide's throughput table for compute
capability 9.0), so a warp's MUFU holds the pipe 8 issue slots' worth of time and SiLU-heavy
code can be bound by it.

Dynamic counts: every straight-line SASS instruction once per warp, every loop body
``ceil(trips / unroll)`` times per pass of its enclosing loop (see :mod:`.sass`).
"""
from __future__ import annotations

import math
from typing import Optional

from .sass import Sass

HBM_BYTES_PER_S = 3.0e12
SMS = 132
ISSUE_PER_SM_PER_CYCLE = 4
CLOCK_HZ = 1.755e9
WARP_ISSUE_PER_S = SMS * ISSUE_PER_SM_PER_CYCLE * CLOCK_HZ
TENSOR_FLOPS_PER_S = 700e12
MUFU_PER_SM_PER_CYCLE = 16  # lanes: a warp's MUFU takes 2 cycles of an SM's pipe
MUFU_LANES_PER_S = SMS * MUFU_PER_SM_PER_CYCLE * CLOCK_HZ
LAUNCH_OVERHEAD_S = 2e-6
THREADS_PER_WARP = 32

CONSTANTS = {"hbm_bytes_per_s": HBM_BYTES_PER_S, "sms": SMS, "issue_per_sm_per_cycle": ISSUE_PER_SM_PER_CYCLE,
             "clock_hz": CLOCK_HZ, "tensor_flops_per_s": TENSOR_FLOPS_PER_S,
             "mufu_per_sm_per_cycle": MUFU_PER_SM_PER_CYCLE, "launch_overhead_s": LAUNCH_OVERHEAD_S}


def loop_multipliers(sass: Sass, trips: Optional[list[int]]) -> tuple[list[float], list[str]]:
    """Passes through each SASS loop body per warp, from hinted trip counts in source order
    (per entry of the loop). A remainder loop beside a loop ptxas unrolled takes that loop's
    ``trips % unroll``. When the SASS has a different number of loops than the hints, or no
    hints exist, every loop gets the largest hinted trip count (1 without hints) and a flag."""
    flags = []
    n = len(sass.loops)
    mains = [j for j, lp in enumerate(sass.loops) if lp.remainder_of is None]
    if not n:
        if trips:
            flags.append(f"hints give {len(trips)} loop(s) but the SASS has none (fully unrolled?)")
        return [], flags
    per_loop = [1] * n
    if trips is None:
        flags.append(f"{n} SASS loop(s) without trip-count hints: each counted once")
    elif len(trips) != len(mains):
        fallback = max(trips) if trips else 1
        per_loop = [fallback] * n
        flags.append(f"{len(mains)} SASS loop(s) vs {len(trips)} hinted: each counted {fallback} times")
    else:
        for j, t in zip(mains, trips):
            per_loop[j] = t
    mult: list[float] = [0.0] * n
    for j, lp in enumerate(sass.loops):  # parents come first (they start earlier)
        if lp.remainder_of is not None and trips is not None and len(trips) == len(mains):
            main = sass.loops[lp.remainder_of]
            own = per_loop[lp.remainder_of] % max(main.unroll, 1)
        else:
            own = math.ceil(max(per_loop[j], 0) / max(lp.unroll, 1))
        mult[j] = own * (mult[lp.parent] if lp.parent is not None else 1.0)
    return mult, flags


def dynamic_per_warp(sass: Sass, trips: Optional[list[int]]) -> dict:
    """Dynamic warp-instructions per warp (total and by class) and tensor FLOPs per warp."""
    mult, flags = loop_multipliers(sass, trips)
    classes = dict(sass.straight)
    for lp, m in zip(sass.loops, mult):
        for k, v in lp.classes.items():
            classes[k] = classes.get(k, 0) + v * m
    tflops = sass.tensor_flops.get("straight", 0.0)
    tflops += sum(sass.tensor_flops.get(j, 0.0) * m for j, m in enumerate(mult))
    return {"instructions": sum(classes.values()), "classes": classes, "tensor_flops": tflops,
            "loop_multipliers": mult, "flags": flags}


def modelled_seconds(hbm_bytes: float, warp_instructions: float, tensor_flops: float,
                     mufu_warp_instructions: float = 0.0) -> tuple[float, str]:
    """(modelled seconds, what bounds it: "memory", "issue", "tensor" or "sfu")."""
    parts = {"memory": hbm_bytes / HBM_BYTES_PER_S, "issue": warp_instructions / WARP_ISSUE_PER_S,
             "tensor": tensor_flops / TENSOR_FLOPS_PER_S,
             "sfu": mufu_warp_instructions * THREADS_PER_WARP / MUFU_LANES_PER_S}
    bound = max(parts, key=parts.get)
    return parts[bound] + LAUNCH_OVERHEAD_S, bound


def torch_op_seconds(hbm_bytes: float) -> float:
    """Torch-side kernels: bytes at the copy bandwidth plus the launch overhead."""
    return hbm_bytes / HBM_BYTES_PER_S + LAUNCH_OVERHEAD_S
