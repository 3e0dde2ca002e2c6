"""The kernel warm-up cache that one GPU-check stage hands to the next (pure Python, no torch).

Every GPU loan starts on a bare machine, and the first forward compiles each Triton
specialisation (about a second each) and autotunes each shape key. Three caches, all under one
folder of the repository (``build/gpu-cache/``, ignored by git), keep that work:

* ``triton/`` (``TRITON_CACHE_DIR``): every compiled kernel, and, with
  ``TRITON_CACHE_AUTOTUNING=1`` (triton >= 3.4, so the GPU machines' 3.6 too), every autotune
  result as ``<kernel>.autotune.json``, keyed by triton's own hash, the GPU target, the kernel
  source, the tuning key and the config list. The launchers need no change: the autotuner reads
  the file back instead of benchmarking, and a changed kernel or config list simply misses.
* ``inductor/`` (``TORCHINDUCTOR_CACHE_DIR``): torch.compile's FX-graph and autotune caches and
  (in the max-autotune step, which points ``TRITON_CACHE_DIR`` at ``inductor/triton``) the
  kernels inductor compiled, kept apart so they cannot crowd out ours.

A stage packs the folder into ``OUT/gpu-cache.tar.gz`` (under the per-file cap: IR text and then
the inductor part are left out first, and the archive says so); the next stage restores it with
``CACHE_FROM=<archive>``. Triton's group files (``__grp__*.json``) store absolute paths, so a
restore points them at the folder they now live in; autotune picks made on a different GPU
model are dropped (compiled kernels stay: they are keyed by the target, and simply miss).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

MANIFEST = "gpu-cache-manifest.json"
IR_SUFFIXES = (".ttir", ".ttgir", ".llir", ".ptx", ".source", ".amdgcn")
AUTOTUNE_SUFFIX = ".autotune.json"


def env_for(root: Path) -> dict:
    """Environment that points triton and inductor at the cache under ``root``."""
    root = Path(root)
    return {"TRITON_CACHE_DIR": str(root / "triton"), "TRITON_CACHE_AUTOTUNING": "1",
            "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor")}


def _files(root: Path, sub: str = ""):
    base = Path(root) / sub if sub else Path(root)
    if not base.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("tmp.pid_"))
        for name in sorted(filenames):
            if name != "lock":
                yield Path(dirpath) / name


def inventory(root: Path) -> dict:
    """Counts and sizes: compiled Triton kernels (group files), autotune results, inductor files."""
    root = Path(root)
    triton = list(_files(root, "triton"))
    inductor = list(_files(root, "inductor"))
    return {
        "kernels": sum(p.name.startswith("__grp__") for p in triton),
        "autotune_results": sum(p.name.endswith(AUTOTUNE_SUFFIX) for p in triton),
        "triton_bytes": sum(p.stat().st_size for p in triton),
        "inductor_files": len(inductor),
        "inductor_bytes": sum(p.stat().st_size for p in inductor),
    }


def autotune_picks(root: Path) -> list[dict]:
    """Each cached autotune result: kernel, tuning key, best config and its median time (ms)."""
    picks = []
    for p in _files(root, "triton"):
        if not p.name.endswith(AUTOTUNE_SUFFIX):
            continue
        try:
            data = json.loads(p.read_text())
            timings = [(cfg, t[0] if isinstance(t, list) else t) for cfg, t in data["configs_timings"]]
            cfg, best = min(timings, key=lambda ct: ct[1])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        picks.append({"kernel": p.name[: -len(AUTOTUNE_SUFFIX)], "key": data.get("key"),
                      "config": {**cfg.get("kwargs", {}), "num_warps": cfg.get("num_warps"),
                                 "num_stages": cfg.get("num_stages")},
                      "best_ms": best, "configs_tried": len(timings)})
    return sorted(picks, key=lambda d: (d["kernel"], str(d["key"])))


def _pack_once(root: Path, archive: Path, manifest: dict, keep) -> int:
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:  # 3x gzip -9's speed, 5% larger
        data = json.dumps(manifest, indent=2, default=str).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime = len(data), int(time.time())
        tf.addfile(info, io.BytesIO(data))
        for p in _files(root):
            rel = p.relative_to(root)
            if rel.as_posix() != MANIFEST and keep(rel):
                tf.add(p, arcname=rel.as_posix(), recursive=False)
    os.replace(tmp, archive)
    return archive.stat().st_size


# A tier whose files add up to more than this many times the cap is not compressed at all: the
# H200's caches packed about 6.3:1 (401 MiB of Triton files into 64 MiB), so it could not fit, and
# each try cost seconds of device time (three tiers: 35 s) with stop signals ignored.
RAW_OVER_CAP = 8


def pack(root: Path, archive: Path, cap_bytes: int, manifest: dict | None = None,
         deadline_s: float | None = None, picks_only: bool = False) -> dict:
    """Write ``archive`` from ``root`` under ``cap_bytes``, dropping the least useful parts first:
    everything; without inductor; without IR text (cubins, metadata and picks stay, which is all
    a cache hit needs); the autotune picks alone. Past ``deadline_s`` seconds, or with
    ``picks_only``, only that last tier is tried; nor is any tier whose raw size is past
    ``RAW_OVER_CAP`` times the cap. Returns what went in and what was left out."""
    root, archive = Path(root), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    inv = inventory(root)
    manifest = {**(manifest or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "root": str(root), "inventory": inv}
    is_inductor = lambda rel: rel.parts[:1] == ("inductor",)  # noqa: E731
    tiers = [
        ("everything", lambda rel: True),
        ("without the inductor cache", lambda rel: not is_inductor(rel)),
        ("without inductor and IR text (cubins + metadata + autotune picks)",
         lambda rel: not is_inductor(rel) and rel.suffix not in IR_SUFFIXES),
        ("autotune picks only", lambda rel: rel.name.endswith(AUTOTUNE_SUFFIX) and not is_inductor(rel)),
    ]
    if picks_only:
        tiers = tiers[-1:]
    notes = []
    size, tier, tried = 0, tiers[-1][0], []
    files = [p.relative_to(root) for p in _files(root)]
    t0 = time.monotonic()
    for i, (tier, keep) in enumerate(tiers):
        last = i == len(tiers) - 1
        if 0 < i and not last and deadline_s is not None and time.monotonic() - t0 > deadline_s:
            notes.append(f"{tier}: not tried, past the pack's {deadline_s:g} s")
            continue
        kept = [rel for rel in files if keep(rel)]
        if kept in tried:  # the same files as a tier already over the cap (no inductor cache, say)
            continue
        raw = sum((root / rel).stat().st_size for rel in kept)
        if not last and raw > RAW_OVER_CAP * cap_bytes:
            notes.append(f"{tier}: not tried, {raw / 2**20:.1f} MiB before compression")
            continue
        tried.append(kept)
        size = _pack_once(root, archive, {**manifest, "contents": tier}, keep)
        if size < cap_bytes:
            break
        notes.append(f"{tier}: {size / 2**20:.1f} MiB, over the {cap_bytes / 2**20:.1f} MiB cap")
    if size >= cap_bytes:
        size = _pack_once(root, archive, {**manifest, "contents": "manifest only (everything was over the cap)"},
                          lambda rel: False)
        tier = "manifest only"
    return {"archive": str(archive), "bytes": size, "contents": tier, "inventory": inv, "notes": notes}


def _safe_members(tf: tarfile.TarFile):
    for m in tf.getmembers():
        p = Path(m.name)
        if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"unsafe member in cache archive: {m.name!r}")
        yield m


def rebase_groups(root: Path) -> int:
    """Point every Triton group file's children at the folder the group file is in (triton
    writes a kernel's files into one folder, and records their absolute paths)."""
    n = 0
    for p in _files(root):
        if not (p.name.startswith("__grp__") and p.suffix == ".json"):
            continue
        try:
            data = json.loads(p.read_text())
            children = data["child_paths"]
        except (OSError, ValueError, KeyError):
            continue
        fixed = {k: str(p.parent / Path(v).name) for k, v in children.items()}
        if fixed != children:
            p.write_text(json.dumps({**data, "child_paths": fixed}))
            n += 1
    return n


