"""Which steps each stage runs, in order: the setup steps, then the stage's own (``all``: the
three stages in a row)."""
from __future__ import annotations

from .check import Check, Step
from .profile_steps import profile_steps
from .setup_steps import setup_steps
from .speed_steps import speed_steps
from .verify_steps import verify_steps


def stage_steps(c: Check) -> list[Step]:
    steps = setup_steps(c)
    stages = ["verify", "speed", "profile"] if c.stage == "all" else [c.stage]
    if "verify" in stages:
        steps += verify_steps(c)
    if "speed" in stages:
        steps += speed_steps(c)
    if "profile" in stages:
        steps += profile_steps(c)
    seen, unique = set(), []
    for s in steps:  # STAGE=all: one warm-up
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    return unique
