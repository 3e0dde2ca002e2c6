"""What a study run measures (:func:`make_plan`) and running it (:func:`run_plan`)."""
from __future__ import annotations

import copy
import datetime
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from .bandwidth import device_name, measure_copy_bandwidth
from .metrics import metrics
from .profile import profile_breakdown
from .providers import (ALL_MODELS, EFFICIENTNETS, PROVIDERS, RESNET, build_model, full_model_name, make_runner,
                        native_resolution, short_name, skip_reason)
from .targets import evaluate_targets
from .timing import time_runner, timing_settings


@dataclass
class Plan:
    description: str
    device: torch.device
    cases: list[tuple[str, int, int, str, str]]  # (model, resolution, batch, dtype, provider)
    skipped: list[tuple[tuple, str]]
    profile: list[tuple[str, int, int, str, str]]
    reps: int
    max_seconds: float
    cpu_threads: int | None = None


def make_plan(device, quick: bool = False, full: bool = False, models: Sequence[str] | None = None,
              batches: Sequence[int] | None = None, dtypes: Sequence[str] | None = None,
              providers: Sequence[str] | None = None, resolution: int | None = None) -> Plan:
    device = torch.device(device)
    cuda = device.type == "cuda"
    if not cuda:
        res = resolution or (48 if quick else 64)
        models = models or ALL_MODELS
        batches = batches or (1, 4)
        dtypes = dtypes or ("fp32",)
        providers = providers or ("eager",)
        desc = (f"CPU small version: every model at {res}x{res} px (not the native resolutions), batch "
                f"{', '.join(map(str, batches))}, {', '.join(dtypes)}, channels_last, reference eager only, "
                "1 CPU thread (stable on a shared machine); GPU providers "
                "(fused, compiled, CUDA graphs) need a CUDA GPU. Times are host CPU times; the 'memory floor' "
                "uses measured host memcpy bandwidth.")
        reps, max_s = (3, 0.5) if quick else (7, 2.0)
    elif quick:
        models = models or EFFICIENTNETS[:4] + (RESNET,)
        batches = batches or (1, 32)
        dtypes = dtypes or ("fp16",)
        providers = providers or ("fused", "eager", "cudagraph_fused")
        res = resolution
        desc = f"GPU quick: {', '.join(short_name(m) for m in models)} at native resolution, batch {batches}, {dtypes}, providers {providers}"
        reps, max_s = 20, 2.0
    else:
        models = models or ALL_MODELS
        batches = batches or (1, 32, 256)
        dtypes = dtypes or (("fp16", "bf16", "fp32") if full else ("fp16",))
        providers = providers or tuple(PROVIDERS)
        res = resolution
        desc = (f"GPU {'full' if full else 'default'}: {', '.join(short_name(m) for m in models)} at native resolution"
                f"{'' if res is None else f' (overridden: {res})'}, batch {tuple(batches)}, {tuple(dtypes)}, channels_last, eval; providers {tuple(providers)}"
                + ("" if full else "; torch.compile max-autotune only for B0 and ResNet-50 (autotuning every model takes hours; --full runs it everywhere)"))
        reps, max_s = 30, 5.0
    models = [full_model_name(m) for m in models]
    for p in providers:
        if p not in PROVIDERS:
            raise ValueError(f"unknown provider {p!r}; expected one of {list(PROVIDERS)}")
    cases, skipped = [], []
    for model in models:
        r = res or native_resolution(model)
        for dtype in dtypes:
            for batch in batches:
                for p in providers:
                    if cuda and not full and p == "compile_max_autotune" and model not in ("efficientnet_b0", RESNET):
                        continue
                    why = skip_reason(p, model, batch, device, r)
                    (skipped.append(((model, r, batch, dtype, p), why)) if why
                     else cases.append((model, r, batch, dtype, p)))
    b0 = "efficientnet_b0"
    prof = []
    if b0 in models:
        r = res or native_resolution(b0)
        pb = max(b for b in batches) if not cuda else (256 if 256 in batches else max(batches))
        for p in ("eager", "fused"):
            if p in providers and skip_reason(p, b0, pb, device, r) is None:
                prof.append((b0, r, pb, dtypes[0], p))
    return Plan(desc, device, cases, skipped, prof, reps, max_s, cpu_threads=None if cuda else 1)


# ---------------------------------------------------------------------- run + write
def run_plan(plan: Plan, progress: bool = True, log=print) -> dict:
    threads = torch.get_num_threads()
    if plan.device.type == "cpu" and plan.cpu_threads:
        torch.set_num_threads(plan.cpu_threads)
    try:
        with timing_settings() as settings:
            return _run_plan(plan, progress, log, settings)
    finally:
        torch.set_num_threads(threads)


def _run_plan(plan: Plan, progress: bool, log, settings: dict) -> dict:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an optional extra
        tqdm = None
    bw = measure_copy_bandwidth(plan.device)
    log(f"measured {bw.kind}: {bw.gb_s:.1f} GB/s on {bw.device}")
    rows = []
    cache: dict = {}  # one built model at a time, reused across batches/dtypes/providers

    def model_for(name):
        if name not in cache:
            cache.clear()
            cache[name] = build_model(name)
        net, source = cache[name]
        return (copy.deepcopy(net) if plan.device.type == "cuda" else net), source
    items = plan.cases
    bar = tqdm(items, desc="study", unit="case", disable=not progress, file=sys.stderr) if tqdm else items
    for case in bar:
        model, res, batch, dtype, provider = case
        if tqdm:
            bar.set_postfix_str(f"{short_name(model)} {res}px bs{batch} {dtype} {provider}")
        row = {"model": model, "resolution": res, "batch": batch, "dtype": dtype, "provider": provider}
        try:
            net, source = model_for(model)
            runner = make_runner(provider, model, batch, dtype, plan.device, res, net=net, source=source)
            timing = time_runner(runner, reps=plan.reps, max_seconds=plan.max_seconds)
            row.update(model_source=runner.model_source, median_s=timing.median_s, q1_s=timing.q1_s,
                       q3_s=timing.q3_s, iqr_s=timing.iqr_s, min_s=timing.min_s, reps=timing.reps)
            row.update(metrics(model, res, batch, dtype, timing.median_s, bw))
            del runner
        except Exception as exc:  # one failing provider must not end the study
            row.update(error=f"{type(exc).__name__}: {exc}"[:300], median_s=None)
        rows.append(row)
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    breakdowns = []
    for model, res, batch, dtype, provider in plan.profile:
        try:
            net, source = model_for(model)
            runner = make_runner(provider, model, batch, dtype, plan.device, res, net=net, source=source)
            breakdowns.append(profile_breakdown(runner))
        except Exception as exc:
            breakdowns.append({"provider": provider, "model": model, "error": f"{type(exc).__name__}: {exc}"[:300]})
    return {
        "meta": {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device_name(plan.device), "device_type": plan.device.type,
            "torch": torch.__version__, "plan": plan.description, "bandwidth": bw.as_dict(), "settings": settings,
            "skipped": [{"case": list(c), "reason": why} for c, why in plan.skipped],
        },
        "rows": rows,
        "targets": evaluate_targets(rows),
        "breakdown": breakdowns,
    }
