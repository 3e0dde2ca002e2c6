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

Those rates need latency hidden: the model credits them to 8 or more resident warps per SM (two
per scheduler; the persistent kernels' two 4-warp programs). Where registers or shared memory
let fewer programs stay resident (:func:`resident_programs`), the four parts scale by
8 / resident warps; a program that needs more than an SM has cannot launch at all.

Dynamic counts: every straight-line SASS instruction once per warp, every loop body
``ceil(trips / unroll)`` times per pass of its enclosing loop (see :mod:`.sass`).
"""
from __future__ import annotations

import math
from typing import Optional

from .compiled import SHARED_LIMIT_BYTES as SHARED_PER_PROGRAM_MAX
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
# what one SM holds (sm_90): registers, shared memory (each program reserves 1 KiB more), warps,
# programs; registers are allocated per warp in units of 256
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_PROGRAM = 1024
WARPS_PER_SM = 64
PROGRAMS_PER_SM = 32
FULL_RATE_WARPS = 8

CONSTANTS = {"hbm_bytes_per_s": HBM_BYTES_PER_S, "sms": SMS, "issue_per_sm_per_cycle": ISSUE_PER_SM_PER_CYCLE,
             "clock_hz": CLOCK_HZ, "tensor_flops_per_s": TENSOR_FLOPS_PER_S,
             "mufu_per_sm_per_cycle": MUFU_PER_SM_PER_CYCLE, "launch_overhead_s": LAUNCH_OVERHEAD_S,
             "shared_per_sm": SHARED_PER_SM, "registers_per_sm": REGISTERS_PER_SM, "full_rate_warps": FULL_RATE_WARPS}


def resident_programs(num_warps: int, registers: int, shared_bytes: int) -> tuple[int, str]:
    """(programs of one kernel an SM holds at once, what limits them: "registers", "shared",
    "warps" or "programs"). 0 when one program needs more shared memory than a program may have."""
    if shared_bytes > SHARED_PER_PROGRAM_MAX:
        return 0, "shared"
    per_warp = -(-max(registers, 1) * THREADS_PER_WARP // REGISTER_UNIT) * REGISTER_UNIT
    limits = {"registers": REGISTERS_PER_SM // (per_warp * num_warps),
              "shared": SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_PROGRAM),
              "warps": WARPS_PER_SM // num_warps, "programs": PROGRAMS_PER_SM}
    what = min(limits, key=limits.get)
    return limits[what], what


def latency_factor(resident_warps: int) -> float:
    """How much slower than its rates a kernel runs with ``resident_warps`` per SM (>= 1)."""
    return max(1.0, FULL_RATE_WARPS / max(resident_warps, 1))


def loop_multipliers(sass: Sass, trips: Optional[list[int]]) -> tuple[list[float], list[str]]:
    """Passes through each SASS loop body per warp, from hinted trip counts in source order
    (per entry of the loop). A loop ptxas unrolled by ``u`` makes ``ceil(trips / u)`` passes, or
    ``trips // u`` when a remainder loop beside it takes the ``trips % u`` left over. When the
    SASS has a different number of loops than the hints, or no hints exist, every loop gets the
    largest hinted trip count (1 without hints) and a flag."""
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
    hinted = trips is not None and len(trips) == len(mains)
    with_remainder = {lp.remainder_of for lp in sass.loops if lp.remainder_of is not None} if hinted else set()
    mult: list[float] = [0.0] * n
    for j, lp in enumerate(sass.loops):  # parents come first (they start earlier)
        if lp.remainder_of is not None and hinted:
            main = sass.loops[lp.remainder_of]
            own = per_loop[lp.remainder_of] % max(main.unroll, 1)
        elif j in with_remainder:
            own = max(per_loop[j], 0) // max(lp.unroll, 1)
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
                     mufu_warp_instructions: float = 0.0, resident_warps: int = FULL_RATE_WARPS) -> tuple[float, str]:
    """(modelled seconds, what bounds it: "memory", "issue", "tensor" or "sfu"); fewer than
    :data:`FULL_RATE_WARPS` resident warps per SM scale it by :func:`latency_factor`."""
    parts = {"memory": hbm_bytes / HBM_BYTES_PER_S, "issue": warp_instructions / WARP_ISSUE_PER_S,
             "tensor": tensor_flops / TENSOR_FLOPS_PER_S,
             "sfu": mufu_warp_instructions * THREADS_PER_WARP / MUFU_LANES_PER_S}
    bound = max(parts, key=parts.get)
    return parts[bound] * latency_factor(resident_warps) + LAUNCH_OVERHEAD_S, bound


def torch_op_seconds(hbm_bytes: float) -> float:
    """Torch-side kernels: bytes at the copy bandwidth plus the launch overhead."""
    return hbm_bytes / HBM_BYTES_PER_S + LAUNCH_OVERHEAD_S
