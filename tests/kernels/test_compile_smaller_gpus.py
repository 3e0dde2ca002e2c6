"""The SE gate fits the shared memory of an sm_86 / sm_89 program (A10, L4, RTX 30 and 40) and
of a T4's (sm_75), without a GPU.

The H100 lets a program have 227 KiB of shared memory, an sm_86 or sm_89 GPU 99 KiB and a T4
64 KiB: a kernel that fits the first can fail to launch on the others, which no sm_90 compile
shows. Where each image has one tile of partial sums (``T`` is 1, the 7x7 maps), Triton
specialises ``T`` and may pipeline the gate's channel loop. The launches are recorded as the
launcher sizes them for each GPU's shared memory, and compiled ahead of time for its
architecture with Triton's bundled ptxas, in a subprocess (the interpreter must be off).
"""
import textwrap

import pytest

from .test_compile_sm90 import run_compiled

pytestmark = pytest.mark.subprocess

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["FASTMBCONV_AUTOTUNE"] = "0"
    import torch
    import triton
    from triton.compiler import ASTSource
    from fastmbconv.kernel_report import specialize
    from fastmbconv.kernels import squeeze_excite
    from fastmbconv.kernels._launch import record_launches

    C = 1920  # B1's last stage; R 80 (B1-B3's 7x7 blocks), 160 (B7's) and the kernel's widest
    for arch, per_program in ((86, 99 * 1024), (75, 64 * 1024)):
        specialize.TARGET_ARCH, specialize._BACKEND = arch, None
        squeeze_excite.shared_limits = lambda device: (per_program, per_program)
        with record_launches() as launches:
            for dtype in (torch.float32, torch.float16):
                for R in (80, 160, 512):  # one tile per image: the channel loop would be pipelined
                    w_r, w_e = (torch.empty(shape, device="meta", dtype=dtype) for shape in ((R, C), (C, R)))
                    squeeze_excite.squeeze_excite_gate(
                        torch.empty(16, 1, C, device="meta"), w_r, torch.empty(R, device="meta"), w_e,
                        torch.empty(C, device="meta"), hw=49)
        over, shared = [], []
        for rec in launches:
            v = specialize.variants(rec.kernel, rec.args, rec.constexprs)[0][0]
            k = triton.compile(ASTSource(v.jit, v.signature, v.constexprs, v.attrs), target=specialize.target(),
                               options=v.options.__dict__)
            shared.append(k.metadata.shared)
            if k.metadata.shared > per_program:
                over.append((arch, rec.args["R"], rec.constexprs["DOT_FP32"], k.metadata.shared))
        assert not over, over
        print("sm", arch, "compiled", len(launches), "max", max(shared))
    """
)


def test_se_gate_fits_sm86_and_sm75_programs():
    result = run_compiled(SCRIPT)
    lines = [line.split() for line in result.stdout.strip().splitlines()]
    assert [(words[1], words[3]) for words in lines] == [("86", "6"), ("75", "6")], result.stdout
    assert all(0 < int(words[5]) for words in lines), result.stdout
