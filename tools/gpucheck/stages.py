"""Which steps each stage runs, in order: the setup steps, then the stage's own (``all``: the
three stages verify, speed and profile in a row; ``first``: the one command of a short loan)."""
from __future__ import annotations

from .check import Check, Step
from .profile_steps import profile_steps
from .setup_steps import setup_steps
from .speed_steps import bench_step, merge_step, speed_steps
from .verify_steps import FIRST_MARK, test_step, verify_steps, warm_step

# A loan is 15 minutes of device time including the machine's start, so one command of about
# 540 s must bring back correctness and the headline speed ratios. SETUP_S is an allowance for
# preflight, the offline install (it builds the CUDA extension) and the version probe, not a GPU
# measurement; with it, FIRST_CAPS add up to the budget less its reserve, so a run on time gives
# every step its whole cap and a slow one cuts the benchmark last (correctness first).
SETUP_S = 60.0
FIRST_CAPS = {"tests-quick": 170.0, "warm": 120.0, "bench-headline": 150.0}


def first_steps(c: Check) -> list[Step]:
    return [test_step(c, "tests-quick", autotune=False, cap=FIRST_CAPS["tests-quick"], mark=FIRST_MARK),
            warm_step(c, cap=FIRST_CAPS["warm"]),
            bench_step(c, "bench-headline", FIRST_CAPS["bench-headline"]), merge_step(c)]


STAGE_STEPS = {"first": first_steps, "verify": verify_steps, "speed": speed_steps, "profile": profile_steps}


def stage_steps(c: Check) -> list[Step]:
    steps = setup_steps(c)
    for stage in ["verify", "speed", "profile"] if c.stage == "all" else [c.stage]:
        steps += STAGE_STEPS[stage](c)
    seen, unique = set(), []
    for s in steps:  # STAGE=all: one warm-up
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    return unique