def restore(archive: Path, root: Path, gpu_name: str | None = None) -> dict:
    """Unpack ``archive`` into ``root`` (merging with what is there), fix the group files' paths,
    and drop autotune picks that were made on another GPU model."""
    archive, root = Path(archive), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp, tarfile.open(archive) as tf:
        members = list(_safe_members(tf))
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(tmp, members=members, **kw)
        src = Path(tmp)
        manifest = json.loads((src / MANIFEST).read_text()) if (src / MANIFEST).exists() else {}
        for p in _files(src):
            dst = root / p.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(p), dst)
    notes = []
    rebased = rebase_groups(root)
    if rebased:
        notes.append(f"pointed {rebased} kernel group files at {root}")
    made_on = manifest.get("gpu_name")
    if gpu_name and made_on and made_on != gpu_name:
        dropped = [p for p in _files(root, "triton") if p.name.endswith(AUTOTUNE_SUFFIX)]
        for p in dropped:
            p.unlink()
        notes.append(f"dropped {len(dropped)} autotune picks made on {made_on!r} (this GPU: {gpu_name!r}); "
                     "compiled kernels kept")
    return {"archive": str(archive), "made_on": made_on, "made_by_stage": manifest.get("stage"),
            "created": manifest.get("created"), "contents": manifest.get("contents"),
            "inventory": inventory(root), "notes": notes}
