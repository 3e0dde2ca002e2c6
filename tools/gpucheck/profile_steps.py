"""The profile stage's steps: where the fused forward's host time goes at batch 1, the copy
bandwidth, ncu over one fused and one eager B0 forward (each limited to its NVTX range), and the
per-kernel tables read from ncu's CSV."""
from __future__ import annotations

import ncu_table

from . import TOOLS
from .check import Check, Step
from .outfiles import load_json
from .verify_steps import warm_step


def ncu_tables(c: Check):
    bw = (load_json(c.logs / "bandwidth.json") or {}).get("gb_s")
    data = {"copy_bandwidth_gb_s": bw, "providers": {}}
    for provider in ("fused", "eager"):
        src = c.logs / "profile" / f"ncu-{provider}.csv"
        if not src.exists():
            data["providers"][provider] = {"note": "no ncu CSV (dry run, or the ncu step did not run)"}
            continue
        t = ncu_table.table(src.read_text(errors="replace"), bw, f"B0 {provider}, one forward")
        ncu_table.write_csv(t["rows"], c.logs / "profile" / f"ncu-kernels-{provider}.csv")
        (c.logs / "profile" / f"ncu-kernels-{provider}.md").write_text(t["markdown"])
        timed = sum(1 for r in t["rows"] if r.get("time_us") is not None)
        data["providers"][provider] = {"total": t["total"], "kernels": t["kernels"][:40], "markdown": t["markdown"],
                                       "launches": len(t["rows"]), "timed_launches": timed}
    c.profile_data = data
    got = [p for p, v in data["providers"].items() if "total" in v]
    if not got:
        unusable = c.tool_unusable("ncu")
        if unusable:  # nothing failed, nothing profiled
            return f"skipped (no ncu profile: {unusable})", {"note": "no ncu CSV to read"}
        return ("ok" if c.dry else "failed"), {"note": "no ncu CSV to read"}
    # a CSV of no launches (the NVTX range matched nothing) or of no times is no profile
    empty = [p for p in got if not data["providers"][p]["timed_launches"]]
    if empty and not c.dry:
        return "failed", {"providers": got, "error": f"ncu profiled no timed kernel launch for {', '.join(empty)}: "
                                                     "see the ncu step's log and its CSV"}
    return "ok", {"providers": got}


# ncu replays each launch for its metrics: 0.4-0.6 s a launch on an H200, and the eager forward
# makes about 375 launches to the fused one's 52 (given 135 s, the eager profile stopped after 361)
CAPS_S = {"fused": 120, "eager": 330}


def profile_steps(c: Check) -> list[Step]:
    py = c.py
    prof = c.logs / "profile"
    prof.mkdir(exist_ok=True)
    bw = [py, str(TOOLS / "b0_forward.py"), "bandwidth", "--json", str(c.logs / "bandwidth.json")]
    host = [py, str(TOOLS / "b0_forward.py"), "host", "--json", str(prof / "host.json")]
    steps = [warm_step(c),
             # before ncu, which a short budget cuts first: it takes seconds, and says where the
             # fused forward's 16.5 ms at batch 1 went on an H100 (0.45 ms as a CUDA graph)
             Step("host-profile", host + ["--device", "cuda", "--dtype", "fp16", "--resolution", "224", "--batch", "1"],
                  host + ["--device", "cpu", "--dtype", "fp32", "--resolution", "16", "--batch", "1", "--warmup", "1",
                          "--repeat", "1", "--top", "5"],
                  cap_s=60, min_s=20, what="host time of the fused B0 forward at batch 1: timed, and under cProfile"),
             Step("bandwidth", bw + ["--device", "cuda"], bw + ["--device", "cpu"], cap_s=60, min_s=10)]
    for provider in ("fused", "eager"):
        inner = [py, str(TOOLS / "b0_forward.py"), "profile", "--provider", provider, "--nvtx", f"b0_{provider}"]
        # caches flushed before each kernel (ncu's default): consistent per-kernel bytes, cold-L2 times
        tool = ["ncu", "--target-processes", "all", "--nvtx", "--nvtx-include", f"b0_{provider}/",
                "--clock-control", "none", "--metrics", ",".join(ncu_table.NCU_METRICS),
                "--csv", "--page", "raw", "--print-units", "base", "--log-file", str(prof / f"ncu-{provider}.csv")]
        steps.append(Step(f"ncu-{provider}", inner + ["--device", "cuda", "--dtype", "fp16", "--resolution", "224",
                                                       "--batch", "256"],
                          inner + ["--device", "cpu", "--dtype", "fp32", "--resolution", "16", "--batch", "1", "--warmup", "1"],
                          tool=tool, cap_s=CAPS_S[provider], min_s=45, needs_tool="ncu",
                          what=f"ncu over one {provider} B0 forward (224 px, batch 256, fp16)"))
    steps.append(Step("ncu-table", fn=ncu_tables, needs=("preflight",), essential=True))
    return steps
