"""Write the report: JSON (everything) and markdown (a per-launch table and the totals)."""
from __future__ import annotations

import json

STATIC_NOTE = ("Static model, not a measurement: times are modelled from sm_90 SASS and tensor sizes, "
               "not timed on a GPU.")


def config_text(config) -> str:
    if not config:
        return "-"
    parts = [f"{k.replace('BLOCK_', '')}={v}" for k, v in config.items() if k not in ("num_warps", "num_stages")]
    if "num_warps" in config:
        parts.append(f"w{config['num_warps']}")
    if "num_stages" in config:
        parts.append(f"s{config['num_stages']}")
    return " ".join(parts)


def _num(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def launch_table(launches: list) -> str:
    head = ("| # | layer | op | k | grid | config | regs | spill | instr/output | HBM MB | L2 scratch MB | "
            "recompute GFLOP | modelled µs | bound by | flags |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in launches:
        op = r["op"] + (" (fill)" if r.get("fill") else "")
        grid = "x".join(map(str, r["grid"])) if r.get("grid") else "-"
        scratch, recompute = r.get("l2_scratch_bytes"), r.get("recompute_flops")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["index"], r["layer"] or "-", op, r["ksize"] or "-", grid, config_text(r.get("config")),
            _num(r.get("registers"), "{}"), _num(r.get("spill_bytes"), "{}"),
            _num(r.get("instructions_per_output")), _num(r["hbm_bytes"] / 1e6, "{:.2f}"),
            _num(scratch / 1e6 if scratch else None, "{:.2f}"), _num(recompute / 1e9 if recompute else None, "{:.2f}"),
            _num(r["modelled_us"]), r.get("bound_by") or "-", len(r.get("flags") or []) or ""))
    return "\n".join(lines)


def totals_table(report: dict) -> str:
    t = report["totals"]
    rows = [
        ("launches per forward (Triton + torch)", f"{t['launches']} ({t['triton_launches']} + {t['torch_launches']})"),
        ("fill launches", t["fill_launches"]),
        ("modelled time", f"{t['modelled_ms']:.3f} ms"),
        ("modelled time, FASTMBCONV_AUTOTUNE=0 configs", f"{t['modelled_ms_fixed_configs']:.3f} ms"),
        ("layer-fused floor at 3.0 TB/s", f"{t['layer_fused_floor_ms']:.3f} ms"),
        ("modelled / floor", _num(t["floor_ratio"], "{:.2f}")),
        ("memory / issue / tensor / SFU time and launch overhead, each summed over the launches",
         " / ".join(_num(t.get(k), "{:.3f}")
                    for k in ("memory_ms", "issue_ms", "tensor_ms", "sfu_ms", "launch_overhead_ms"))
         + " ms"),
        ("launches with fewer than 8 resident warps per SM (registers or shared memory), and the time they add",
         f"{t.get('launches_below_full_rate_warps', 0)}, {t.get('residency_extra_ms', 0.0):.3f} ms"),
        ("HBM bytes (launches, each tensor once)", f"{t['hbm_bytes'] / 1e6:.1f} MB"),
        ("HBM bytes / layer-fused floor bytes", _num(t.get("hbm_vs_layer_fused_floor"), "{:.2f}")),
        ("L2 scratch bytes (not HBM)", f"{t.get('l2_scratch_bytes', 0) / 1e6:.1f} MB"),
        ("halo recompute", f"{t.get('recompute_flops', 0) / 1e9:.2f} GFLOP"),
        ("expand_dwconv launches (see the plan below)", t.get("expand_dw_launches", 0)),
        ("largest spill (any config)", f"{t['max_spill_bytes']} B"),
        ("largest spill (chosen configs)", f"{t['max_spill_bytes_chosen']} B"),
        ("depthwise k=3 max instructions/output", _num(t["dw_k3_max_instructions_per_output"])),
        ("depthwise k=5 max instructions/output", _num(t["dw_k5_max_instructions_per_output"])),
        ("expand + depthwise (one op) k=3 / k=5 max instructions/output",
         f"{_num(t.get('expand_dw_k3_max_instructions_per_output'))} / "
         f"{_num(t.get('expand_dw_k5_max_instructions_per_output'))}"),
        ("configs that failed to compile (their time counts as 0)", t["compile_failures"]),
        ("launches bound by memory / issue / tensor / SFU",
         " / ".join(str(t["bound_by"].get(b, 0)) for b in ("memory", "issue", "tensor", "sfu"))),
    ]
    out = ["| total | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    out += ["", "| target | value | limit | met |", "|---|---|---|---|"]
    for name, d in t["targets"].items():
        met = "-" if d["met"] is None else ("yes" if d["met"] else "NO")
        out.append(f"| {name} | {_num(d['value'], '{:.4g}')} | {d['limit']} | {met} |")
    return "\n".join(out)


def top_table(launches: list, n: int = 10) -> str:
    top = sorted(launches, key=lambda r: -(r["modelled_us"] or 0))[:n]
    return launch_table(top)


def markdown(report: dict) -> str:
    title = (f"# sm_90 kernel report: {report['model']}, batch {report['batch']}, {report['dtype']}, "
             f"{report['resolution'][0]}x{report['resolution'][1]}")
    flagged = [r for r in report["launches"] if r.get("flags")]
    parts = [title, "", STATIC_NOTE, "",
             f"triton {report['triton_version']}, torch {report['torch_version']}. Modelled time per launch: "
             "max(HBM bytes / 3.0e12, warp-instructions / (132 x 4 x 1.755e9), tensor FLOPs / 700e12, "
             "MUFU lanes / (132 x 16 x 1.755e9)) + 2 µs; "
             "autotuned launches show the config the model likes best (all configs are in the JSON).",
             "Recorded on meta tensors, emulating CUDA in: "
             + "; ".join(report.get("emulated_cuda_behaviour", [])) + ".",
             "",
             "## Totals", "", totals_table(report), "", "## Launches", "", launch_table(report["launches"])]
    plan = report.get("expand_dw_plan") or []
    if plan:
        parts += ["", "## Expand + depthwise plan", "",
                  "Each block's expand 1x1 and depthwise conv: one `expand_dwconv` launch (fused) or two "
                  "(separate); why: FASTMBCONV_EXPAND_DW (env), the plan table (fastmbconv/fused/"
                  "expand_dw_plan.json) or the rule for geometries not in it.", "",
                  "| layer | expand + depthwise | why | table key |", "|---|---|---|---|"]
        parts += [f"| {p['layer']} | {p['expand_dw']} | {p['why']} | {p['key']} |" for p in plan]
    if flagged:
        parts += ["", "## Flags", ""]
        parts += [f"- #{r['index']} {r['layer']} {r['op']}: " + "; ".join(r["flags"]) for r in flagged]
    return "\n".join(parts) + "\n"


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")


def write_markdown(report: dict, path: str) -> None:
    with open(path, "w") as f:
        f.write(markdown(report))
