"""The GPU check stages behind ``tools/gpu_check.py`` (the CLI and its usage live there).

Not named ``gpu_check``: a package of that name would shadow the script. Modules:

* ``outfiles``: the promised file set, its limits and budget reserve, the log archive, the OUT check.
* ``check``: ``Step``, ``Result`` and ``Check``: the budget, each step's environment, running a step.
* ``report``: what a run keeps in OUT (refreshed after every step) and ``report.md``.
* ``setup_steps``: preflight, kernel-cache restore, offline install, version probe.
* ``verify_steps``, ``speed_steps``, ``profile_steps``: each stage's own steps.
* ``stages``: the steps of a stage, in order; ``first`` (the one command of a short loan) and its caps.

The modules import ``gpu_cache`` and ``ncu_table`` as top-level modules: ``tools/`` is on
``sys.path`` wherever this package is importable as ``gpucheck``.
"""
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent
REPO = TOOLS.parent
