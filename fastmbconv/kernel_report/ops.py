"""Per-op cost hints, keyed by ``LaunchRecord.op``: the only kernel-specific part of the report.

A hint function receives every argument of one launch by name (tensors as the recorded meta
tensors, plus the constexprs and the config's block sizes) and returns :class:`Hints`:

- ``outputs``: output elements the launch computes (the denominator of instructions per output);
- ``loops``: trip counts of the kernel's *runtime* loops in source order, per entry of the loop
  (``tl.static_range`` loops are unrolled by the compiler and are not listed);
- ``tensor_flops``: useful tensor-core FLOPs (the model uses the FLOPs of the HGMMA/HMMA
  instructions it finds in the SASS, tile padding included; this is for comparison);
- ``weights``: argument names that hold weights (read once per launch, shown separately);
- ``ksize``: the depthwise kernel size, where there is one.

An op without a hint, or whose hint fails (new argument names during a rewrite), is still
reported from its SASS and tensors, marked ``hints: "none"`` or ``"failed: ..."``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Hints:
    outputs: int
    loops: list = field(default_factory=list)
    tensor_flops: int = 0
    weights: tuple = ()
    ksize: Optional[int] = None


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def dwconv_bn_act(a: dict) -> Hints:
    # kxk taps are tl.static_range: no runtime loop
    return Hints(outputs=a["out_ptr"].numel(), loops=[], weights=("w_ptr", "scale_ptr", "shift_ptr"),
                 ksize=int(a["KSIZE"]))


def pointwise_gated(a: dict) -> Hints:
    n, hw = a["x_ptr"].shape[0], a["H"] * a["W"]
    k, o = a["K"], a["O"]
    return Hints(outputs=n * hw * o, loops=[cdiv(k, a["BLOCK_K"])], tensor_flops=2 * n * hw * k * o,
                 weights=("w_ptr", "bias_ptr"))


def squeeze_excite_gate(a: dict) -> Hints:
    # two loops over channel blocks: the reduce FC, then the expand FC
    c_blocks = cdiv(a["C"], a["BLOCK_C"])
    return Hints(outputs=a["gate_ptr"].numel(), loops=[c_blocks, c_blocks],
                 weights=("wr_ptr", "br_ptr", "we_ptr", "be_ptr"))


HINTS: dict[str, Callable[[dict], Hints]] = {
    "dwconv_bn_act": dwconv_bn_act,
    "pointwise_gated": pointwise_gated,
    "squeeze_excite_gate": squeeze_excite_gate,
}


def hints_for(op: str, args: dict) -> tuple[Optional[Hints], str]:
    """(hints or None, status: "ok", "none" or "failed: <why>")."""
    fn = HINTS.get(op)
    if fn is None:
        return None, "none"
    try:
        return fn(args), "ok"
    except Exception as exc:  # a kernel mid-rewrite: report without hints rather than crash
        return None, f"failed: {type(exc).__name__}: {exc}"
