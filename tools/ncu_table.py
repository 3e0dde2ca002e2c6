#!/usr/bin/env python3
"""Turn Nsight Compute CSV output into a short per-kernel table (pure Python; no GPU, no torch).

The profile stage of ``tools/gpu_check.py`` runs ``ncu --csv --page raw --print-units base``
over one B0 forward per provider; this module reads what ncu wrote and answers, per kernel: how
long it ran, how many DRAM bytes it moved, the DRAM GB/s that implies, that rate as a fraction of
the copy bandwidth measured in the same stage, registers per thread (the most of its launches)
and achieved occupancy (weighted by each launch's time).

Both CSV layouts ncu writes are read:

* ``--page raw`` (what the stage asks for): one record per kernel launch, one column per metric,
  and a units record (empty ID) right under the header;
* the default ``details`` page: one record per (launch, metric) with "Metric Name",
  "Metric Unit" and "Metric Value" columns.

Lines that are not CSV records (``==PROF==`` progress lines, the program's own output in a
``--log-file``) are skipped; values may carry thousands separators ("1,234.5") or be "n/a".
Units are converted to seconds and bytes whatever ncu printed (``nsecond``/``us``/``Kbyte``...).

    python tools/ncu_table.py ncu-fused.csv --bandwidth-gb-s 3000 [--csv per-launch.csv]
"""
from __future__ import annotations

import argparse
import csv
import re
from collections import OrderedDict
from pathlib import Path

#: What the table needs, by role.
TIME = "gpu__time_duration.sum"
DRAM_READ = "dram__bytes_read.sum"
DRAM_WRITE = "dram__bytes_write.sum"
REGISTERS = "launch__registers_per_thread"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
INSTRUCTIONS = "smsp__inst_executed.sum"
#: The metrics the profile stage collects (the table's, plus two speed-of-light percentages
#: and the launch shape, kept in the raw CSV for later questions).
NCU_METRICS = (TIME, DRAM_READ, DRAM_WRITE, REGISTERS, OCCUPANCY, INSTRUCTIONS,
               "sm__throughput.avg.pct_of_peak_sustained_elapsed",
               "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
               "launch__grid_size", "launch__block_size")

_SCALE = {
    # time -> seconds
    "nsecond": 1e-9, "ns": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
    "second": 1.0, "s": 1.0,
    # bytes -> bytes (ncu's prefixes are decimal)
    "byte": 1.0, "b": 1.0, "kbyte": 1e3, "kb": 1e3, "mbyte": 1e6, "mb": 1e6, "gbyte": 1e9, "gb": 1e9,
    "tbyte": 1e12, "tb": 1e12, "kibyte": 2.0**10, "mibyte": 2.0**20, "gibyte": 2.0**30,
}


