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
    traffic: dict = field(default_factory=dict)  # argument -> HBM bytes, where not its tensor's size once
    scratch: tuple = ()  # arguments that stay in L2: not HBM traffic
    l2_scratch_bytes: int = 0  # bytes written to and read back from those
    recompute_flops: int = 0  # FLOPs spent again on halo pixels that neighbouring tiles also compute


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def dwconv_bn_act(a: dict) -> Hints:
    # one runtime loop over the kernel's rows; the taps of a row are unrolled
    return Hints(outputs=a["out_ptr"].numel(), loops=[int(a["KSIZE"])], weights=("w_ptr", "scale_ptr", "shift_ptr"),
                 ksize=int(a["KSIZE"]))


def pointwise_gated(a: dict) -> Hints:
    # the K loop (with the pool epilogue each tile lies in one image)
    m, k, o = a["M"], a["K"], a["O"]
    loops = [cdiv(k, a["BLOCK_K"])]
    return Hints(outputs=m * o, loops=loops, tensor_flops=2 * m * k * o, weights=("w_ptr", "bias_ptr"))


def pointwise_pool_finish(a: dict) -> Hints:
    # per image, a loop over its GEMM tiles (gone when there is one, which triton specialises
    # as a constant)
    tiles = int(a["tiles_per_image"])
    return Hints(outputs=a["out_ptr"].numel(), loops=[tiles] if tiles != 1 else [])


def squeeze_excite_gate(a: dict) -> Hints:
    # the reduce FC loops over channel blocks, each adding up the T tile sums (nested; gone when
    # T == 1, which triton specialises as a constant), then this program's share of the gates
    c_blocks = cdiv(a["C"], a["BLOCK_C"])
    gate_blocks = cdiv(a["C"], a["BLOCK_G"])
    tiles = [int(a["T"])] if int(a["T"]) != 1 else []
    return Hints(outputs=a["gate_ptr"].numel(), loops=[c_blocks, *tiles, cdiv(gate_blocks, a["gate_groups"])],
                 weights=("wr_ptr", "br_ptr", "we_ptr", "be_ptr"))


def stem_conv_bn_act(a: dict) -> Hints:
    # one patch-matrix product per tile, no runtime loop
    n, c_out, h, w = a["out_ptr"].shape
    k_rows = a["KSIZE"] ** 2 * a["C_IN"]
    return Hints(outputs=a["out_ptr"].numel(), loops=[], tensor_flops=2 * n * h * w * k_rows * c_out,
                 weights=("w_ptr", "bias_ptr"), ksize=int(a["KSIZE"]))


def expand_dwconv(a: dict) -> Hints:
    # one SASS loop: the persistent loop over work items (the halo chunks, input-channel steps
    # and taps all have constant bounds and are unrolled)
    x, out = a["x_ptr"], a["out_ptr"]
    n, c_in, c = x.shape[0], a["C_IN"], a["C"]
    halo = int(a["HALO"]) // int(a["HALO_PITCH"]) * int(a["HALO_W"])  # the slot's rows have a pitch
    # each program keeps one channel block and walks the batch's tiles
    tiles, c_blocks, programs = int(a["tiles_all"]), int(a["C_BLOCKS"]), a["scratch_ptr"].shape[0]
    items = tiles * c_blocks
    computed = int(a["MAIN_CHUNKS"]) * int(a["CHUNK"]) + int(a["TAIL_A"]) + int(a["TAIL_B"])
    expand_flops = 2 * tiles * computed * c_in * c
    useful = 2 * n * a["H"] * a["W"] * c_in * c
    scratch_item = a["scratch_ptr"].element_size()
    return Hints(outputs=out.numel(), loops=[cdiv(tiles, programs // c_blocks)],
                 tensor_flops=expand_flops, weights=("we_ptr", "be_ptr", "wd_ptr", "scale_ptr", "shift_ptr"),
                 ksize=int(a["KSIZE"]),
                 traffic={"x_ptr": tiles * halo * c_in * x.element_size()},  # each tile's halo from HBM once
                 scratch=("scratch_ptr",),
                 # the halo written once per item and every tap read back (an upper bound: most
                 # tap reads hit L1, the slots being a few KiB per program)
                 l2_scratch_bytes=items * int(a["HALO"]) * int(a["BLOCK_C"]) * scratch_item
                 + out.numel() * a["KSIZE"] ** 2 * scratch_item,
                 recompute_flops=max(0, expand_flops - useful))


HINTS: dict[str, Callable[[dict], Hints]] = {
    "expand_dwconv": expand_dwconv,
    "stem_conv_bn_act": stem_conv_bn_act,
    "dwconv_bn_act": dwconv_bn_act,
    "pointwise_gated": pointwise_gated,
    "pointwise_gated[pool]": pointwise_pool_finish,
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
