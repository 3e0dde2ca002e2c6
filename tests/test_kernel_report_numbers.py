"""The static kernel report's numbers by hand, in-process and without compiling: residency
(register allocation units, the per-program shared-memory reserve), tensor-core FLOPs per
instruction, remainder loops, cuobjdump's resource line, the HBM bytes a hint adds, the time a
low residency adds, the targets' limits, and the markdown columns."""
import types

import pytest
import torch

from fastmbconv.kernel_report import build, model as M, ops, report
from fastmbconv.kernel_report.record import Recording
from fastmbconv.kernel_report.sass import Loop, Sass, parse_resource_usage, tensor_flops_per_warp_insn
from fastmbconv.roofline import roofline

SM90 = {"registers": 65536, "register_unit": 256, "shared": 228 * 1024, "reserve": 1024, "warps": 64, "programs": 32}


def _resident(warps, regs, shared):
    per_warp = -(-regs * 32 // SM90["register_unit"]) * SM90["register_unit"]
    return min(SM90["registers"] // (per_warp * warps), SM90["shared"] // (shared + SM90["reserve"]),
               SM90["warps"] // warps, SM90["programs"])


@pytest.mark.parametrize("warps,regs,shared", [(2, 33, 0), (1, 32, 57 * 1024), (4, 40, 20 * 1024), (8, 130, 0)])
def test_residency_by_the_sm90_allocation_rules(warps, regs, shared):
    assert M.resident_programs(warps, regs, shared)[0] == _resident(warps, regs, shared)


def test_tensor_flops_of_one_warp_instruction():
    assert tensor_flops_per_warp_insn("HGMMA.64x128x16.F32.BF16") == 2 * 64 * 128 * 16 / 4  # a warpgroup's 4 warps
    assert tensor_flops_per_warp_insn("HMMA.16816.F32") == 2 * 16 * 8 * 16
    assert tensor_flops_per_warp_insn("HMMA.1688.F16") == 2 * 16 * 8 * 8
    assert tensor_flops_per_warp_insn("FFMA") == 0


def _unrolled_with_remainder(unroll=4):
    main = Loop(0, 9, unroll=unroll, classes={"ldg_32": unroll, "ffma": 6})
    rest = Loop(10, 14, unroll=1, classes={"ldg_32": 1, "ffma": 4}, remainder_of=0)
    return Sass([""] * 15, [main, rest], {}, 0, {})


@pytest.mark.parametrize("trips", [11, 12, 3, 0])
def test_an_unrolled_loop_and_its_remainder_run_the_trips_once(trips):
    """The remainder loop runs the leftover trips; the unrolled loop the rest, none twice."""
    mult, flags = M.loop_multipliers(_unrolled_with_remainder(4), [trips])
    assert mult[1] == trips % 4 and not flags
    assert mult[0] * 4 + mult[1] == trips


def test_resource_usage_fields():
    text = ("Resource usage:\n Common:\n  GLOBAL:0\n Function _k:\n  REG:72 STACK:16 SHARED:4096 LOCAL:8 "
            "CONSTANT[0]:928 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert parse_resource_usage(text) == {"registers": 72, "stack": 16, "local": 8, "shared_static": 4096}


def test_hinted_traffic_replaces_the_tensor_it_names(monkeypatch):
    x = torch.empty(8, 64, device="meta", dtype=torch.float16)
    out = torch.empty(8, 32, device="meta", dtype=torch.float16)
    scratch = torch.empty(1000, device="meta")
    monkeypatch.setitem(ops.HINTS, "probe", lambda a: ops.Hints(outputs=out.numel(), traffic={"x_ptr": 3 * x.nbytes},
                                                                scratch=("s_ptr",)))
    rec = types.SimpleNamespace(op="probe", args={"x_ptr": x, "out_ptr": out, "s_ptr": scratch}, constexprs={})
    assert build.launch_hbm_bytes(rec, {}) == 3 * x.nbytes + out.nbytes


def test_low_residency_scales_the_modelled_time_and_reports_what_it_adds(monkeypatch):
    monkeypatch.setitem(ops.HINTS, "probe", lambda a: ops.Hints(outputs=132 * 128))
    sass = Sass(["FFMA"] * 10, [], {"ffma": 10}, 0, {})
    regs, shared = 64, 120 * 1024  # one 4-warp program per SM (shared memory): half the model's 8 warps
    analysis = {"registers": regs, "shared": shared, "stack": 0, "local": 0, "static_instructions": 10,
                "sass": sass.to_json()}
    rec = types.SimpleNamespace(op="probe", args={}, constexprs={}, grid=(132, 1, 1))
    v = types.SimpleNamespace(config={}, num_warps=4, num_stages=1, kwargs={})
    hbm = 3_000_000  # 1 us at 3.0e12 B/s: memory-bound
    row = build.variant_row(rec, v, analysis, hbm, lambda names: 0)
    factor = 8 / (_resident(4, regs, shared) * 4)
    assert factor == 2
    assert row["modelled_us"] == pytest.approx(1.0 * factor + 2.0)
    assert row["residency_extra_us"] == pytest.approx(1.0 * factor - 1.0)
    assert row["instructions_per_output"] == pytest.approx(10 * 132 * 4 * 32 / (132 * 128))


def _launch(i, us, hbm, **kw):
    return {"index": i, "kind": "triton", "op": "probe", "layer": f"l{i}", "ksize": None, "grid": [1], "config": {},
            "registers": 32, "spill_bytes": 0, "instructions_per_output": None, "hbm_bytes": hbm,
            "modelled_us": us, "bound_by": "memory", "flags": [], **kw}


def test_totals_and_their_markdown():
    limit = build.TARGETS["launches"]
    launches = [_launch(i, 3.0 + i, 1_000_000 * (i + 1)) for i in range(limit)]  # exactly at the launch limit
    rec = Recording("efficientnet_b0", 1, "fp16", (64, 64), [], [])
    t = build.totals(rec, launches)
    floor = roofline("efficientnet_b0", 64, 1, "fp16").bytes("layer_fused")
    modelled_ms = sum(3.0 + i for i in range(limit)) / 1e3
    assert t["modelled_ms"] == pytest.approx(modelled_ms)
    assert t["layer_fused_floor_ms"] == pytest.approx(floor / 3.0e12 * 1e3)
    assert t["floor_ratio"] == pytest.approx(modelled_ms / (floor / 3.0e12 * 1e3))
    assert t["targets"]["launches"] == {"value": limit, "limit": limit, "met": True}
    t["modelled_ms_fixed_configs"] = 2 * modelled_ms  # a different number, to see which one is printed
    md = report.markdown({"model": "efficientnet_b0", "batch": 1, "dtype": "fp16", "resolution": [64, 64],
                          "triton_version": "x", "torch_version": "y", "launches": launches, "totals": t})
    assert f"| modelled time | {modelled_ms:.3f} ms |" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "| probe |" in ln]
    assert len(rows) == limit
    for r, line in zip(launches, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[9] == f"{r['hbm_bytes'] / 1e6:.2f}" and cells[12] == f"{r['modelled_us']:.1f}"


def test_useful_pointwise_flops_are_two_per_multiply_accumulate():
    h = ops.pointwise_gated({"M": 100, "K": 48, "O": 24, "BLOCK_K": 32})
    assert h.tensor_flops == 2 * 100 * 48 * 24 and h.outputs == 100 * 24 and h.loops == [2]


def test_a_layers_plan_time_is_the_sum_of_its_launches():
    from fastmbconv.kernel_report.plan_table import layer_times

    launches = [_launch(0, 3.0, 0, layer="blocks.1.0"), _launch(1, 4.5, 0, layer="blocks.1.0"),
                _launch(2, 2.0, 0, layer="blocks.1.1")]
    assert layer_times({"launches": launches}) == {"blocks.1.0": 7.5, "blocks.1.1": 2.0}
