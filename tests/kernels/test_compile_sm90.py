"""Every kernel variant a fused forward launches compiles to an H100 (sm_90) cubin, without a GPU.

The interpreter runs kernels as numpy and so cannot catch code-generation errors (types that do
not unify, bad dot shapes, shared memory over budget). Triton can compile for a GPU target ahead
of time with its bundled ptxas. The forwards below are recorded on ``meta`` tensors (nothing
runs) and each distinct specialisation is compiled with its fixed (``FASTMBCONV_AUTOTUNE=0``)
config (fp32 with a ragged batch, bf16 returning feature maps, then both with every block's
expand and depthwise convs as one kernel, and that kernel's and the 1x1 kernel's 64-bit
specialisations); the kernel report's test compiles the fp16 ones. This must run with the
interpreter off, so it runs in a subprocess.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["FASTMBCONV_AUTOTUNE"] = "0"
    import torch
    import fastmbconv as fm
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernel_report.specialize import variants
    from fastmbconv.kernel_report.compiled import SHARED_LIMIT_BYTES, analyse

    def record(dtype, features_only=False, ragged=False):
        with torch.device("meta"):
            model = fm.efficientnet_b0(features_only=features_only, pad_mode="same").eval().to(dtype)
        x = torch.empty(2, 3, 35, 29, device="meta", dtype=dtype)
        with record_launches() as launches, torch.no_grad(), fm.use_backend("fused"):
            model(x, [[35, 29], [17, 9]] if ragged else None)
            if not features_only:
                model.forward_features(x)
        return launches

    def record_int64_expand_dw():
        # expand_dwconv's INT64 specialisation with tensor-core taps: channel planes 2^30 apart
        from fastmbconv.kernels.dwconv_bn_act import taps_diag
        from fastmbconv.kernels._expand_dw_tiles import pad_taps
        from fastmbconv.kernels.expand_dwconv import expand_dwconv
        x = torch.empty(2**32, device="meta", dtype=torch.float16).as_strided((2, 8, 9, 9), (2**31, 2**30 + 16, 9, 1))
        w = pad_taps(taps_diag(torch.empty(9, 48, device="meta"), torch.float16))
        v = torch.empty(48, device="meta")
        with record_launches() as launches:
            expand_dwconv(x, torch.empty(48, 8, device="meta", dtype=torch.float16), v, w, v, v, (1, 1, 1, 1), 2)
        assert launches[0].constexprs["INT64"] and launches[0].constexprs["MMA"]
        return launches

    def record_int64_pointwise():
        # the 1x1 kernel's INT64 specialisation where the rows themselves pass 2^31 (map and pool)
        from fastmbconv.kernels.pointwise_gated import pointwise_gated
        with record_launches() as launches:
            for K in (1, 8):  # the CUDA test's one channel, and a layer's eight
                x = torch.empty(32769, K, 256, 256, device="meta", dtype=torch.float16,
                                memory_format=torch.channels_last)
                w, b = torch.empty(K, K, device="meta", dtype=torch.float16), torch.empty(K, device="meta")
                pointwise_gated(x, w, b, gate=torch.empty(32769, K, device="meta"), impl="triton")
                pointwise_gated(x, w, b, act="silu", pool_only=True, impl="triton")
        assert [r.constexprs["INT64"] for r in launches if "INT64" in r.constexprs] == [True] * 4
        return launches

    def record_wide_stem():
        # a stem wider than one program's block of output channels, over a patch of many steps
        from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act
        with record_launches() as launches:
            for dtype in (torch.float16, torch.float32):
                x = torch.empty(2, 16, 64, 64, device="meta", dtype=dtype)
                w, b = torch.empty(512, 16, 7, 7, device="meta"), torch.empty(512, device="meta")
                stem_conv_bn_act(x, w, b, (3, 3, 3, 3), 2)
        return launches

    todo = {}
    recorded = [record(torch.float32, False, True), record(torch.bfloat16, True, False), record_int64_pointwise(),
                record_wide_stem()]
    os.environ["FASTMBCONV_EXPAND_DW"] = "fused"  # every block's expand_dwconv: FMA (fp32) and tensor-core taps
    recorded += [record(torch.float32, False, False), record(torch.bfloat16, False, True), record_int64_expand_dw()]
    for launches in recorded:
        for rec in launches:
            for v in variants(rec.kernel, rec.args, rec.constexprs)[0]:
                todo.setdefault(v.key(), (rec, v))
    results = analyse([v for _, v in todo.values()])  # compiled in parallel, cached on disk
    failures = [(rec.op, rec.layer, results[key]["error"][:300]) for key, (rec, _) in todo.items()
                if "error" in results[key]]
    assert not failures, failures
    # a launch that needs more shared memory than an sm_90 program may have fails on the GPU only
    over = [(rec.op, rec.layer, results[key]["shared"]) for key, (rec, _) in todo.items()
            if results[key]["shared"] > SHARED_LIMIT_BYTES]
    assert not over, over
    # the 1x1 convs' untuned configs (what runs with autotuning off) fit their registers, fp32's
    # FMA products included
    from fastmbconv.kernel_report.build import spill_bytes
    from fastmbconv.kernel_report.sass import Sass
    spills = [(rec.layer, rec.constexprs["DOT_FP32"], v.config, results[key]["stack"])
              for key, (rec, v) in todo.items() if rec.op == "pointwise_gated"
              and spill_bytes(results[key]["stack"], Sass.from_json(results[key]["sass"]))]
    assert not spills, spills

    # expand_dwconv's barrier between an item's halo stores and its taps is also what keeps the
    # software pipeliner from prefetching a slot (cp.async) before the item that fills it runs
    import triton
    from triton.compiler import ASTSource
    from fastmbconv.kernel_report.specialize import target
    fused = {}
    for rec, v in todo.values():
        if rec.op == "expand_dwconv":
            assert rec.constexprs.get("num_stages") == 1, "expand_dwconv's launch must ask for no pipelining"
            fused.setdefault(rec.constexprs["MMA"], v)
    assert set(fused) == {True, False}, "both taps variants of expand_dwconv should have been recorded"
    for v in fused.values():
        assert v.num_stages == 1, "the kernel report compiles expand_dwconv with other options than its launch"
        k = triton.compile(ASTSource(v.jit, v.signature, v.constexprs, v.attrs), target=target(),
                           options=v.options.__dict__)
        assert "async_copy_global_to_local" not in k.asm["ttgir"], "expand_dwconv's item loop was pipelined"
    print("compiled", len(todo))
    """
)


