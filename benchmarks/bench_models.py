"""Model-level benchmarks: EfficientNet B0-B7 and ResNet-50 under every provider.

Every case is eval mode, channels_last, random weights and inputs, at the model's native
resolution. Compilation, autotuning and CUDA-graph capture happen while the provider is built
and in untimed warm-up rounds; each timed round is one forward followed by a device synchronise.
Before it is timed, each provider's output is checked against the eager reference modules on
the same input, so a fast wrong answer fails the case. See ``_providers.py`` for which cases
run by default, with ``FASTMBCONV_BENCH_FULL=1``, and on a machine without a GPU.
"""
from __future__ import annotations

import pytest
import torch

import fastmbconv as fm
from fastmbconv import roofline as rl
from fastmbconv import study
from fastmbconv._environ import environment

from _providers import median_seconds, model_cases, pedantic, rounds_for

# ||provider - eager reference|| / ||reference|| allowed (a norm, not a max against a floor of 1:
# B0's logits are far below 1, where that would pass a partly wrong output): the compiled
# providers reorder fp16/bf16 reductions and may use TF32 in fp32
OUTPUT_REL_ERR = {"fp32": 1e-2, "fp16": 5e-2, "bf16": 1e-1}


def check_output(runner: study.Runner) -> None:
    out = runner.call()
    study.sync(runner.device)
    with torch.no_grad(), fm.use_backend("reference"):
        ref = runner.net(runner.x)
    assert out.shape == ref.shape, f"{runner.provider}: output shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{runner.provider}: non-finite output"
    ref = ref.double()
    rel = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    assert rel <= OUTPUT_REL_ERR[runner.dtype], (
        f"{runner.provider} output differs from the eager reference by {rel:.3g} (relative norm)")


@pytest.mark.parametrize("case", model_cases())
def test_model(case, benchmark, bandwidth, bench_results):
    model, res, batch, dtype, provider, device = case
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)  # stable CPU numbers on a shared machine
    try:
        runner = study.make_runner(provider, model, batch, dtype, device, res)
        check_output(runner)
        rounds = rounds_for(runner.call, device)
        benchmark.group = f"{study.short_name(model)}-{res}-bs{batch}-{dtype}"
        pedantic(benchmark, runner.call, device, rounds=rounds)
    finally:
        torch.set_num_threads(threads)
        if device == "cuda":
            torch.cuda.empty_cache()

    bw = bandwidth(device)
    info = {
        "provider": provider, "provider_title": study.PROVIDERS[provider].title, "model": model,
        "model_source": runner.model_source, "resolution": res, "batch": batch, "dtype": dtype,
        "channels_last": True, "device": torch.device(device).type, "device_name": study.device_name(device),
        "bandwidth_gb_s": bw.gb_s, "bandwidth_kind": bw.kind,
    }
    median = median_seconds(benchmark)
    m = study.metrics(model, res, batch, dtype, median, bw) if median else {
        "flops": study.flops_for(model, res, batch)}
    roof = study.roof_for(model, res, batch, dtype)
    if roof is not None and not median:
        m.update({f"bytes_{lv}": roof.bytes(lv) for lv in rl.LEVELS})
    info.update(m)
    if study.PROVIDERS[provider].backend == "fused" and hasattr(runner.net, "blocks"):
        from fastmbconv.fused.layer_plan import plan_rows

        with environment(study.PROVIDERS[provider].env):  # a variant's forced plan
            rows = plan_rows(runner.net, res, res, runner.x.dtype, runner.x.device)  # which blocks ran expand_dwconv
        info["expand_dw_fused_layers"] = [r["layer"] for r in rows if r["expand_dw"] == "fused"]
        info["expand_dw_why"] = sorted({r["why"] for r in rows if r["why"] != "no expand"})
    benchmark.extra_info.update(info)
    bench_results.append({"case": f"{study.short_name(model)} {res}px bs{batch} {dtype} {provider}",
                          "median_s": median, **info})
