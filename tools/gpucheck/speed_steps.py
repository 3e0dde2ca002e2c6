"""The speed stage's steps: pytest-benchmark sessions (headline, kernels, max-autotune, B0-B7
at batch 32), the optional study, and the merge of the sessions into one pytest-benchmark JSON
and one summary (``--merge-bench``, run as a child process; the first stage ends with it too)."""
from __future__ import annotations

from pathlib import Path

from . import TOOLS
from .check import Check, Step
from .outfiles import dump_json, load_json, write_atomic
from .verify_steps import warm_step

HEADLINE = "(gpu-b0-224-bs256- or gpu-b0-224-bs1- or gpu-resnet50-224-)"
BENCH_K = {
    # the host time per call too: seconds, and the launch overhead is what decides batch 1
    "bench-headline": f"(test_model and {HEADLINE} and not compile_max_autotune) or test_host_time_per_call",
    "bench-kernels": "test_kernel and b0-bs",
    # the target's case alone: each case is a max-autotune compile of minutes
    "bench-max-autotune": "test_model and gpu-b0-224-bs256- and compile_max_autotune",
    "bench-models-bs32": "test_model and gpu- and -bs32- and not compile_max_autotune",
}
DRY_BENCH_K = "test_model and cpu-b0-64-bs2-"  # the benchmarks' CPU smoke case
# after the rows the targets read (compile_reduce_overhead included), each group after the one
# before it: the fused path's variants (fused_separate, ...), the host time per call, then
# torch.compile of the fused model; their cold compiles and tuning must not crowd out the targets
BENCH_LAST = "fused_,bench_host,compile_fused"
BENCH_STOP_S = 20


def bench_step(c: Check, name: str, cap: float, min_s: float = 30, env: dict | None = None) -> Step:
    out = c.work / "bench" / name
    out.mkdir(parents=True, exist_ok=True)
    argv = lambda k: [c.py, "-m", "pytest", "benchmarks", "-k", k, "-p", "gpu_check_plugin", "-p",  # noqa: E731
                      "no:cacheprovider", "-q", "-rfE", f"--benchmark-json={c.work / 'bench' / (name + '.json')}",
                      f"--junitxml={c.logs / ('junit-' + name + '.xml')}", "--gc-last", BENCH_LAST]
    dry = argv(DRY_BENCH_K) if name == "bench-headline" else None
    # soft_stop_s: no case starts in the step's last 20 s, so pytest mostly ends by itself; one
    # that the timeout cuts off is dropped by the plugin, keeping the finished rows
    return Step(name, argv(BENCH_K[name]), dry, cap_s=cap, min_s=max(min_s, BENCH_STOP_S + 30),
                junit=c.logs / f"junit-{name}.xml",
                env={"FASTMBCONV_BENCH_OUT": str(out), **(env or {})}, soft_stop_s=BENCH_STOP_S,
                what=f"pytest benchmarks -k '{BENCH_K[name]}'")



def merge_bench_main(work: str) -> int:
    """Merge the benchmark sessions of a stage (speed, first) into one pytest-benchmark JSON and one
    summary.json / summary.md, with the targets evaluated over all of them."""
    work = Path(work)
    order = list(BENCH_K)
    names = sorted((p.stem for p in (work / "bench").glob("*.json")), key=lambda n: order.index(n) if n in order else 99)
    merged_dir = work / "merged"
    merged_dir.mkdir(parents=True, exist_ok=True)
    bench, rows, kernels, host, bandwidth, settings, sections = None, [], [], [], {}, {}, []
    for name in names:
        data = load_json(work / "bench" / f"{name}.json")
        if data:
            if bench is None:
                bench = {**data, "benchmarks": [], "gpu_check_sessions": []}
            bench["benchmarks"] += data.get("benchmarks", [])
            bench["gpu_check_sessions"].append({"step": name, "datetime": data.get("datetime"),
                                                "benchmarks": len(data.get("benchmarks", []))})
        summary = load_json(work / "bench" / name / "summary.json") or {}
        rows += summary.get("results", [])
        kernels += summary.get("kernels", [])
        host += summary.get("host", [])
        bandwidth.update(summary.get("bandwidth") or {})
        if summary.get("settings"):
            settings[name] = summary["settings"]
        md_path = work / "bench" / name / "summary.md"
        if md_path.exists():
            body = md_path.read_text().split("\n", 1)[-1].strip()
            sections.append(f"## Session `{name}`\n\n{body}\n")
    try:
        from fastmbconv import study

        targets = study.evaluate_targets(rows, kernels)
        targets_md = study.format_targets(targets)
    except Exception as exc:  # the merge must not fail on the study package's changes
        targets, targets_md = None, f"(targets not evaluated: {type(exc).__name__}: {exc})"
    dump_json(merged_dir / "pytest-benchmark.json", bench or {"benchmarks": [], "note": "no benchmark session finished"})
    dump_json(merged_dir / "summary.json", {"bandwidth": bandwidth, "results": rows, "targets": targets,
                                            "kernels": kernels, "host": host, "sessions": names,
                                            "settings": settings})
    head = (f"# fastmbconv benchmark summary\n\n{len(names)} pytest-benchmark session(s) of one gpu-check stage "
            f"({', '.join(names) or 'none'}), minutes apart on one machine. Targets over all of them:\n\n")
    write_atomic(merged_dir / "summary.md", head + targets_md + "\n\n" + "\n".join(sections))
    dump_json(merged_dir / "targets.json", {"targets": targets, "markdown": targets_md, "sessions": names})
    print(f"merged {len(names)} session(s): {', '.join(names) or 'none'}; {len(rows)} model rows, "
          f"{len(kernels)} kernel rows, {len(host)} host-time rows")
    return 0


def speed_steps(c: Check) -> list[Step]:
    inductor = c.cache_root / "inductor"
    steps = [warm_step(c), bench_step(c, "bench-headline", 240), bench_step(c, "bench-kernels", 180),
             bench_step(c, "bench-max-autotune", 300, min_s=60, env={"TRITON_CACHE_DIR": str(inductor / "triton")}),
             bench_step(c, "bench-models-bs32", 240)]
    if c.study:
        argv = [c.py, "-m", "fastmbconv.study", "--quick", "--no-progress", "--out", str(c.logs / "study")]
        steps.append(Step("study", argv, argv + ["--device", "cpu", "--models", "b0", "--batches", "1", "--no-plots"],
                          cap_s=300, min_s=60, what="python -m fastmbconv.study --quick"))
    return steps + [merge_step(c)]


def merge_step(c: Check) -> Step:
    merge = [c.py, str(TOOLS / "gpu_check.py"), "--merge-bench", str(c.work)]
    return Step("merge-bench", merge, merge, cap_s=60, needs=("preflight",), essential=True)
