"""Read a compiled kernel: SASS instruction classes, loops, and resource usage.

Pure text parsing plus two calls to the CUDA tools bundled in the triton wheel (``nvdisasm``
for SASS, ``cuobjdump --dump-resource-usage`` for registers and the stack frame); nothing here
imports triton at module level, so the parser is testable anywhere.

Loops are found from backward branches (a ``BRA`` to an earlier address). The same is done on
the PTX, loop for loop, to detect unrolling by ptxas: when a SASS loop body holds ``U`` times
the global-memory and tensor-core operations of its PTX loop body, the body is ``U`` source
iterations and runs ``ceil(trips / U)`` times (the remainder copies sit in straight-line code,
which is always counted once). Code after the kernel's terminal self-branch (``BRA`` to itself,
followed by padding and out-of-line subroutines such as a division slow path) is not counted.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

# ---------------------------------------------------------------------- instruction classes
#: (class, regex on the opcode with its modifiers), first match wins. Global memory classes
#: are split by access width below.
CLASSES: list[tuple[str, re.Pattern]] = [(name, re.compile(rx)) for name, rx in [
    ("ffma", r"^FFMA\b"),
    ("fmul", r"^FMUL\b"),
    ("fadd", r"^FADD\b"),
    ("fp32_other", r"^(FMNMX|FSETP|FSEL|FSET|FCHK|FSWZADD)\b"),
    ("half", r"^(HFMA2|HMUL2|HADD2|HMNMX2|HSETP2|HSET2)\b"),
    ("tensor", r"^(HMMA|HGMMA|IMMA|IGMMA|QGMMA|BMMA|BGMMA|DMMA)\b"),
    ("tensor_sync", r"^WARPGROUP\b"),
    ("mufu", r"^MUFU\b"),
    ("ldg", r"^LDG\b"),
    ("stg", r"^STG\b"),
    ("ldgsts", r"^LDGSTS\b"),
    ("tma", r"^(UTMALDG|UTMASTG|UBLKCP|UTMAPF|UTMAREDG)\b"),
    ("atomic", r"^(ATOM|ATOMG|RED|REDG|ATOMS)\b"),
    ("lds", r"^(LDS|LDSM)\b"),
    ("sts", r"^(STS|STSM)\b"),
    ("local", r"^(LDL|STL)\b"),  # local memory: register spills
    ("const", r"^(LDC|ULDC)\b"),
    ("shuffle", r"^SHFL\b"),
    ("convert", r"^(F2F|F2FP|F2I|I2F|I2FP|F2IP|FRND)\b"),
    ("int_addr", r"^U?(IMAD|IADD3|IADD|IMUL|LEA|LOP3|LOP|SHF|SHL|SHR|ISETP|IABS|IMNMX|SEL|SGXT|PRMT|"
                 r"FLO|POPC|BMSK|BREV|VIADD|VIMNMX|VIADDMNMX|IDP|IDE)\b"),
    ("move", r"^U?(MOV|MOV32I|CS2R|S2R|S2UR|R2UR|P2R|R2P|PLOP3|VOTE|VOTEU|UP2UR|MOVM)\b"),
    ("branch", r"^(BRA|BRX|JMP|JMX|CALL|RET|EXIT|BSSY|BSYNC|WARPSYNC|BREAK|YIELD|BPT|KILL)\b"),
    ("barrier", r"^(BAR|MEMBAR|DEPBAR|LDGDEPBAR|SYNCS|ARRIVES|FENCE|ERRBAR|CCTL|CGAERRBAR|ELECT)\b"),
]]


def _memory_like(cls: str) -> bool:
    """Classes whose instructions match one PTX global-memory or tensor-core instruction each."""
    return cls in ("tma", "atomic", "tensor") or cls.startswith(("ldg_", "stg_", "ldgsts_"))


_PTX_MEMORY_LIKE = re.compile(r"\b(ld\.global|st\.global|cp\.async\.(?!commit|wait|mbarrier)|atom\.global|red\.global|"
                              r"wgmma\.mma_async|mma\.sync)")

_INSN = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^(@!?U?P(?:T|\d+))\s+")
_LABEL = re.compile(r"^\s*(\.L_x_\d+|\.L_\w+):")
_TARGET = re.compile(r"`\((\.L_\w+)\)|\b(0x[0-9a-f]+)\b")
_HGMMA = re.compile(r"^HGMMA\.(\d+)x(\d+)x(\d+)")
_HMMA = re.compile(r"^HMMA\.(16)(8)(8|16)\b")


def classify(opcode: str) -> str:
    for name, rx in CLASSES:
        if rx.match(opcode):
            if name in ("ldg", "stg", "ldgsts"):
                return f"{name}_{access_width(opcode)}"
            return name
    return "other"


def access_width(opcode: str) -> int:
    """Bits per thread of a global load/store from its modifiers (``LDG.E.128`` -> 128)."""
    mods = opcode.split(".")[1:]
    for m in mods:
        if m in ("128", "64"):
            return int(m)
        if m in ("U16", "S16"):
            return 16
        if m in ("U8", "S8"):
            return 8
    return 32


def tensor_flops_per_warp_insn(opcode: str) -> float:
    """FLOPs of one warp's issue of a tensor-core instruction. HGMMA is warpgroup-wide
    (4 warps issue it together for one MxNxK product), HMMA is per warp."""
    m = _HGMMA.match(opcode)
    if m:
        a, b, c = map(int, m.groups())
        return 2.0 * a * b * c / 4
    m = _HMMA.match(opcode)
    if m:
        a, b, c = map(int, m.groups())
        return 2.0 * a * b * c
    return 0.0


# ---------------------------------------------------------------------- SASS parsing
@dataclass
class Loop:
    start: int  # index of the first instruction of the body
    end: int  # index of the backward branch
    parent: int | None = None  # index into the loop list of the innermost enclosing loop
    unroll: int = 1  # source iterations per pass through the body (from the PTX comparison)
    classes: dict = field(default_factory=dict)  # instruction classes of the body, nested loops excluded
    remainder_of: int | None = None  # the unrolled loop whose leftover iterations this loop runs

    @property
    def size(self) -> int:
        return sum(self.classes.values())


@dataclass
class Sass:
    """One kernel function's SASS: instructions (opcode with modifiers), loops, classes."""

    opcodes: list[str]
    loops: list[Loop]
    straight: dict  # classes of the instructions outside every loop
    tail: int  # instructions after the terminal self-branch (padding, subroutines): not counted
    tensor_flops: dict  # per region ("straight" or loop index): FLOPs per warp per pass

    @property
    def static_classes(self) -> dict:
        out: dict = {}
        for d in [self.straight] + [lp.classes for lp in self.loops]:
            for k, v in d.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_json(self) -> dict:
        return {"loops": [{"start": lp.start, "end": lp.end, "parent": lp.parent, "unroll": lp.unroll,
                           "classes": lp.classes, "remainder_of": lp.remainder_of} for lp in self.loops],
                "straight": self.straight, "tail": self.tail, "n": len(self.opcodes),
                "tensor_flops": {str(k): v for k, v in self.tensor_flops.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Sass":
        loops = [Loop(x["start"], x["end"], x["parent"], x["unroll"], x["classes"], x.get("remainder_of"))
                 for x in d["loops"]]
        tf = {(k if k == "straight" else int(k)): v for k, v in d["tensor_flops"].items()}
        return cls([""] * d["n"], loops, d["straight"], d["tail"], tf)


def parse_sass(text: str, function: str | None = None) -> Sass:
    """Parse nvdisasm/cuobjdump SASS of one function (the first ``.text.`` section, or
    ``function``'s)."""
    insns: list[tuple[int, str, str]] = []  # (address, predicate, opcode+operands)
    labels: dict[str, int] = {}
    pending: list[str] = []
    in_fn = False
    for line in text.splitlines():
        if ".text." in line and line.lstrip().startswith((".section", ".text.", "//---")):
            name = line.split(".text.", 1)[1].split(",")[0].split()[0].rstrip(":")
            if in_fn and insns:
                break
            in_fn = function is None or name == function
            continue
        if not in_fn:
            continue
        lab = _LABEL.match(line)
        if lab:
            pending.append(lab.group(1))
            continue
        m = _INSN.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        body = m.group(2).strip()
        pm = _PRED.match(body)
        pred = pm.group(1) if pm else ""
        body = body[pm.end():] if pm else body
        for name in pending:
            labels[name] = addr
        pending = []
        insns.append((addr, pred, body))
    if not insns and function is not None:  # a name that does not match the disassembly's
        return parse_sass(text)
    return _analyse(insns, labels)


def _target(operands: str, labels: dict) -> int | None:
    m = _TARGET.search(operands)
    if not m:
        return None
    if m.group(1):
        return labels.get(m.group(1))
    return int(m.group(2), 16)


def _analyse(insns, labels) -> Sass:
    index_of = {addr: i for i, (addr, _, _) in enumerate(insns)}
    opcodes = [body.split()[0] if body else "" for _, _, body in insns]
    # the terminal self-branch: padding and out-of-line subroutines follow it
    end = len(insns)
    for i, (addr, pred, body) in enumerate(insns):
        if opcodes[i].startswith("BRA") and not pred and _target(body, labels) == addr:
            end = i
            break
    spans: dict[int, int] = {}  # body start index -> last backward-branch index
    for i in range(end):
        addr, pred, body = insns[i]
        if not opcodes[i].startswith("BRA"):
            continue
        t = _target(body, labels)
        if t is not None and t <= addr and t in index_of:
            s = index_of[t]
            spans[s] = max(spans.get(s, i), i)
    loops = [Loop(s, e) for s, e in sorted(spans.items())]
    for j, lp in enumerate(loops):  # innermost enclosing loop
        enclosing = [k for k, o in enumerate(loops) if k != j and o.start <= lp.start and lp.end <= o.end]
        lp.parent = max(enclosing, key=lambda k: loops[k].start) if enclosing else None
    straight: dict = {}
    tflops: dict = {}
    for i in range(end):
        owner = None
        for j, lp in enumerate(loops):
            if lp.start <= i <= lp.end and (owner is None or loops[owner].start <= lp.start):
                owner = j
        d = straight if owner is None else loops[owner].classes
        c = classify(opcodes[i])
        d[c] = d.get(c, 0) + 1
        f = tensor_flops_per_warp_insn(opcodes[i])
        if f:
            key = "straight" if owner is None else owner
            tflops[key] = tflops.get(key, 0.0) + f
    return Sass(opcodes[:end], loops, straight, len(insns) - end, tflops)


# ---------------------------------------------------------------------- PTX loops
def ptx_loop_memory_ops(ptx: str) -> list[int]:
    """Global-memory and tensor-core instructions in each PTX loop body (nested loops
    excluded), loops in source order (by header position)."""
    lines = [ln.strip() for ln in ptx.splitlines()]
    labels = {}
    for i, ln in enumerate(lines):
        m = re.match(r"^(\$L__\w+):", ln)
        if m:
            labels[m.group(1)] = i
    spans: dict[int, int] = {}
    for i, ln in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+)\s*;", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            s = labels[m.group(1)]
            spans[s] = max(spans.get(s, i), i)
    loops = sorted(spans.items())
    counts = []
    for s, e in loops:
        inner = [(a, b) for a, b in loops if s < a and b <= e]
        n = sum(1 for i in range(s, e + 1) if not any(a <= i <= b for a, b in inner)
                and _PTX_MEMORY_LIKE.search(lines[i]))
        counts.append(n)
    return counts


def _memory_ops(lp: Loop) -> int:
    return sum(v for k, v in lp.classes.items() if _memory_like(k))


def _mark_remainders(sass: Sass, ptx_counts: list[int]) -> bool:
    """Pair each extra SASS loop with the loop ptxas unrolled: an unrolled body followed (or
    preceded) by a sibling loop with one source iteration's memory ops, for one PTX loop.
    Returns whether the pairing leaves one SASS loop per PTX loop."""
    loops = sass.loops
    extra = len(loops) - len(ptx_counts)
    for j in range(len(loops) - 1):
        if extra <= 0:
            break
        a, b = loops[j], loops[j + 1]
        if a.parent != b.parent or a.remainder_of is not None:
            continue
        na, nb = _memory_ops(a), _memory_ops(b)
        if nb and na > nb and na % nb == 0:
            b.remainder_of, extra = j, extra - 1
        elif na and nb > na and nb % na == 0:
            a.remainder_of, extra = j + 1, extra - 1
    return extra == 0


def set_unroll(sass: Sass, ptx_counts: list[int]) -> list[str]:
    """Set each SASS loop's unroll factor from the PTX loops; returns flags for what could not
    be matched (the factor then stays 1, i.e. an upper bound). A loop ptxas unrolled with a
    remainder loop beside it is one PTX loop: the remainder runs ``trips % unroll`` times."""
    if not sass.loops:
        return []
    if len(ptx_counts) != len(sass.loops) and not _mark_remainders(sass, ptx_counts):
        for lp in sass.loops:
            lp.remainder_of = None
        return [f"sass_loops={len(sass.loops)}!=ptx_loops={len(ptx_counts)}: unroll not detected"]
    flags = []
    mains = [(j, lp) for j, lp in enumerate(sass.loops) if lp.remainder_of is None]
    for (j, lp), n_ptx in zip(mains, ptx_counts):
        n_sass = _memory_ops(lp)
        if n_ptx and n_sass and n_sass % n_ptx == 0:
            lp.unroll = n_sass // n_ptx
        elif n_ptx or n_sass:
            flags.append(f"loop{j}: {n_sass} SASS vs {n_ptx} PTX memory ops: unroll not detected")
    return flags


# ---------------------------------------------------------------------- tools
def tool(name: str) -> str:
    """Path of a CUDA tool bundled with triton (``nvdisasm``, ``cuobjdump``)."""
    try:
        from triton import knobs

        path = getattr(knobs.nvidia, name).path
        if path:
            return path
    except Exception:  # older triton: fall back to the wheel layout
        pass
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", name)


def disassemble(cubin: bytes) -> tuple[str, dict]:
    """(SASS text, resource usage {registers, stack, local, shared_static}) of a cubin."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        sass = subprocess.run([tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
    return sass, parse_resource_usage(res)


def parse_resource_usage(text: str) -> dict:
    """Registers, stack frame and local/shared bytes of the (first) function in
    ``cuobjdump --dump-resource-usage`` output."""
    out = {}
    for key, name in (("REG", "registers"), ("STACK", "stack"), ("LOCAL", "local"), ("SHARED", "shared_static")):
        m = re.search(rf"\b{key}:(\d+)", text)
        out[name] = int(m.group(1)) if m else None
    return out