def run_compiled(script: str) -> subprocess.CompletedProcess:
    """``script`` in a Python without the interpreter (triton compiles for sm_90 only then)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    try:
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail("compiling the kernels for sm_90 took over 10 minutes")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_every_launched_variant_compiles_for_sm90():
    result = run_compiled(SCRIPT)
    assert result.stdout.strip().startswith("compiled") and int(result.stdout.split()[-1]) >= 10, result.stdout


COMPILE_DEPTHWISE = textwrap.dedent(
    """
    import os, re
    os.environ["FASTMBCONV_AUTOTUNE"] = "0"
    import torch
    import triton
    from triton.compiler import ASTSource
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act, taps_diag
    from fastmbconv.kernel_report.build import spill_bytes
    from fastmbconv.kernel_report.sass import disassemble, parse_sass
    from fastmbconv.kernel_report.specialize import target, variants

    def recorded(dtype, C, diag, side=30, stride=1, k=3):
        x = torch.empty(2, C, side, side, device="meta", dtype=dtype).to(memory_format=torch.channels_last)
        w = torch.empty(C, 1, k, k, device="meta")
        v = torch.empty(C, device="meta")
        with record_launches() as launches:
            dwconv_bn_act(x, taps_diag(w, dtype) if diag else w, v, v, (k // 2,) * 4, stride, with_pool=True)
        return launches[0]

    def compiled(dtype, C, diag, side=30, stride=1):
        rec = recorded(dtype, C, diag, side, stride)
        var = variants(rec.kernel, rec.args, rec.constexprs)[0][0]
        return triton.compile(ASTSource(var.jit, var.signature, var.constexprs, var.attrs), target=target(),
                              options=var.options.__dict__)

    def ptx(dtype, C, diag):
        return compiled(dtype, C, diag).asm["ptx"]

    def spilled(kern):
        text, res = disassemble(kern.asm["cubin"])
        return spill_bytes(res["stack"], parse_sass(text, getattr(kern.metadata, "name", None))), res

    def scalar(text, kind, bits):
        return len(re.findall(rf"\\b{kind}\\.global(?:\\.(?!v[248]\\.)[a-z0-9_:]+)*\\.b{bits}\\s", text))

    """
)

VECTOR_SCRIPT = COMPILE_DEPTHWISE + textwrap.dedent(
    """
    for dtype, C, diag in [(torch.float16, 40, True), (torch.bfloat16, 24, True), (torch.float16, 40, False),
                           (torch.float32, 40, False)]:
        text = ptx(dtype, C, diag)
        bits = 32 if dtype == torch.float32 else 16
        loads, stores = scalar(text, "ld", bits), scalar(text, "st", bits)
        # fp32: the per-tile SE sums (16 channels in a row) are one 32-bit store per thread
        assert loads == 0 and stores <= (1 if bits == 32 else 0), (dtype, C, diag, loads, stores)

    # where 16 divides C the kernel is what triton's own specialisation gives: B1's 96-channel
    # stride-2 block spilled 24 B when C reached it as 6 x 16
    spill, res = spilled(compiled(torch.float16, 96, True, side=120, stride=2))
    assert not spill, res
    print("vector")
    """
)


def test_depthwise_accesses_are_vectors_where_channels_are_not_a_multiple_of_16():
    """B3-B6's stage-0 depthwise convs have 24, 40 or 56 channels: channels_last rows of a
    multiple of 8 (16 B in fp16), but not of 16, the only divisibility triton infers from a
    runtime integer. The launcher passes the power-of-two factors of the channel count and of
    the output's pixel stride as constants, so the activation loads and stores stay 16-byte
    vectors (scalar, those launches took 1.7-1.9x the instructions per output in the kernel
    report). Where 16 divides C nothing changes: that kernel stays as it was, without a spill."""
    result = run_compiled(VECTOR_SCRIPT)
    assert result.stdout.strip().endswith("vector"), result.stdout


STAGES_SCRIPT = COMPILE_DEPTHWISE + textwrap.dedent(
    """
    # the rule: 2 stages for 3x3 stride 2 and for partly masked channel groups, else 1
    got = [recorded(torch.float16, C, True, side, s, k).constexprs["num_stages"] for C, side, s, k in
           [(96, 30, 2, 3), (96, 30, 1, 3), (96, 30, 2, 5), (40, 30, 1, 3), (480, 15, 1, 5)]]
    assert got == [2, 1, 1, 2, 1], got
    # 3x3 stride-2 layers that spill 8-16 B at 1 stage: B2's 288 and B5's 384 channels (fp16, triton
    # 3.6 and 3.7), B1's 96 and 240, B0's 96 (bf16) (3.8)
    for dtype, C, side in [(torch.float16, 288, 32), (torch.float16, 384, 56), (torch.float16, 96, 120),
                           (torch.float16, 240, 30), (torch.bfloat16, 96, 112)]:
        spill, res = spilled(compiled(dtype, C, True, side=side, stride=2))
        assert not spill, (dtype, C, res)
    print("no spill")
    """
)


def test_depthwise_tensor_core_kernel_pipelines_where_one_stage_spills():
    """The tensor-core depthwise kernel runs unpipelined (1 stage) except where that spills
    with some Triton release the project meets (3.6 on the GPU machines, 3.7 and 3.8 from
    torch 2.13 and 2.14): partly masked channel groups, and 3x3 stride 2, where the kernel is
    memory-bound and the model gives 2 stages the same time. The launch's stage count is
    checked, then the spilling layers compile without a spill with the installed Triton."""
    result = run_compiled(STAGES_SCRIPT)
    assert result.stdout.strip().endswith("no spill"), result.stdout


SE_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["FASTMBCONV_AUTOTUNE"] = "0"
    import torch
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernels.squeeze_excite import squeeze_excite_gate
    from fastmbconv.kernel_report.build import spill_bytes
    from fastmbconv.kernel_report.compiled import analyse
    from fastmbconv.kernel_report.sass import Sass
    from fastmbconv.kernel_report.specialize import variants

    todo = []
    # the widest blocks (one tile a step), and blocks that sum two tiles a step
    for C, R, dtype in [(3840, 160, torch.float32), (3456, 144, torch.float32), (2304, 96, torch.float32),
                        (3840, 160, torch.float16), (1152, 48, torch.float16), (1248, 52, torch.bfloat16),
                        (40, 10, torch.float32)]:
        part = torch.empty(2, 3, C, device="meta")  # several tiles per image, as on 19x19 maps
        w = lambda *s: torch.empty(*s, device="meta", dtype=dtype)
        with record_launches() as launches:
            squeeze_excite_gate(part, w(R, C), w(R), w(C, R), w(C), hw=100)
        rec = launches[0]
        assert rec.constexprs["BLOCK_T"] == (1 if R > 64 else 2), (C, R, rec.constexprs)
        todo.append(((C, R, str(dtype), rec.constexprs["BLOCK_C"], rec.constexprs["BLOCK_G"]),
                     variants(rec.kernel, rec.args, rec.constexprs)[0][0]))
    results = analyse([v for _, v in todo])
    spills = [(what, results[v.key()].get("error") or results[v.key()]["stack"]) for what, v in todo
              if "error" in results[v.key()]
              or spill_bytes(results[v.key()]["stack"], Sass.from_json(results[v.key()]["sass"]))]
    assert not spills, spills
    print("fits")
    """
)


def test_se_gate_of_the_widest_blocks_fits_its_registers():
    """B6's and B7's last blocks reduce 3456-3840 channels to 144-160: in fp32 the FCs' dots
    run as FMAs, whose 64-wide tiles spilled (72 B with triton 3.9, 1312 B with 3.6), and 32-wide
    gate tiles 8 B with triton 3.7. Blocks of at most 64 reduced channels sum two tiles a step
    (four spilled 8 B with triton 3.6)."""
    result = run_compiled(SE_SCRIPT)
    assert result.stdout.strip().endswith("fits"), result.stdout


SILU_SCRIPT = COMPILE_DEPTHWISE + textwrap.dedent(
    """
    forms = {"tanh": "tanh.approx.f32", "ex2": "ex2.approx.ftz.f32", "rcp": "rcp.approx.ftz.f32"}
    def silu_form(dtype, diag):
        text = ptx(dtype, 40, diag)
        return sorted(name for name, insn in forms.items() if insn in text)
    assert silu_form(torch.float16, True) == silu_form(torch.bfloat16, True) == ["tanh"]
    assert silu_form(torch.float16, False) == ["tanh"]
    assert silu_form(torch.float32, False) == ["ex2", "rcp"]
    os.environ["FASTMBCONV_SILU"] = "sigmoid"
    assert silu_form(torch.float16, True) == ["ex2", "rcp"]
    print("silu")
    """
)


def test_silu_takes_one_tanh_in_fp16_and_bf16_and_ex2_rcp_in_fp32():
    """The SiLU forms of kernels/_math.py as compiled: fp16/bf16 activations one
    ``tanh.approx`` (one MUFU), fp32 an ``ex2`` and an ``rcp`` (two), and
    ``FASTMBCONV_SILU=sigmoid`` the latter for fp16 too."""
    result = run_compiled(SILU_SCRIPT)
    assert result.stdout.strip().endswith("silu"), result.stdout


FP_FUSION_SCRIPT = COMPILE_DEPTHWISE + textwrap.dedent(
    """
    os.environ["TRITON_DEFAULT_FP_FUSION"] = "0"  # Triton 3.10's default
    fmas = len(re.findall(r"\\bfma\\.rn\\.f32\\b", ptx(torch.float32, 40, False)))
    assert fmas >= 9, fmas  # one a tap at least
    print("fma")
    """
)


def test_kernels_ask_for_fused_multiply_adds_whatever_tritons_default():
    """Every launch passes enable_fp_fusion=True (kernels._launch.LAUNCH_OPTIONS), and the report
    compiles with it: with Triton's default off, as in 3.10, the depthwise taps stay FMAs."""
    result = run_compiled(FP_FUSION_SCRIPT)
    assert result.stdout.strip().endswith("fma"), result.stdout


FUSED_SHARED_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["FASTMBCONV_AUTOTUNE"] = "0"
    os.environ["FASTMBCONV_EXPAND_DW"] = "fused"
    import torch
    import fastmbconv as fm
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernel_report.compiled import analyse
    from fastmbconv.kernel_report.model import resident_programs
    from fastmbconv.kernel_report.specialize import variants

    with torch.device("meta"):
        model = fm.efficientnet_b0().eval().half()
    with record_launches() as launches, torch.no_grad(), fm.use_backend("fused"):
        model(torch.empty(1, 3, 224, 224, device="meta", dtype=torch.float16))
    todo = {r.layer: variants(r.kernel, r.args, r.constexprs)[0][0] for r in launches
            if r.op == "expand_dwconv" and r.layer in ("blocks.2.1", "blocks.6.0")}
    assert len(todo) == 2, sorted(todo)
    results = analyse(list(todo.values()))
    for layer, v in todo.items():
        res = results[v.key()]
        resident = resident_programs(v.num_warps, res["registers"], res["shared"])
        print(layer, res["shared"], res["registers"], resident)
        assert resident[0] >= 2, (layer, res["shared"], res["registers"], resident)
    print("two per SM")
    """
)


def test_fused_programs_fit_two_per_sm_at_b0s_widest():
    """The persistent expand_dwconv grid launches two programs per SM; B0's 2.1 (25 taps of 64
    channels) and 6.0 (192 input channels) keep the most in shared memory, where 9 windows per
    taps group took 138 KiB: one program per SM (taps_group sizes the group to fit)."""
    result = run_compiled(FUSED_SHARED_SCRIPT)
    assert result.stdout.strip().endswith("two per SM"), result.stdout
