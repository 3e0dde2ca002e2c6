"""The static sm_90 kernel report (fastmbconv.kernel_report).

The parser, the time model and the specialisation are tested in test_kernel_report_sass.py.
Compiling needs the Triton interpreter off, so the CLI and the known bloated-vs-lean case run in
subprocesses (the CLI is launched with the interpreter on, which also covers its re-run without
it). Compiles are cached on disk, keyed by triton's compile key and the analyser's own source,
so repeated runs are fast and never reuse results of older parser code.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastmbconv.roofline import roofline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_LAUNCH_KEYS = ("op", "layer", "ksize", "registers", "spill_bytes", "instructions_per_output", "hbm_bytes",
                        "modelled_us")
VIEW_OR_ALLOC = ("view", "_unsafe_view", "slice", "permute", "t", "expand", "as_strided", "empty", "empty_strided",
                 "detach", "reshape", "unsqueeze", "select")
LEAN_K3_RANGE = (35, 140)  # per output: around FIELD_NOTES' ~72 for a lean k=3 depthwise
REQUIRED_TOTALS = ("launches", "modelled_ms", "layer_fused_floor_ms", "floor_ratio", "max_spill_bytes", "memory_ms",
                   "issue_ms", "tensor_ms", "sfu_ms", "launch_overhead_ms", "residency_extra_ms",
                   "launches_below_full_rate_warps")



def _run(cmd, timeout=900, **kw):
    try:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{cmd[:4]} took over {timeout} s")
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.subprocess
def test_cli_b0_batch1_writes_report(tmp_path):
    """The CLI on B0 at batch 1 (64 px, fixed configs: a smoke run), started with the
    interpreter on as the test suite has it: it must re-run itself without."""
    out_json, out_md = tmp_path / "report.json", tmp_path / "report.md"
    env = dict(os.environ, TRITON_INTERPRET="1")
    _run([sys.executable, "-m", "fastmbconv.kernel_report", "--model", "efficientnet_b0", "--batch", "1",
          "--dtype", "fp16", "--resolution", "64", "--configs", "fixed", "--json", str(out_json), "--md", str(out_md)],
         env=env)
    report = json.loads(out_json.read_text())
    assert report["triton_version"] and report["batch"] == 1
    totals = report["totals"]
    assert all(k in totals for k in REQUIRED_TOTALS)
    assert totals["launches"] == len(report["launches"]) > 0
    assert totals["modelled_ms"] > 0 and totals["layer_fused_floor_ms"] > 0 and totals["floor_ratio"] > 0
    for row in report["launches"]:
        missing = [k for k in REQUIRED_LAUNCH_KEYS if k not in row]
        assert not missing, f"launch {row.get('index')} lacks {missing}"
        assert row["modelled_us"] > 2.0 and row["hbm_bytes"] >= 0
    triton = [r for r in report["launches"] if r["kind"] == "triton"]
    assert triton and all(r["registers"] for r in triton)  # every launch compiled
    # hints may be missing for a new op, but never stale: they fit the arguments and the SASS loops
    assert not [(r["op"], r["hints"]) for r in triton if r["hints"].startswith("failed")]
    assert not [(r["op"], f) for r in triton if r["hints"] == "ok" for f in r["flags"] if "hint" in f]
    assert all(r["instructions_per_output"] for r in triton if r["hints"] == "ok")
    assert all(r["hints"] == "ok" for r in triton if r["op"] == "dwconv_bn_act")
    assert {r["op"] for r in triton} >= {"stem_conv_bn_act", "dwconv_bn_act", "pointwise_gated", "squeeze_excite_gate",
                                         "pointwise_gated[pool]"}
    assert all(r["hints"] == "ok" for r in triton)
    # both kernel sizes of the depthwise convs (at 64 px the rule fuses every 5x5 block)
    assert {r["ksize"] for r in triton if r["op"] in ("dwconv_bn_act", "expand_dwconv")} == {3, 5}
    assert abs(sum(r["modelled_us"] for r in report["launches"]) / 1e3 - totals["modelled_ms"]) < 1e-9
    floor = roofline("efficientnet_b0", 64, 1, "fp16").bytes("layer_fused") / 3.0e12 * 1e3
    assert totals["layer_fused_floor_ms"] == pytest.approx(floor)
    assert totals["floor_ratio"] == pytest.approx(totals["modelled_ms"] / floor)
    # the modelled time's parts: each summed over the launches, no larger than the whole, and
    # the whole no larger than their sum (each launch takes the largest of its parts)
    parts = [totals[k] for k in ("memory_ms", "issue_ms", "tensor_ms", "sfu_ms")]
    assert totals["memory_ms"] == pytest.approx(sum(r["hbm_bytes"] for r in report["launches"]) / 3.0e9)
    assert totals["issue_ms"] == pytest.approx(sum(r.get("warp_instructions") or 0 for r in triton) / 9.2664e11 * 1e3)
    assert totals["sfu_ms"] == pytest.approx(sum(r.get("mufu_warp_instructions") or 0 for r in triton) * 32
                                             / (132 * 16 * 1.755e9) * 1e3)
    assert all(r["mufu_warp_instructions"] > 0 for r in triton if r["op"] == "dwconv_bn_act")  # its SiLU
    assert totals["launch_overhead_ms"] == pytest.approx(totals["launches"] * 2e-3)
    assert min(parts) > 0 and max(parts) + totals["launch_overhead_ms"] <= totals["modelled_ms"] * (1 + 1e-9)
    assert totals["modelled_ms"] <= (sum(parts) + totals["launch_overhead_ms"] + totals["residency_extra_ms"]) \
        * (1 + 1e-9)
    # two programs per SM wherever the persistent grid counts on them
    assert totals["launches_below_full_rate_warps"] == 0, [(r["layer"], r["op"], r["flags"]) for r in triton
                                                           if r.get("residency_extra_us")]
    torch_ops = [r for r in report["launches"] if r["kind"] == "torch"]
    assert {r["op"] for r in torch_ops} == {"torch:addmm"}  # the classifier: everything else is Triton
    assert "torch:sqrt" not in {r["op"] for r in torch_ops}  # BN is folded once, not per forward
    assert not {r["op"] for r in torch_ops} & {f"torch:{n}" for n in VIEW_OR_ALLOC}
    assert all(r["fill"] for r in torch_ops if r["op"] in ("torch:zeros", "torch:fill_", "torch:zero_", "torch:full"))
    assert totals["fill_launches"] == sum(r["fill"] for r in torch_ops)
    assert "static model, not a measurement" in out_md.read_text().lower()


BLOATED_VS_LEAN = textwrap.dedent("""
    import dataclasses, json
    import torch
    import triton
    import triton.language as tl
    from fastmbconv.kernels._launch import LaunchRecord
    from fastmbconv.kernel_report import ops
    from fastmbconv.kernel_report.build import triton_rows

    @triton.jit
    def dw_probe(x_ptr, w_ptr, out_ptr, H, W, C, KSIZE: tl.constexpr, IN_ACT: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        # NHWC depthwise kxk, stride 1, zero padding k // 2; IN_ACT applies SiLU to every tap
        n = tl.program_id(2)
        offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = offs_p < H * W
        c_ok = offs_c < C
        oh = offs_p // W
        ow = offs_p % W
        acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for ki in tl.static_range(KSIZE):
            for kj in tl.static_range(KSIZE):
                ih = oh + ki - KSIZE // 2
                iw = ow + kj - KSIZE // 2
                ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                ptrs = x_ptr + ((n * H + ih) * W + iw)[:, None] * C + offs_c[None, :]
                xv = tl.load(ptrs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
                if IN_ACT:
                    xv = xv * tl.sigmoid(xv)
                wv = tl.load(w_ptr + offs_c * (KSIZE * KSIZE) + ki * KSIZE + kj, mask=c_ok, other=0.0)
                acc += xv * wv[None, :]
        out = out_ptr + (n * H * W + offs_p)[:, None] * C + offs_c[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])

    ops.HINTS["dw_probe"] = lambda a: ops.Hints(outputs=a["out_ptr"].numel(), ksize=a["KSIZE"], weights=("w_ptr",))
    ops.HINTS["misfit_probe"] = lambda a: ops.Hints(outputs=a["no_such_argument"].numel())
    x = torch.empty(8, 56, 56, 96, device="meta", dtype=torch.float16)
    args = dict(x_ptr=x, w_ptr=torch.empty(96, 9, device="meta"), out_ptr=torch.empty_like(x), H=56, W=56, C=96)
    lean = LaunchRecord("dw_probe", "probe", dw_probe, (98, 2, 8), args,
                        dict(KSIZE=3, IN_ACT=0, BLOCK_P=32, BLOCK_C=64, num_warps=4))
    bloated = dataclasses.replace(lean, constexprs={**lean.constexprs, "IN_ACT": 1})
    # the same launch under an op name without hints, and under one whose hints do not fit
    unknown = dataclasses.replace(lean, op="op_without_hints")
    misfit = dataclasses.replace(lean, op="misfit_probe")
    rows, _ = triton_rows([bloated, lean, unknown, misfit], None)
    keys = ("instructions_per_output", "per_output_by_class", "ksize", "hints", "modelled_us", "warp_instructions",
            "flags")
    print(json.dumps([{k: r[k] for k in keys} for r in rows]))
""")


@pytest.mark.subprocess
def test_bloated_depthwise_shows_more_instructions_per_output(tmp_path):
    """The known case (FIELD_NOTES section 9): SiLU applied per tap (IN_ACT=1) costs a MUFU.EX2 +
    MUFU.RCP and ALU work per tap, so the same depthwise launch shows far more instructions per
    output than with IN_ACT=0. The kernel lives here, so the case outlives kernel rewrites."""
    script = tmp_path / "bloated_vs_lean.py"  # triton reads a kernel's source from its file
    script.write_text(BLOATED_VS_LEAN)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = _run([sys.executable, str(script)], env=env)
    bloated, lean, unknown, misfit = json.loads(result.stdout.strip().splitlines()[-1])
    assert bloated["ksize"] == lean["ksize"] == 3
    assert bloated["instructions_per_output"] > 1.5 * lean["instructions_per_output"], (bloated, lean)
    assert LEAN_K3_RANGE[0] < lean["instructions_per_output"] < LEAN_K3_RANGE[1]
    k2 = bloated["ksize"] ** 2
    assert bloated["per_output_by_class"]["mufu"] >= lean["per_output_by_class"].get("mufu", 0) + k2

    # an op without (fitting) hints is still reported from its SASS and tensors, and says so
    for row, status in ((unknown, "none"), (misfit, "failed")):
        assert row["hints"].startswith(status) and row["instructions_per_output"] is None and row["flags"]
        assert row["warp_instructions"] == lean["warp_instructions"] and row["modelled_us"] == lean["modelled_us"]


def test_torch_kernels_are_seen_as_on_cuda():
    """Meta's convolution returns NCHW; cuDNN returns channels_last for a channels_last input, and
    the kernels after it are specialised on those strides. Views, allocations and empty tensors
    launch nothing; fills are flagged."""
    from fastmbconv.kernel_report.record import TorchKernels

    x = torch.empty(2, 3, 32, 32, device="meta", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = torch.empty(8, 3, 3, 3, device="meta", dtype=torch.float16)
    x_nchw = x.contiguous()
    with TorchKernels([]) as mode:
        y = torch.nn.functional.conv2d(x, w, stride=2, padding=1)
        y_nchw = torch.nn.functional.conv2d(x_nchw, w)
        y.permute(0, 2, 3, 1).reshape(2, -1)  # views
        torch.empty(5, device="meta")
        torch.zeros(0, device="meta")  # nothing to fill
        pool = torch.zeros(2, 8, device="meta")
    assert y.is_contiguous(memory_format=torch.channels_last) and y.stride()[1] == 1
    assert y_nchw.is_contiguous()
    assert [k.name for k in mode.kernels] == ["convolution", "convolution", "zeros"] and mode.kernels[0].note
    assert [k.fill for k in mode.kernels] == [False, False, True] and mode.kernels[2].hbm_bytes == pool.numel() * 4


def test_pointwise_choice_is_asked_as_on_cuda(monkeypatch):
    """Inside record_launches() a meta tensor gets the CUDA answer (here: the forced fallback)."""
    from fastmbconv.kernels._launch import record_launches
    from fastmbconv.kernels.pointwise_gated import choose_pointwise_impl

    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "torch")
    assert choose_pointwise_impl(49, 1152, 192, torch.float16, "meta") == "triton"
    with record_launches():
        assert choose_pointwise_impl(49, 1152, 192, torch.float16, "meta") == "torch"


@pytest.mark.subprocess
def test_importing_the_report_does_not_import_triton():
    code = "import sys, fastmbconv, fastmbconv.kernel_report; print('triton' in sys.modules)"
    assert _run([sys.executable, "-c", code], timeout=300).stdout.strip() == "False"


AUTOTUNED_PROBE = textwrap.dedent("""
    import json
    import torch
    import triton
    import triton.language as tl
    from fastmbconv.kernels._launch import LaunchRecord
    from fastmbconv.kernel_report import ops
    from fastmbconv.kernel_report.build import triton_rows

    @triton.jit
    def double_rows(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        for c0 in range(0, n_cols, BLOCK):
            offs = c0 + tl.arange(0, BLOCK)
            keep = offs < n_cols
            v = tl.load(x_ptr + row * n_cols + offs, mask=keep).to(tl.float32)
            for _ in tl.static_range(16):  # enough FMAs per element to be issue-bound (no MUFU)
                v = v * v * 0.5 + v
            tl.store(out_ptr + row * n_cols + offs, v.to(tl.float16), mask=keep)

    configs = [triton.Config({"BLOCK": 64}, num_warps=1), triton.Config({"BLOCK": 256}, num_warps=2)]
    tuned = triton.autotune(configs=configs, key=["n_cols"])(double_rows)
    ops.HINTS["double_rows"] = lambda a: ops.Hints(outputs=a["out_ptr"].numel(),
                                                   loops=[ops.cdiv(a["n_cols"], a["BLOCK"])])
    x = torch.empty(8, 4096, device="meta", dtype=torch.float16)
    args = dict(x_ptr=x, out_ptr=torch.empty_like(x), n_cols=4096)
    grid = lambda meta: (8, meta["BLOCK"] // 64)
    launch = LaunchRecord("double_rows", "probe", tuned, grid, args, {})
    fixed = LaunchRecord("double_rows", "probe", double_rows, grid, args, {"BLOCK": 128, "num_warps": 4})
    rows, _ = triton_rows([launch], [fixed])
    print(json.dumps(rows[0]))
""")


@pytest.mark.subprocess
def test_autotuned_launch_reports_every_config(tmp_path):
    """Each config of an Autotuner compiles with its own kwargs and warps, gets its own grid
    from the grid callable and its own loop passes from the hints; the launch shows the config
    with the lowest modelled time, and the FASTMBCONV_AUTOTUNE=0 counterpart separately."""
    script = tmp_path / "probe.py"  # triton reads a kernel's source from its file
    script.write_text(AUTOTUNED_PROBE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    row = json.loads(_run([sys.executable, str(script)], env=env).stdout.strip().splitlines()[-1])
    configs = row["configs"]
    assert [(c["config"]["BLOCK"], c["num_warps"], c["grid"]) for c in configs] == [(64, 1, [8, 1, 1]),
                                                                                     (256, 2, [8, 4, 1])]
    for c in configs:
        (loop,) = c["loops"]
        assert loop["passes_per_warp"] == -(-(4096 // c["config"]["BLOCK"]) // loop["unroll"])
        assert c["instructions_per_warp"] > c["static_instructions"] and c["hbm_bytes"] == 2 * 8 * 4096 * 2
        assert not any("hinted" in f for f in c["flags"]), c["flags"]
    assert all(c["bound_by"] == "issue" for c in configs)
    assert configs[0]["modelled_us"] != configs[1]["modelled_us"]
    best = min(range(2), key=lambda i: configs[i]["modelled_us"])
    assert row["chosen_config"] == best and row["modelled_us"] == configs[best]["modelled_us"]
    assert row["fixed_config"]["config"]["BLOCK"] == 128 and row["fixed_config"]["num_warps"] == 4
