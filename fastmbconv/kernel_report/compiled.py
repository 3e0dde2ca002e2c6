"""Compile specialisations for sm_90 and read them, with three caches.

- in-process: a dict keyed by :meth:`Variant.key` (JIT source hash, signature, constexprs,
  attributes, options), so a specialisation shared by several layers compiles and is read once;
- on disk, the analysis (registers, stack, shared memory, parsed SASS) as one small JSON per
  compile, keyed by triton's own compile-cache key (triton version, kernel source, backend with
  its ptxas version, options, cache-invalidating env vars) and a hash of this analyser's
  source: a warm run never calls the compiler;
- triton's own compile cache (``TRITON_CACHE_DIR``), for cubins across analyser changes.

Cache misses compile in forked worker processes (one per core by default): triton's compiler
holds the GIL, so threads would not overlap.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from typing import Optional

from .sass import disassemble, parse_sass, ptx_loop_memory_ops, set_unroll
from .specialize import Variant, backend, target

SHARED_LIMIT_BYTES = 227 * 1024  # sm_90 per-block dynamic shared memory limit

_memo: dict = {}
_pending: list = []  # read by forked workers
_analyser_hash: Optional[str] = None


def analyser_hash() -> str:
    """Hash of the code that produces a stored analysis: editing the parser invalidates the
    disk cache by itself (and tests never read results of older code)."""
    global _analyser_hash
    if _analyser_hash is None:
        h = hashlib.sha256()
        for name in ("sass.py", "compiled.py"):
            with open(os.path.join(os.path.dirname(__file__), name), "rb") as f:
                h.update(f.read())
        _analyser_hash = h.hexdigest()[:16]
    return _analyser_hash


def default_cache_dir() -> str:
    return os.environ.get("FASTMBCONV_REPORT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fastmbconv", "kernel_report")


def disk_key(v: Variant) -> str:
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler import ASTSource
    from triton.runtime.cache import get_cache_key

    src = ASTSource(v.jit, v.signature, v.constexprs, v.attrs)
    key = get_cache_key(src, backend(), v.options, get_cache_invalidating_env_vars())
    return hashlib.sha256(f"{analyser_hash()}-{key}".encode()).hexdigest()


def compile_and_read(v: Variant) -> dict:
    """Compile one specialisation for sm_90 and read its SASS and resources."""
    import triton
    from triton.compiler import ASTSource

    try:
        k = triton.compile(ASTSource(v.jit, v.signature, v.constexprs, v.attrs), target=target(),
                           options=v.options.__dict__)
        text, res = disassemble(k.asm["cubin"])
        sass = parse_sass(text, getattr(k.metadata, "name", None))
        flags = set_unroll(sass, ptx_loop_memory_ops(k.asm["ptx"]))
    except Exception as exc:  # one bad variant must not sink the report
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    shared = int(getattr(k.metadata, "shared", 0) or 0)
    if shared > SHARED_LIMIT_BYTES:
        flags.append(f"shared memory {shared} B exceeds the sm_90 limit: the launch would fail")
    return {"registers": res["registers"], "stack": res["stack"], "local": res["local"], "shared": shared,
            "static_instructions": len(sass.opcodes), "sass": sass.to_json(), "flags": flags}


def _work(i: int) -> dict:
    return compile_and_read(_pending[i])


def analyse(variants: list[Variant], jobs: Optional[int] = None, cache_dir: Optional[str] = None,
            progress=None) -> dict:
    """Analysis per :meth:`Variant.key` for every variant (compiling only cache misses).
    Returns {key: analysis}; also {"_stats": {...}} with hit/miss counts."""
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    stats = {"variants": len(variants), "memo_hits": 0, "disk_hits": 0, "compiled": 0}
    todo: dict = {}  # in-process key -> (variant, disk key)
    out: dict = {}
    for v in variants:
        key = v.key()
        if key in out or key in todo:
            stats["memo_hits"] += 1
            continue
        if key in _memo:
            out[key] = _memo[key]
            stats["memo_hits"] += 1
            continue
        dk = disk_key(v)
        path = os.path.join(cache_dir, dk + ".json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    out[key] = _memo[key] = json.load(f)
                stats["disk_hits"] += 1
                continue
            except (OSError, ValueError):
                pass  # a torn write: recompile
        todo[key] = (v, path)
    items = list(todo.items())
    results = _run(items, jobs, progress)
    for (key, (v, path)), res in zip(items, results):
        out[key] = _memo[key] = res
        stats["compiled"] += 1
        if "error" not in res:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(res, f)
            os.replace(tmp, path)
    out["_stats"] = stats
    return out


def _run(items, jobs, progress) -> list:
    global _pending
    jobs = max(1, jobs or os.cpu_count() or 1)
    if progress and items:
        progress(f"compiling {len(items)} specialisation(s) for sm_90 on {min(jobs, len(items))} process(es)")
    if jobs == 1 or len(items) < 2:
        return [compile_and_read(v) for _, (v, _) in items]
    _pending = [v for _, (v, _) in items]
    try:
        # fork: workers inherit the JIT functions (and the kernels a test defined) as they are
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(jobs, len(items))) as pool:
            return pool.map(_work, range(len(items)), chunksize=1)
    finally:
        _pending = []
