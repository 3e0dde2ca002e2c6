"""The static sm_90 kernel report's parts that run in-process without compiling: the SASS
parser (loops, unrolling, spills, instruction classes), the time model, the HBM byte count and
the specialisation that mirrors triton's runtime."""
import pytest
import torch
import triton.language as tl

from fastmbconv.kernel_report.model import dynamic_per_warp, modelled_seconds
from fastmbconv.kernel_report.record import distinct_bytes
from fastmbconv.kernel_report.sass import access_width, classify, parse_sass, ptx_loop_memory_ops, set_unroll

# 6 straight-line instructions, a 5-instruction loop, then the terminal self-branch and padding
SYNTHETIC_SASS = """
//--------------------- .text.probe --------------------------
        .section        .text.probe,"ax",@progbits
probe:
.text.probe:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   MOV R2, RZ ;
.L_x_0:
        /*0030*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0040*/                   FFMA R6, R4, R5, R6 ;
        /*0050*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0060*/                   ISETP.GE.AND P0, PT, R2, R7, PT ;
        /*0070*/              @!P0 BRA `(.L_x_0) ;
        /*0080*/                   MUFU.EX2 R8, R6 ;
        /*0090*/                   STG.E.U16 desc[UR4][R2.64], R8 ;
        /*00a0*/                   EXIT ;
.L_x_1:
        /*00b0*/                   BRA `(.L_x_1);
        /*00c0*/                   NOP;
        /*00d0*/                   NOP;
"""


def test_sass_loop_bodies_count_times_their_trips():
    sass = parse_sass(SYNTHETIC_SASS)
    assert len(sass.opcodes) == 11 and sass.tail == 3
    assert [(lp.start, lp.end, lp.size) for lp in sass.loops] == [(3, 7, 5)]
    dyn = dynamic_per_warp(sass, [10])
    assert dyn["instructions"] == 6 + 5 * 10
    assert dyn["classes"]["ldg_128"] == 10 and dyn["classes"]["ffma"] == 10
    assert dyn["classes"]["mufu"] == 1 and dyn["classes"]["stg_16"] == 1 and not dyn["flags"]
    # hints that do not match the SASS loops: every loop gets the largest trip count, flagged
    dyn = dynamic_per_warp(sass, [3, 7])
    assert dyn["instructions"] == 6 + 5 * 7 and dyn["flags"]
    dyn = dynamic_per_warp(sass, None)
    assert dyn["instructions"] == 6 + 5 and dyn["flags"]


def test_a_stack_frame_is_a_spill_only_where_the_code_touches_local_memory():
    """ptxas can reserve a frame for an unused local depot: no LDL/STL, no spill (flagged as such
    in the rows); with a local store the frame is the spill."""
    from fastmbconv.kernel_report.build import spill_bytes

    untouched = parse_sass(SYNTHETIC_SASS)
    spilled = parse_sass(SYNTHETIC_SASS.replace("MOV R2, RZ ;", "STL [R1], R2 ;"))
    assert untouched.static_classes.get("local", 0) == 0 and spilled.static_classes["local"] == 1
    assert spill_bytes(8, untouched) == 0 and spill_bytes(8, spilled) == 8 and spill_bytes(0, spilled) == 0


def test_sass_unrolled_loop_runs_ceil_trips_over_unroll():
    text = SYNTHETIC_SASS.replace("        /*0040*/                   FFMA",
                                  "        /*0038*/                   LDG.E.128 R9, desc[UR4][R2.64+0x10] ;\n"
                                  "        /*0040*/                   FFMA")
    ptx = "$L__BB0_1:\n ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];\n @%p1 bra $L__BB0_1;\n"
    sass = parse_sass(text)
    assert ptx_loop_memory_ops(ptx) == [1]
    assert set_unroll(sass, [1]) == [] and sass.loops[0].unroll == 2
    assert dynamic_per_warp(sass, [5])["instructions"] == 6 + 6 * 3  # ceil(5 / 2) passes
    sass = parse_sass(text)
    assert set_unroll(sass, [1, 1]) and sass.loops[0].unroll == 1  # loop counts differ: upper bound


def test_sass_nested_loops_multiply():
    text = SYNTHETIC_SASS.replace("        /*0080*/                   MUFU.EX2 R8, R6 ;",
                                  "        /*0080*/              @!P1 BRA `(.L_x_2) ;")
    mov = "        /*0020*/                   MOV R2, RZ ;"
    text = text.replace(mov, ".L_x_2:\n" + mov)
    sass = parse_sass(text)
    assert [(lp.start, lp.end, lp.parent) for lp in sass.loops] == [(2, 8, None), (3, 7, 0)]
    # outer body: MOV + BRA (2), inner: 5 per pass; 4 outer x 10 inner
    assert dynamic_per_warp(sass, [4, 10])["instructions"] == 4 + 2 * 4 + 5 * 40


def test_instruction_classes():
    assert classify("LDG.E.64.CONSTANT") == "ldg_64" and classify("LDG.E") == "ldg_32"
    assert classify("STG.E.128") == "stg_128" and classify("LDGSTS.E.BYPASS.LTC128B.128") == "ldgsts_128"
    assert access_width("LDG.E.U16") == 16
    assert classify("HGMMA.64x64x16.F32") == "tensor" and classify("MUFU.RCP") == "mufu"
    assert classify("RED.E.ADD.F32.FTZ.RN") == "atomic" and classify("IMAD.WIDE.U32") == "int_addr"
    assert classify("STL.64") == "local"


