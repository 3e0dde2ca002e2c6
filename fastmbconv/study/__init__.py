"""``python -m fastmbconv.study``: latency vs FLOPs vs memory traffic, on the device present.

Runs EfficientNet B0-B7 and ResNet-50 (the FLOPs anchor) under each provider, and writes to
``--out`` (default ``study_out/``):

* ``results.md``   the table (median latency, spread, img/s, TFLOP/s, GB/s, fraction of the
  measured memory floor at each fusion level), the speed targets, the B0 time breakdown and
  the analytic roofline;
* ``results.json`` / ``results.csv``  the same numbers, machine-readable;
* ``latency_vs_flops.png``, ``throughput_vs_batch.png``, ``b0_breakdown.png``;
* ``b0_layers.csv``  every op of B0 with its FLOPs, bytes and FLOP/byte at each fusion level.

Providers (:data:`PROVIDERS`): the fused Triton path; the reference modules in eager mode
(cuDNN on a GPU); ``torch.compile(reference, mode="max-autotune")``; ``torch.compile`` of the
fused path; at batch 1 the fused model captured in a CUDA graph and the reference compiled with
``mode="reduce-overhead"``. On a machine without a GPU only the eager reference runs, on a small
plan (every model at a tiny resolution), so the command finishes in seconds.

Timing: every call is synchronised (CUDA events on a GPU, ``perf_counter`` on the CPU), compile
and autotuning happen in warm-up calls that are not timed, and the median and interquartile
range of the timed calls are reported. cuDNN runs in benchmark mode and fp32 without TF32, in the
study and the benchmarks alike (:func:`.timing.timing_settings`).

The package is also the provider library of ``benchmarks/``; matplotlib and tqdm are imported
only by the modules that draw (:mod:`.plots`) and report progress (:mod:`.plan`).

Modules: :mod:`.providers` (what is timed and how it is built), :mod:`.timing`,
:mod:`.bandwidth` (the measured ceiling), :mod:`.metrics`, :mod:`.targets`, :mod:`.profile`
(time per op category), :mod:`.plan` (what a run measures, and running it), :mod:`.report`,
:mod:`.plots`, :mod:`.__main__` (the command).
"""
from .__main__ import main, parse_args
from .bandwidth import Bandwidth, device_name, floor_fraction, floor_seconds, measure_copy_bandwidth
from .metrics import flops_for, metrics, roof_for
from .plan import Plan, make_plan, run_plan
from .profile import CATEGORIES, profile_breakdown
from .providers import (ALL_MODELS, DTYPES, EFFICIENTNETS, HUGE_ENV, HUGE_PIXELS, PROVIDERS, RESNET, Provider,
                        Runner, build_model, full_model_name, make_runner, native_resolution, short_name,
                        skip_reason)
from .report import CSV_FIELDS, fmt, format_markdown, roofline_table, write_outputs
from .targets import TARGETS, Target, evaluate_targets, format_targets
from .timing import Timing, summarize, sync, time_runner, timing_settings

__all__ = [
    "ALL_MODELS", "Bandwidth", "CATEGORIES", "CSV_FIELDS", "DTYPES", "EFFICIENTNETS", "HUGE_ENV", "HUGE_PIXELS",
    "PROVIDERS", "Plan", "Provider", "RESNET", "Runner", "TARGETS", "Target", "Timing", "build_model", "device_name",
    "evaluate_targets", "floor_fraction", "floor_seconds", "flops_for", "fmt", "format_markdown", "format_targets",
    "full_model_name", "main", "make_plan", "make_runner", "measure_copy_bandwidth", "metrics", "native_resolution",
    "parse_args", "profile_breakdown", "roof_for", "roofline_table", "run_plan", "short_name", "skip_reason",
    "summarize", "sync", "time_runner", "timing_settings", "write_outputs",
]
