"""The SE gate fits the shared memory of an sm_86 / sm_89 program (A10, L4, RTX 30 and 40), without a GPU.

The H100 lets a program have 227 KiB of shared memory, an sm_86 or sm_89 GPU 99 KiB: a kernel
that fits the first can fail to launch on the second, which no sm_90 compile shows. Where each
image has one tile of partial sums (``T`` is 1, the 7x7 maps), Triton specialises ``T`` and may
pipeline the gate's channel loop. Compiled ahead of time for sm_86 with Triton's bundled ptxas,
in a subprocess (the interpreter must be off).
"""
import textwrap

import pytest

from .test_compile_sm90 import run_compiled

pytestmark = pytest.mark.subprocess

SM86_SHARED_LIMIT_BYTES = 99 * 1024

SCRIPT = textwrap.dedent(
    f"""
    import os
    os.environ["FASTMBCONV_AUTOTUNE"] = "0"
    import torch
    import triton
    from triton.compiler import ASTSource
    from fastmbconv.kernel_report import specialize
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernels.squeeze_excite import squeeze_excite_gate

    specialize.TARGET_ARCH = 86
    C = 1920  # B1's last stage; R 80 (B1-B3's 7x7 blocks), 160 (B7's) and the kernel's widest
    with record_launches() as launches:
        for dtype in (torch.float32, torch.float16):
            for R in (80, 160, 512):
                for T in (1, 3):
                    w_r, w_e = (torch.empty(shape, device="meta", dtype=dtype) for shape in ((R, C), (C, R)))
                    squeeze_excite_gate(torch.empty(16, T, C, device="meta"), w_r, torch.empty(R, device="meta"),
                                        w_e, torch.empty(C, device="meta"), hw=49)
    over, shared = [], []
    for rec in launches:
        v = specialize.variants(rec.kernel, rec.args, rec.constexprs)[0][0]
        k = triton.compile(ASTSource(v.jit, v.signature, v.constexprs, v.attrs), target=specialize.target(),
                           options=v.options.__dict__)
        shared.append(k.metadata.shared)
        if k.metadata.shared > {SM86_SHARED_LIMIT_BYTES}:
            over.append((rec.args["R"], rec.args["T"], rec.constexprs["DOT_FP32"], k.metadata.shared))
    assert not over, over
    print("compiled", len(launches), max(shared))
    """
)


def test_se_gate_fits_an_sm86_program():
    result = run_compiled(SCRIPT)
    words = result.stdout.split()
    assert words[:2] == ["compiled", "12"] and int(words[2]) > 0, result.stdout
