"""Every kernel compiles to an H100 (sm_90) cubin, without a GPU.

The interpreter runs kernels as numpy and so cannot catch code-generation errors (types that do
not unify, bad dot shapes, shared memory over budget). Triton can compile for a GPU target
ahead of time with its bundled ptxas; this must run with the interpreter off, so it runs in a
subprocess. A representative variant of each kernel is compiled (the full grid of 92 variants
takes ~4 minutes from a cold cache).
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    from fastmbconv.kernels import dwconv_bn_act as D, pointwise_gated as P, squeeze_excite as S

    target = GPUTarget("cuda", 90, 32)

    def build(fn, pointers, ints, consts, warps=4, stages=3):
        sig = dict(pointers)
        sig.update({name: "i32" for name in ints})
        sig.update({name: "constexpr" for name in consts})
        opts = {"num_warps": warps, "num_stages": stages}
        kernel = triton.compile(ASTSource(fn, sig, consts), target=target, options=opts)
        assert kernel.asm.get("cubin"), "no cubin produced"

    dw_ints = ["C", "H", "W", "H_out", "W_out", "sxn", "sxc", "sxh", "sxw", "son", "soc", "soh", "sow",
               "pad_top", "pad_left"]
    for dt, k, s, pool, ragged, partial, (bp, bc, w) in [
        ("fp16", 5, 2, True, True, False, D._GPU_CONFIGS[4]),
        ("bf16", 3, 1, False, False, False, D._GPU_CONFIGS[0]),
        ("fp32", 3, 1, True, False, True, D._GPU_CONFIGS[1]),
    ]:
        ptrs = {"x_ptr": "*" + dt, "w_ptr": "*fp32", "scale_ptr": "*fp32", "shift_ptr": "*fp32",
                "out_ptr": "*" + dt, "pool_ptr": "*fp32", "valid_ptr": "*i32", "padtl_ptr": "*i32"}
        build(D._dwconv_bn_act_kernel, ptrs, dw_ints,
              dict(STRIDE=s, KSIZE=k, ACT=1, IN_ACT=1, WITH_POOL=pool, RAGGED=ragged, POOL_PARTIAL=partial,
                   BLOCK_P=bp, BLOCK_C=bc), w)

    pw_ints = ["K", "O", "H", "W", "sxn", "sxc", "sxh", "sxw", "son", "soc", "soh", "sow", "srn", "src", "srh", "srw"]
    for dt, gate, res, pool, ragged, partial, (bm, bn, bk, w, st) in [
        ("bf16", True, True, False, False, False, P._GPU_CONFIGS[3]),
        ("fp16", False, False, True, True, False, P._GPU_CONFIGS[0]),
        ("fp16", False, False, True, False, True, P._GPU_CONFIGS[2]),
        ("fp32", True, False, False, False, False, P._GPU_CONFIGS[1]),
    ]:
        ptrs = {"x_ptr": "*" + dt, "w_ptr": "*" + dt, "bias_ptr": "*fp32", "gate_ptr": "*fp32",
                "res_ptr": "*" + dt, "out_ptr": "*" + dt, "pool_ptr": "*fp32", "valid_ptr": "*i32"}
        build(P._pointwise_gated_kernel, ptrs, pw_ints,
              dict(HAS_GATE=gate, HAS_RES=res, ACT=1 if pool else 0, POOL_ONLY=pool, RAGGED=ragged,
                   DOT_FP32=dt == "fp32", POOL_PARTIAL=partial, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), w, st)

    ptrs = {name: "*fp32" for name in ["pool_ptr", "count_ptr", "wr_ptr", "br_ptr", "we_ptr", "be_ptr", "gate_ptr"]}
    ptrs["inv_count"] = "fp32"
    build(S._se_gate_kernel, ptrs, ["C", "R"], dict(HAS_COUNT=True, BLOCK_C=128, BLOCK_R=64))
    print("compiled")
    """
)


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    try:
        result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("compiling the kernels for sm_90 took over 5 minutes")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("compiled")
