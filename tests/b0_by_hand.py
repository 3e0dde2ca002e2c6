"""EfficientNet-B0 counted by hand from the paper's stage table (Tan & Le 2019, table 1), with
timm's conventions (SE width = block input // 4, convs without bias, BN after every conv). It
shares no code with fastmbconv, so the numbers the package publishes can be checked against it:
parameters, multiply-accumulates, and the device-memory bytes of each fusion level as
``fastmbconv.roofline``'s docstring defines them."""
from __future__ import annotations

from dataclasses import dataclass

# (expansion, kernel, stride, channels in, channels out, repeats); stem 3 -> 32, head 320 -> 1280
STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
STEM, HEAD, CLASSES = 32, 1280, 1000


@dataclass
class Block:
    cin: int
    mid: int
    cout: int
    se: int
    k: int
    h: int  # input side
    ho: int  # output side
    skip: bool


def blocks(resolution: int) -> list[Block]:
    out, h = [], -(-resolution // 2)
    for e, k, s, cin, cout, reps in STAGES:
        for i in range(reps):
            ci, st = (cin, s) if i == 0 else (cout, 1)
            ho = -(-h // st)
            out.append(Block(ci, ci * e, cout, max(1, ci // 4), k, h, ho, st == 1 and ci == cout))
            h = ho
    return out


def params() -> int:
    n = 3 * STEM * 9 + 2 * STEM
    for b in blocks(224):
        if b.mid != b.cin:
            n += b.cin * b.mid + 2 * b.mid
        n += b.mid * b.k ** 2 + 2 * b.mid + (b.mid * b.se + b.se) + (b.se * b.mid + b.mid) + b.mid * b.cout + 2 * b.cout
    return n + 320 * HEAD + 2 * HEAD + HEAD * CLASSES + CLASSES


def macs(resolution: int) -> dict[str, int]:
    """Multiply-accumulates of one image by category (convs and the classifier only)."""
    s = -(-resolution // 2)
    m = {"stem": 3 * STEM * 9 * s * s, "depthwise": 0, "se": 0, "1x1": 0}
    for b in blocks(resolution):
        m["1x1"] += (b.cin * b.mid * b.h ** 2 if b.mid != b.cin else 0) + b.mid * b.cout * b.ho ** 2
        m["depthwise"] += b.mid * b.k ** 2 * b.ho ** 2
        m["se"] += 2 * b.mid * b.se
    last = blocks(resolution)[-1].ho
    m["1x1"] += 320 * HEAD * last ** 2 + HEAD * CLASSES
    return m


def level_bytes(resolution: int, batch: int, itemsize: int) -> dict[str, int]:
    """Bytes read + written per fusion level, whole batch; weights once, at ``itemsize``.

    eager: every conv, BN (4 vectors), SiLU, SE step and residual add reads its inputs and
    writes its output. layer_fused: expand (+bias), depthwise (+scale, shift; writes the fp32
    SE pool), SE gate (fp32 in and out), project (reads the gate and the residual; +bias).
    expand_dw_fused: expand and depthwise one kernel. whole_block: block input and output only.
    Stem (conv+BN+SiLU) and head (conv+BN+SiLU+pool, writing the pooled vector) are one kernel
    each at every fused level; the pooled vector and the classifier's reads are at ``itemsize``."""
    n, b = batch, itemsize

    def a(c, side):
        return n * c * side * side * b

    def v(c, size=b):
        return n * c * size

    s = -(-resolution // 2)
    image, stem = a(3, resolution), a(STEM, s)
    w_stem = 3 * STEM * 9 * b
    eager = (image + w_stem + stem) + 2 * (2 * stem) + 4 * STEM * b
    fused_stem = image + w_stem + STEM * b + stem
    lf = ed = wb = fused_stem
    for k in blocks(resolution):
        x, e, d, y = a(k.cin, k.h), a(k.mid, k.h), a(k.mid, k.ho), a(k.cout, k.ho)
        w_exp, w_dw = k.cin * k.mid * b, k.mid * k.k ** 2 * b
        w_red, w_ex, w_proj = (k.mid * k.se + k.se) * b, (k.se * k.mid + k.mid) * b, k.mid * k.cout * b
        if k.mid != k.cin:  # expand conv, BN, SiLU
            eager += (x + w_exp + e) + (2 * e + 4 * k.mid * b) + 2 * e
        eager += (e if k.mid != k.cin else x) + w_dw + d + (2 * d + 4 * k.mid * b) + 2 * d  # dw, BN, SiLU
        eager += (d + v(k.mid)) + (v(k.mid) + w_red + v(k.se)) + 2 * v(k.se)  # pool, reduce, SiLU
        eager += (v(k.se) + w_ex + v(k.mid)) + 2 * v(k.mid) + (d + v(k.mid) + d)  # expand, sigmoid, scale
        eager += (d + w_proj + y) + (2 * y + 4 * k.cout * b) + (3 * y if k.skip else 0)  # project, BN, add
        w_dwk = w_dw + 2 * k.mid * b
        se_gate = 2 * v(k.mid, 4) + w_red + w_ex
        project = d + v(k.mid, 4) + (x if k.skip else 0) + w_proj + k.cout * b + y
        dw_out = d + v(k.mid, 4)
        if k.mid != k.cin:
            w_expk = w_exp + k.mid * b
            lf += (x + w_expk + e) + (e + w_dwk + dw_out)
            ed += x + w_expk + w_dwk + dw_out
            wb += x + y + w_expk + w_dwk + w_red + w_ex + w_proj + k.cout * b
        else:
            lf += x + w_dwk + dw_out
            ed += x + w_dwk + dw_out
            wb += x + y + w_dwk + w_red + w_ex + w_proj + k.cout * b
        lf += se_gate + project
        ed += se_gate + project
    last = blocks(resolution)[-1].ho
    x, hmap, w_head = a(320, last), a(HEAD, last), 320 * HEAD * b
    eager += (x + w_head + hmap) + (2 * hmap + 4 * HEAD * b) + 2 * hmap + (hmap + v(HEAD))
    head = x + w_head + HEAD * b + v(HEAD)
    classifier = v(HEAD) + (HEAD * CLASSES + CLASSES) * b + v(CLASSES)
    return {"eager": eager + classifier, "layer_fused": lf + head + classifier,
            "expand_dw_fused": ed + head + classifier, "whole_block": wb + head + classifier}
