"""What a run keeps in OUT: ``OutFiles`` (inherited by ``check.Check``; it uses the run's
state that ``Check.__init__`` sets up) refreshes the whole file set after every step, keeps
each file under the cap, and builds ``report.json``; ``format_report`` renders ``report.md``."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import gpu_cache
import ncu_table

from .outfiles import (ALL_FILE_NAMES, BENCH_FILES, BENCH_STAGES, CUT_SHORT, PACK_DEADLINE_S, RESERVE_S, SAFE_BYTES,
                       dump_json, load_json, now_iso, pack_dir, stage_files, write_atomic)


class OutFiles:
    """The file-writing half of ``Check``."""

    # -------------------------------------------------------------- files
    def write_files(self, final: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ALL_FILE_NAMES:  # files of another stage from an earlier run into this OUT
            if name not in stage_files(self.stage) and (self.out / name).is_file():
                (self.out / name).unlink()
        for stale in self.out.glob("*.tmp"):  # a write an earlier run was stopped in (.name.tmp too)
            stale.unlink()
        self.env_info["finished"] = now_iso() if final else None
        dump_json(self.out / "env.json", self.env_info)
        if self.stage in BENCH_STAGES:
            self.write_bench_files()
        if final:
            self.write_report()  # the final status first: the pack below is the slowest write
            self.pack_cache()
        elif not (self.out / "gpu-cache.tar.gz").exists():
            self.place_archive(self.work / "empty-cache", {"stage": self.stage,
                                                           "note": "placeholder: the stage has not finished"})
        self.file_notes = [n for n in self.file_notes if not n.startswith("logs.tar.gz")]
        self.file_notes += pack_dir(self.logs, self.out / "logs.tar.gz")
        for name in stage_files(self.stage):
            if name not in ("report.md", "report.json"):
                self.fit(self.out / name)
        self.write_report()

    def write_report(self) -> None:
        report = self.report()
        dump_json(self.out / "report.json", report)
        write_atomic(self.out / "report.md", format_report(report))
        self.fit(self.out / "report.json")
        self.fit(self.out / "report.md")

    def fit(self, path: Path) -> None:
        """Keep a file under the cap: archives are rebuilt smaller by their writers, text is cut."""
        if not path.exists() or path.stat().st_size < SAFE_BYTES:
            return
        size = path.stat().st_size
        data = load_json(path) if path.name == "pytest-benchmark.json" else None
        if data and data.get("benchmarks"):  # first drop the raw per-round times, keep the stats
            for b in data["benchmarks"]:
                (b.get("stats") or {}).pop("data", None)
            dump_json(path, {**data, "gpu_check_note": "per-round times left out to stay under 16 MiB"})
            if path.stat().st_size < SAFE_BYTES:
                self.file_notes.append(f"{path.name}: {size:,} B was over the cap; per-round times left out")
                return
        if path.suffix == ".json":
            dump_json(path, {"truncated": True, "original_bytes": size,
                             "note": "over the 16 MiB cap of a returned file; the full file was not kept"})
        elif path.name.endswith(".tar.gz"):
            self.place_archive(self.work / "empty-cache", {"note": f"{size:,} B archive over the cap"}, name=path.name)
        else:
            data = path.read_bytes()
            write_atomic(path, data[: SAFE_BYTES - 4096] + b"\n\n[gpu-check: cut here to stay under 16 MiB]\n")
        self.file_notes.append(f"{path.name}: {size:,} B was over the cap and was cut")

    def write_bench_files(self) -> None:
        merged = self.work / "merged"
        for name in BENCH_FILES:
            src = merged / name
            if src.exists():
                shutil.copyfile(src, self.out / name)
            elif name.endswith(".json"):
                dump_json(self.out / name, {"note": "no benchmark session has finished in this run; see report.md",
                                            "benchmarks" if name == "pytest-benchmark.json" else "results": []})
            else:
                write_atomic(self.out / name, "# fastmbconv benchmark summary\n\nNo benchmark session has "
                             "finished in this run; see report.md.\n")

    def pack_cache(self) -> None:
        manifest = {"stage": self.stage, "dry": self.dry, "gpu_name": self.env_info.get("nvidia_smi_name"),
                    "torch": self.env_info.get("torch"), "triton": self.env_info.get("triton"),
                    "commit": (self.env_info.get("git") or {}).get("commit")}
        t0 = time.monotonic()
        try:
            info = self.place_archive(self.cache_root, manifest, deadline_s=PACK_DEADLINE_S,
                                      picks_only=os.environ.get("GPU_CHECK_PACK") == "picks")
            info["picks"] = gpu_cache.autotune_picks(self.cache_root)[:200]
        except Exception as exc:  # never lose the other files over the cache
            self.notes.append(f"packing the kernel cache failed: {type(exc).__name__}: {exc}")
            info = self.place_archive(self.work / "empty-cache", {**manifest, "note": "packing failed; see report.md"})
        info["seconds"] = round(time.monotonic() - t0, 1)
        self.cache["packed"] = info

    def place_archive(self, root: Path, manifest: dict, deadline_s: float | None = None,
                      name: str = "gpu-cache.tar.gz", picks_only: bool = False) -> dict:
        """Pack ``root`` (see ``gpu_cache.pack``) in the work folder, then move the archive into
        OUT as ``name``: OUT never holds a half-written archive or a ninth name."""
        packed = self.work / name
        info = gpu_cache.pack(root, packed, SAFE_BYTES, manifest, deadline_s=deadline_s, picks_only=picks_only)
        try:
            os.replace(packed, self.out / name)  # atomic where both share a filesystem
        except OSError:
            shutil.copyfile(packed, self.out / name)
        return {**info, "archive": str(self.out / name)}

    # -------------------------------------------------------------- report
    def report(self) -> dict:
        bad = [r for r in self.results if r.status in ("failed",)]
        incomplete = [r for r in self.results if r.status.startswith("skipped (budget") or r.status in CUT_SHORT]
        status = "FAILED" if bad or self.crashed else ("INCOMPLETE" if incomplete else "OK")
        finished = bool(self.env_info.get("finished"))
        planned = [s.name for s in self.steps]
        reached = {r.name for r in self.results}
        return {
            "stage": self.stage, "dry": self.dry, "status": status if finished else f"RUNNING ({status} so far)",
            "started": self.started, "finished": self.env_info.get("finished"),
            "budget_s": self.budget_s, "elapsed_s": round(self.elapsed(), 1), "reserve_s": RESERVE_S,
            "device": self.env_info.get("gpu_name") or ("CPU (dry run)" if self.dry else None),
            "commit": (self.env_info.get("git") or {}).get("commit"),
            "steps": [r.__dict__ for r in self.results],
            "not_reached": [n for n in planned if n not in reached],
            "cache": self.cache, "notes": self.notes, "file_notes": self.file_notes,
            "files": {p.name: p.stat().st_size for p in sorted(self.out.iterdir()) if p.is_file()},
            "warm": load_json(self.logs / "warm.json"),
            "bandwidth": load_json(self.logs / "bandwidth.json"),
            "profile": getattr(self, "profile_data", None),
            "benchmarks": load_json(self.work / "merged" / "targets.json"),
            "crash": self.crashed,
        }


def format_report(r: dict) -> str:
    head = f"# gpu-check {r['stage']}{' (dry run: CPU, no GPU numbers)' if r['dry'] else ''}: {r['status']}"
    out = [head, "",
           f"- device: {r['device'] or 'unknown'}; commit: {r['commit'] or 'unknown'}",
           f"- started {r['started']}, finished {r['finished'] or '(not yet)'}; {r['elapsed_s']} s of a "
           f"{r['budget_s']:.0f} s budget ({r['reserve_s']:.0f} s kept back for writing the files)", ""]
    out += ["## Steps", "", "| step | status | seconds | details |", "|---|---|---:|---|"]
    for s in r["steps"]:
        det = []
        t = s["details"].get("tests") if isinstance(s["details"], dict) else None
        if t:
            det.append(f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped")
        for key, label in (("cache_new_kernels", "kernels compiled"), ("cache_new_autotune_results", "shapes autotuned")):
            if s["details"].get(key):
                det.append(f"+{s['details'][key]} {label}")
        for tool in ("memcheck", "racecheck"):
            if s["details"].get(f"{tool}_errors") is not None:
                det.append(f"{s['details'][f'{tool}_errors']} {tool} errors")
        if s["note"]:
            det.append(s["note"])
        out.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {'; '.join(det)} |")
    if r["not_reached"]:
        out += ["", "Not reached (the run stopped before them): " + ", ".join(r["not_reached"])]
    skipped = [s for s in r["steps"] if s["status"].startswith("skipped") or s["status"] in CUT_SHORT]
    if skipped:
        out += ["", "## Skipped or cut short", ""] + [f"- {s['name']}: {s['status']}{' - ' + s['note'] if s['note'] else ''}"
                                                      for s in skipped]
    recorded = [s for s in r["steps"] if s["would_run"]]
    if recorded:
        out += ["", "## Dry run: commands printed, not run", ""] + [f"- {s['name']}: `{s['would_run']}`" for s in recorded]
    failures = [(s["name"], f) for s in r["steps"] for f in ((s["details"].get("tests") or {}).get("failed") or [])]
    if failures:
        out += ["", "## Test failures", ""] + [f"- [{n}] `{f['test']}`: {f['message']}" for n, f in failures[:40]]
    if r.get("warm"):
        out += ["", "## Warm-up: fused B0, first call (compile + autotune, or cache hits) vs second", "",
                "| batch | res | dtype | first call s | second call s | compile+tune s | rel err vs reference | ok |",
                "|---:|---:|---|---:|---:|---:|---:|---|"]
        for w in r["warm"].get("rows", []):
            out.append(f"| {w['batch']} | {w['resolution']} | {w['dtype']} | {w['first_call_s']:.2f} | "
                       f"{w['second_call_s']:.3f} | {w['compile_and_tune_s']:.2f} | {w['rel_err_vs_reference']:.2e} | {w['ok']} |")
    if r.get("benchmarks"):
        out += ["", "## Benchmarks: targets over this stage's sessions", "", r["benchmarks"].get("markdown", "")]
    prof = r.get("profile")
    if prof:
        out += ["", f"## Kernel profile (ncu), copy bandwidth {ncu_table.fmt(prof['copy_bandwidth_gb_s'], ',.0f')} GB/s", ""]
        for p, v in prof["providers"].items():
            out += [v.get("markdown") or f"**{p}**: {v.get('note')}", ""]
    elif r.get("bandwidth"):
        out += ["", f"Copy bandwidth: {r['bandwidth']['gb_s']:.1f} GB/s ({r['bandwidth']['kind']})"]
    cache = r.get("cache") or {}
    out += ["", "## Kernel cache", ""]
    rest = cache.get("restored")
    if rest:
        out.append(f"- restored from `{rest.get('archive')}` (made by stage {rest.get('made_by_stage') or '?'} on "
                   f"{rest.get('made_on') or 'no GPU'}, {rest.get('created')}): {rest.get('inventory')}; "
                   + "; ".join(rest.get("notes") or []))
    else:
        out.append("- nothing restored (no CACHE_FROM)")
    packed = cache.get("packed")
    if packed:
        inv = packed["inventory"]
        out.append(f"- packed into gpu-cache.tar.gz: {packed['bytes'] / 2**20:.2f} MiB, {packed['contents']}; "
                   f"{inv['kernels']} compiled kernels, {inv['autotune_results']} autotune results, "
                   f"{inv['inductor_files']} inductor files ({packed['seconds']} s)"
                   + ("; " + "; ".join(packed["notes"]) if packed["notes"] else ""))
        picks = packed.get("picks") or []
        if picks:
            out += ["", "| autotuned kernel | key | best config | best ms | configs tried |", "|---|---|---|---:|---:|"]
            out += [f"| {p['kernel']} | `{p['key']}` | `{p['config']}` | {ncu_table.fmt(p['best_ms'], '.4f')} | {p['configs_tried']} |"
                    for p in picks[:60]]
    if r["notes"] or r["file_notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"] + r["file_notes"]]
    if r.get("crash"):
        out += ["", "## gpu-check crashed", "", "```", r["crash"], "```"]
    out += ["", "## Files", "", "| file | bytes |", "|---|---:|"] + [f"| {k} | {v:,} |" for k, v in r["files"].items()]
    return "\n".join(out) + "\n"
