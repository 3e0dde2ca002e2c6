"""Static sm_90 kernel report: a CPU-only speed signal for the fused forward's kernels.

``python -m fastmbconv.kernel_report --model efficientnet_b0 --batch 256 --dtype fp16
[--json PATH] [--md PATH]`` runs one fused forward on ``meta`` tensors, records every launch
(Triton kernels through ``record_launches``, torch kernels through a dispatch mode), compiles
the exact specialisation each Triton launch would run for sm_90 ahead of time (every config of
an autotuned kernel), reads its SASS and resource usage, and models its time.

Definitions
-----------
- dynamic instructions per warp: straight-line SASS instructions once, plus each loop body
  times its passes (``ceil(trip count / unroll factor)`` per pass of the enclosing loop); trip
  counts come from per-op hints (:mod:`.ops`), loops from backward branches (:mod:`.sass`).
  Forward branches are ignored: code a warp may skip is counted (an upper bound).
- warp_instructions (total) = programs x num_warps x dynamic instructions per warp.
- instructions per output = thread-level dynamic SASS instructions per output element
  = warp_instructions x 32 / output elements (the scale of FIELD_NOTES' ~72 / ~189 for k=3).
  ``per_output_by_class`` splits it by instruction class on the same scale.
- hbm_bytes: every distinct tensor argument (views of one storage merged) read or written once,
  weights once: compulsory traffic, no halo re-reads, no L2 effects.
- tensor_flops: from the HGMMA/HMMA instructions in the SASS (tile padding included).
- modelled time t = max(hbm_bytes / 3.0e12, warp_instructions / (132 x 4 x 1.755e9),
  tensor_flops / 700e12, 32 x MUFU warp instructions / (132 x 16 x 1.755e9)) + 2 us (the
  last: the special-function pipe, 16 lanes per SM and cycle), the max scaled by 8 / resident
  warps where registers or shared memory let an SM hold fewer than 8 of the kernel's warps
  (``resident_programs_per_sm``; a program needing more shared memory than a program may have
  cannot launch and is reported as failed); torch-side kernels: hbm_bytes / 3.0e12 + 2 us.
- An autotuned launch reports the config the model likes best (lowest modelled time); all
  configs are listed under ``configs`` and the ``FASTMBCONV_AUTOTUNE=0`` config under
  ``fixed_config``.
- totals: launches (Triton and torch, fills, casts and copies included), modelled_ms, the
  layer-fused floor from :func:`fastmbconv.roofline.roofline` at 3.0e12 B/s, their ratio, the
  modelled time's parts each summed over the launches (memory_ms, issue_ms, tensor_ms, sfu_ms,
  launch_overhead_ms: with perfect overlap the forward would still take the largest part plus
  the overhead), the largest spill over every config compiled (the stack frame of code that
  loads or stores local memory; a frame nothing touches is flagged, not counted).

Importing this package does not import triton; :func:`build_report` does, and refuses to run
with ``TRITON_INTERPRET=1`` (the CLI re-runs itself without it).
"""
from __future__ import annotations


def build_report(*args, **kwargs):
    from .build import build_report as _build

    return _build(*args, **kwargs)


__all__ = ["build_report"]