def _number(text: str, unit: str = "") -> float | None:
    """A metric value in base units (seconds, bytes; anything else as printed); None for n/a."""
    text = (text or "").strip().replace(",", "")
    if not text or text.lower() in ("n/a", "nan", "-"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value * _SCALE.get(unit.strip().lower(), 1.0)


def _records(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    return [r for r in csv.reader(lines) if r]


def read_launches(text: str) -> list[dict]:
    """Every kernel launch in an ncu CSV: ``{"id", "name", "block", "grid", "metrics": {...}}``
    with metric values in seconds / bytes (or as printed for other units), in launch order."""
    records = _records(text)
    head = next((i for i, r in enumerate(records) if "Kernel Name" in r and "ID" in r), None)
    if head is None:
        return []
    header = records[head]
    col = {name: i for i, name in enumerate(header)}
    rows = records[head + 1:]
    launches: "OrderedDict[str, dict]" = OrderedDict()

    def launch(r):
        key = r[col["ID"]]
        if key not in launches:
            get = lambda name: r[col[name]] if name in col and col[name] < len(r) else ""  # noqa: E731
            launches[key] = {"id": int(key) if key.isdigit() else key, "name": get("Kernel Name"),
                             "block": get("Block Size"), "grid": get("Grid Size"), "metrics": {}}
        return launches[key]

    if "Metric Name" in col:  # details page: one record per (launch, metric)
        for r in rows:
            if len(r) < len(header) or not r[col["ID"]]:
                continue
            launch(r)["metrics"][r[col["Metric Name"]]] = _number(r[col["Metric Value"]], r[col["Metric Unit"]])
    else:  # raw page: one record per launch, a units record first; metric columns by their names
        metric_cols = [i for i, name in enumerate(header) if name in NCU_METRICS]
        units = [""] * len(header)
        for r in rows:
            if not r[col["ID"]]:
                units = (r + [""] * len(header))[:len(header)]
                continue
            entry = launch(r)
            for i in metric_cols:
                if i < len(r):
                    entry["metrics"][header[i]] = _number(r[i], units[i])
    return list(launches.values())


def short_name(kernel: str, width: int = 60) -> str:
    """``void at::native::foo<float, 4>(int, float*)`` -> ``at::native::foo``."""
    name = re.sub(r"^void\s+", "", kernel.strip())
    name = re.split(r"[(<]", name, maxsplit=1)[0].strip() or kernel.strip()
    return name if len(name) <= width else name[: width - 1] + "…"


def launch_rows(launches: list[dict], copy_gb_s: float | None) -> list[dict]:
    """One row per launch: time, DRAM traffic, GB/s, fraction of the copy bandwidth, registers."""
    rows = []
    for i, k in enumerate(launches):
        m = k["metrics"]
        t = m.get(TIME)
        nbytes = None if m.get(DRAM_READ) is None and m.get(DRAM_WRITE) is None else \
            (m.get(DRAM_READ) or 0.0) + (m.get(DRAM_WRITE) or 0.0)
        gb_s = nbytes / t / 1e9 if nbytes is not None and t else None
        rows.append({
            "index": i, "id": k["id"], "kernel": short_name(k["name"]), "full_name": k["name"],
            "time_us": t * 1e6 if t is not None else None,
            "dram_read_mb": m[DRAM_READ] / 1e6 if m.get(DRAM_READ) is not None else None,
            "dram_write_mb": m[DRAM_WRITE] / 1e6 if m.get(DRAM_WRITE) is not None else None,
            "dram_gb_s": gb_s,
            "frac_copy_bw": gb_s / copy_gb_s if gb_s is not None and copy_gb_s else None,
            "registers": m.get(REGISTERS), "occupancy_pct": m.get(OCCUPANCY), "instructions": m.get(INSTRUCTIONS),
            "grid": k["grid"], "block": k["block"],
        })
    return rows


def _sum(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def summarize(rows: list[dict], copy_gb_s: float | None) -> dict:
    """Totals over launches: count, time, DRAM MB, effective GB/s and fraction of the copy bandwidth."""
    t = _sum(r["time_us"] for r in rows)
    mb = _sum((r["dram_read_mb"] or 0.0) + (r["dram_write_mb"] or 0.0) for r in rows
              if r["dram_read_mb"] is not None or r["dram_write_mb"] is not None)
    gb_s = mb / t * 1e3 if mb is not None and t else None  # (1e6 B) / (1e-6 s) = 1e12 B/s
    return {"launches": len(rows), "time_us": t, "dram_mb": mb, "dram_gb_s": gb_s,
            "frac_copy_bw": gb_s / copy_gb_s if gb_s is not None and copy_gb_s else None,
            "copy_gb_s": copy_gb_s}


def _occupancy(rows: list[dict]) -> float | None:
    """Achieved occupancy weighted by each launch's time, so that it describes where the time
    went (a short launch at another shape counts little); the plain mean where no launch was timed."""
    occ = [(r["occupancy_pct"], r["time_us"]) for r in rows if r["occupancy_pct"] is not None]
    timed = [(o, t) for o, t in occ if t]
    if timed:
        return sum(o * t for o, t in timed) / sum(t for _, t in timed)
    return sum(o for o, _ in occ) / len(occ) if occ else None


def by_kernel(rows: list[dict], copy_gb_s: float | None) -> list[dict]:
    """Launches grouped by kernel name, longest total time first. Registers are the most any
    launch used: one name covers several specializations (autotune configs, constexprs), and the
    largest is the one that limits residency."""
    groups: "OrderedDict[str, list]" = OrderedDict()
    for r in rows:
        groups.setdefault(r["kernel"], []).append(r)
    out = []
    for name, rs in groups.items():
        s = summarize(rs, copy_gb_s)
        regs = [r["registers"] for r in rs if r["registers"] is not None]
        out.append({"kernel": name, **s, "registers": max(regs) if regs else None, "occupancy_pct": _occupancy(rs)})
    return sorted(out, key=lambda g: -(g["time_us"] or 0.0))


def fmt(v, spec: str = ".1f") -> str:
    """A number for a table: "—" for a missing value."""
    return "—" if v is None else format(v, spec)


def markdown(groups: list[dict], total: dict, title: str, top: int = 15) -> str:
    """The short table: the ``top`` kernels by total time, then the whole forward's totals."""
    lines = [f"**{title}**: {total['launches']} launches, {fmt(total['time_us'], ',.1f')} us of kernel time, "
             f"{fmt(total['dram_mb'], ',.1f')} MB DRAM traffic, {fmt(total['dram_gb_s'], ',.0f')} GB/s = "
             f"{fmt(total['frac_copy_bw'], '.2f')} of the copy bandwidth ({fmt(total['copy_gb_s'], ',.0f')} GB/s)", "",
             "| kernel | launches | time us | share | DRAM MB | DRAM GB/s | frac of copy BW | regs/thread (max) "
             "| occupancy % (time-weighted) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups[:top]:
        share = g["time_us"] / total["time_us"] if g["time_us"] is not None and total["time_us"] else None
        lines.append(f"| `{g['kernel']}` | {g['launches']} | {fmt(g['time_us'], ',.1f')} | {fmt(share and share * 100, '.1f')}% | "
                     f"{fmt(g['dram_mb'], ',.2f')} | {fmt(g['dram_gb_s'], ',.0f')} | {fmt(g['frac_copy_bw'], '.2f')} | "
                     f"{fmt(g['registers'], '.0f')} | {fmt(g['occupancy_pct'], '.1f')} |")
    if len(groups) > top:
        lines.append(f"| ({len(groups) - top} more kernels) |||||||||")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("index", "id", "kernel", "time_us", "dram_read_mb", "dram_write_mb", "dram_gb_s", "frac_copy_bw",
              "registers", "occupancy_pct", "instructions", "grid", "block", "full_name")


def write_csv(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def table(text: str, copy_gb_s: float | None, title: str) -> dict:
    """Everything the report needs from one ncu CSV: per-launch rows, per-kernel groups, totals, markdown."""
    rows = launch_rows(read_launches(text), copy_gb_s)
    groups = by_kernel(rows, copy_gb_s)
    total = summarize(rows, copy_gb_s)
    return {"rows": rows, "kernels": groups, "total": total, "markdown": markdown(groups, total, title)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv_files", nargs="+", type=Path)
    p.add_argument("--bandwidth-gb-s", type=float, default=None, help="measured copy bandwidth (read + write)")
    p.add_argument("--csv", type=Path, default=None, help="also write the per-launch rows of the first file here")
    a = p.parse_args(argv)
    for i, path in enumerate(a.csv_files):
        t = table(path.read_text(errors="replace"), a.bandwidth_gb_s, path.name)
        print(t["markdown"])
        if a.csv and i == 0:
            write_csv(t["rows"], a.csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
