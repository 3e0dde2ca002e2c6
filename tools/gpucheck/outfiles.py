"""The files a stage promises in OUT: their names and limits, the budget kept back for
writing them, JSON and atomic writes, the log archive, and the check of a finished OUT folder."""
from __future__ import annotations

import datetime
import json
import os
import tarfile
from pathlib import Path

MAX_FILES = 8
MAX_BYTES = 16 * 2**20  # each file must stay under this
SAFE_BYTES = MAX_BYTES - 512 * 2**10  # what we aim for
# The final write packs the kernel cache with stop signals ignored: after this many seconds it
# tries no further size tier but the smallest (the autotune picks alone).
PACK_DEADLINE_S = 30
LOG_KEEP_HEAD, LOG_KEEP_TAIL = 256 * 2**10, 3 * 2**20  # a longer log is cut in the middle
COMMON_FILES = ("env.json", "report.md", "report.json", "logs.tar.gz", "gpu-cache.tar.gz")
BENCH_FILES = ("pytest-benchmark.json", "summary.json", "summary.md")
STAGES = ("first", "verify", "speed", "profile", "all")
BENCH_STAGES = ("first", "speed", "all")  # the stages that run benchmarks and return their files
ALL_FILE_NAMES = COMMON_FILES + BENCH_FILES


def stage_files(stage: str) -> tuple[str, ...]:
    return COMMON_FILES + (BENCH_FILES if stage in BENCH_STAGES else ())


# statuses of a step that did not do all it was asked: the stage is INCOMPLETE
CUT_SHORT = ("timed out", "stopped (time)")
DEFAULT_BUDGET_S = 540.0
RESERVE_S = 40.0  # kept back for interrupting a step (up to 25 s) and writing the files


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def dump_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def load_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default



def _shrink_text(data: bytes) -> bytes:
    if len(data) <= LOG_KEEP_HEAD + LOG_KEEP_TAIL:
        return data
    cut = len(data) - LOG_KEEP_HEAD - LOG_KEEP_TAIL
    return data[:LOG_KEEP_HEAD] + f"\n\n[... gpu-check cut {cut:,} bytes here ...]\n\n".encode() + data[-LOG_KEEP_TAIL:]


def pack_dir(src: Path, archive: Path, cap: int = SAFE_BYTES) -> list[str]:
    """tar.gz of ``src`` under ``cap``: long logs keep their head and tail; if still too big, the
    largest members are left out. Returns notes on what was cut or left out."""
    import io

    notes: list[str] = []
    files = sorted((p for p in Path(src).rglob("*") if p.is_file()), key=lambda p: p.as_posix()) if Path(src).is_dir() else []
    dropped: set[Path] = set()
    while True:
        tmp = archive.with_name(f".{archive.name}.tmp")
        with tarfile.open(tmp, "w:gz") as tf:
            for p in files:
                if p in dropped:
                    continue
                data = p.read_bytes()
                if len(data) > LOG_KEEP_HEAD + LOG_KEEP_TAIL and p.suffix in (".log", ".txt", ".csv", ".xml"):
                    data = _shrink_text(data)
                info = tarfile.TarInfo(p.relative_to(src).as_posix())
                info.size, info.mtime = len(data), int(p.stat().st_mtime)
                tf.addfile(info, io.BytesIO(data))
            if dropped:
                note = "left out to stay under the size cap: " + ", ".join(
                    f"{p.relative_to(src)} ({p.stat().st_size:,} B)" for p in sorted(dropped))
                data = note.encode()
                info = tarfile.TarInfo("LEFT_OUT.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        os.replace(tmp, archive)
        if archive.stat().st_size < cap or len(dropped) == len(files):
            break
        biggest = max((p for p in files if p not in dropped), key=lambda p: p.stat().st_size)
        dropped.add(biggest)
    if dropped:
        notes.append(f"{archive.name}: left out {len(dropped)} file(s) to stay under the cap (see LEFT_OUT.txt)")
    return notes



def check_out(out: Path, stage: str) -> list[str]:
    """Problems with an OUT folder (empty list: fine): the stage's exact file set, no folders,
    at most 8 files, each under 16 MiB, JSON that parses, archives that open."""
    out = Path(out)
    if not out.is_dir():
        return [f"{out} is not a folder"]
    problems = []
    entries = sorted(out.iterdir())
    names = {p.name for p in entries}
    expected = set(stage_files(stage))
    if names - expected:
        problems.append(f"unexpected entries: {sorted(names - expected)}")
    if expected - names:
        problems.append(f"missing files: {sorted(expected - names)}")
    if len(entries) > MAX_FILES:
        problems.append(f"{len(entries)} entries, more than {MAX_FILES}")
    for p in entries:
        if not p.is_file():
            problems.append(f"{p.name} is not a plain file")
            continue
        if p.stat().st_size >= MAX_BYTES:
            problems.append(f"{p.name} is {p.stat().st_size:,} B, not under 16 MiB")
        if p.suffix == ".json" and load_json(p) is None:
            problems.append(f"{p.name} is not valid JSON")
        if p.name.endswith(".tar.gz"):
            try:
                with tarfile.open(p) as tf:
                    tf.getmembers()
            except (tarfile.TarError, OSError, EOFError) as exc:  # EOFError: a gzip cut short
                problems.append(f"{p.name} does not open: {exc}")
    report = load_json(out / "report.json") or {}
    if report and report.get("stage") != stage:
        problems.append(f"report.json is of stage {report.get('stage')!r}, not {stage!r}")
    return problems