def test_time_model_is_the_fixed_max_plus_overhead():
    t, bound = modelled_seconds(3.0e6, 1.0, 0.0)  # 1 us of HBM traffic
    assert bound == "memory" and t == pytest.approx(3e-6)
    t, bound = modelled_seconds(0.0, 132 * 4 * 1.755e9 * 1e-6 * 5, 0.0)  # 5 us of issue
    assert bound == "issue" and t == pytest.approx(7e-6)
    t, bound = modelled_seconds(3.0e6, 1.0, 700e12 * 4e-6)  # 4 us of tensor cores beats 1 us of memory
    assert bound == "tensor" and t == pytest.approx(6e-6)
    # the special-function pipe: 16 MUFU lanes per SM and cycle, so 3 us of MUFU work is an
    # eighth of what the same count of other instructions would take to issue
    mufu = 132 * 16 * 1.755e9 * 3e-6 / 32
    t, bound = modelled_seconds(3.0e6, mufu, 0.0, mufu)
    assert bound == "sfu" and t == pytest.approx(5e-6)
    assert modelled_seconds(0.0, 8 * mufu, 0.0, mufu)[1] == "issue"


def test_residency_scales_the_time_below_eight_warps_per_sm():
    from fastmbconv.kernel_report.model import latency_factor, resident_programs
    assert resident_programs(4, 96, 47 * 1024) == (4, "shared")  # 228 KiB / 48 KiB
    assert resident_programs(4, 172, 110 * 1024) == (2, "registers")  # 176 regs x 128 threads x 2 fit 64 Ki
    assert resident_programs(4, 152, 138 * 1024) == (1, "shared")  # B0 2.1's fused kernel before its fix
    assert resident_programs(1, 32, 0) == (32, "programs")
    assert resident_programs(8, 255, 0) == (1, "registers")
    assert resident_programs(4, 64, 228 * 1024)[0] == 0  # more than a program may have: cannot launch
    assert latency_factor(8) == latency_factor(64) == 1.0 and latency_factor(4) == 2.0
    t, _ = modelled_seconds(3.0e6, 1.0, 0.0, resident_warps=4)
    assert t == pytest.approx(2e-6 + 2e-6)


def test_hbm_bytes_count_each_storage_region_once():
    a = torch.empty(100, dtype=torch.float16, device="meta")
    b = torch.empty(10, dtype=torch.float32, device="meta")
    assert distinct_bytes([a, a, a.view(10, 10), b]) == 200 + 40  # a placeholder passed again is free
    assert distinct_bytes([a[:60], a[40:]]) == 200  # overlapping views: their union
    assert distinct_bytes([a[:10], a[50:60], torch.empty(0, device="meta")]) == 40


def _probe(x_ptr, y_ptr, n, m, one, big, f, BLOCK: tl.constexpr):
    pass


def test_specialisation_matches_triton_runtime_rules(monkeypatch):
    """Pointers whose modelled address and ints whose value is a multiple of 16 get
    tt.divisibility=16, ints equal to 1 become constants, large ints are i64; do_not_specialize
    turns both off, as in triton's runtime."""
    from triton.runtime.jit import JITFunction

    from fastmbconv.kernel_report.specialize import ALLOCATOR_ALIGNMENT, modelled_address, runtime_kwargs, specialize

    buf = torch.empty(64, dtype=torch.float16, device="meta")
    assert modelled_address(buf) == ALLOCATOR_ALIGNMENT and modelled_address(buf[1:]) == ALLOCATOR_ALIGNMENT + 2
    args = dict(x_ptr=buf, y_ptr=buf[1:], n=32, m=17, one=1, big=2**33, f=0.5)
    div16 = [["tt.divisibility", 16]]

    v = specialize(JITFunction(_probe), runtime_kwargs(args, {"BLOCK": 64, "num_warps": 2}))
    sig = v.signature
    assert (sig["x_ptr"], sig["y_ptr"], sig["n"], sig["m"], sig["big"], sig["f"]) == (
        "*fp16", "*fp16", "i32", "i32", "i64", "fp32")
    assert sig["one"] == "constexpr" and sig["BLOCK"] == "constexpr"
    assert v.constexprs[(4,)] == 1 and v.constexprs[(7,)] == 64
    attrs = {i: a for (i,), a in v.attrs.items()}
    assert attrs[0] == div16 and attrs[1] == [] and attrs[2] == div16 and attrs[3] == [] and attrs[5] == div16
    assert v.num_warps == 2 and v.config == {"BLOCK": 64, "num_warps": 2, "num_stages": v.num_stages}

    v = specialize(JITFunction(_probe, do_not_specialize=["n", "one"]), runtime_kwargs(args, {"BLOCK": 64}))
    assert v.signature["n"] == "i32" and v.signature["one"] == "i32"
    attrs = {i: a for (i,), a in v.attrs.items()}
    assert not attrs.get(2) and not attrs.get(4)
