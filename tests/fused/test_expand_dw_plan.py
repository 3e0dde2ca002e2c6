"""The per-layer expand + depthwise plan (fastmbconv.fused.layer_plan) and the fused model with
``expand_dwconv`` in it: launch counts prove the op ran on exactly the blocks the plan chose,
outputs match the reference, the whole model still compiles as one graph."""
import json
import re

import pytest
import torch

import fastmbconv as fm
from fastmbconv.fused import layer_plan
from fastmbconv.kernels._launch import count_launches, record_launches
from fastmbconv.kernels.testing import assert_close_to_ref
from fastmbconv.shapes import walk

from ..helpers import DEVICE, blocks_with_expand, compile_fullgraph, randomize_bn, reference_forward

pytestmark = pytest.mark.usefixtures("pointwise_on_triton")


def b0(size, **kw):
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet_b0(num_classes=10, **kw), size=size).eval().to(DEVICE)


@pytest.fixture
def table(monkeypatch):
    """Replace the committed plan table with the entries a test gives, on a machine with
    triton 3.9."""
    def use(entries):
        monkeypatch.setattr(layer_plan, "load_table", lambda path=layer_plan.TABLE: entries)
    monkeypatch.delenv(layer_plan.ENV_VAR, raising=False)
    monkeypatch.setattr(layer_plan, "TRITON_RELEASE", "3.9")
    return use


def modelled(fused, separate, release="3.9", **record):
    """A table entry with one release's modelled times."""
    return {"modelled": {release: {"modelled_us": {"fused": fused, "separate": separate}, **record}}}


@pytest.mark.interpreter
@pytest.mark.parametrize("pad_mode,ragged", [("symmetric", False), ("same", True)])
def test_forced_fused_b0_matches_reference(pad_mode, ragged, monkeypatch):
    """FASTMBCONV_EXPAND_DW=fused: every block with an expand conv runs expand_dwconv (15 in B0)
    instead of its expand pointwise + depthwise pair; logits match the reference."""
    monkeypatch.setenv(layer_plan.ENV_VAR, "fused")
    model = b0((29, 23), pad_mode=pad_mode)
    x = torch.randn(2, 3, 29, 23, device=DEVICE)
    sizes = torch.tensor([[29, 23], [13, 18]]) if ragged else None
    with torch.inference_mode():
        ref = reference_forward(lambda: model(x, valid_sizes=sizes))
        with fm.use_backend("fused"), count_launches() as launches:
            out = model(x, valid_sizes=sizes)
    n = blocks_with_expand(model)
    assert n == 15
    assert dict(launches) == {"stem_conv_bn_act": 1, "expand_dwconv": n, "dwconv_bn_act": 16 - n,
                              "squeeze_excite_gate": 16, "pointwise_gated": 16 + 1, "pointwise_gated[pool]": 1}
    assert_close_to_ref(out, ref, what="B0 logits with every expand + depthwise fused")


def test_the_plan_decides_which_blocks_run_fused(table):
    """With the plan table saying "fused" for two geometries, exactly the blocks of those
    geometries launch expand_dwconv (recorded per layer on meta tensors)."""
    model = fm.efficientnet_b0().eval()
    layers = {l.name: l for l in walk(model, 64, 64) if l.kind == "block"}
    chosen = {layer_plan.layer_key(layers[n], torch.float32) for n in ("blocks.1.0", "blocks.4.1")}
    table({key: modelled(1.0, 2.0) for key in chosen}
          | {layer_plan.layer_key(layers["blocks.3.0"], torch.float32): modelled(3.0, 2.0)})
    x = torch.empty(2, 3, 64, 64, device="meta")
    with torch.no_grad(), fm.use_backend("fused"), record_launches() as recorded:
        model.to("meta")(x)
    fused_layers = {r.layer for r in recorded if r.op == "expand_dwconv"}
    expected = {n for n, l in layers.items() if layer_plan.layer_key(l, torch.float32) in chosen}
    assert fused_layers == expected and "blocks.4.2" in expected  # 4.1 and 4.2 share a geometry
    dw_layers = {r.layer for r in recorded if r.op == "dwconv_bn_act"}
    assert not fused_layers & dw_layers and len(fused_layers | dw_layers) == 16
    rows = {r["layer"]: r for r in layer_plan.plan_rows(model, 64, 64, torch.float32)}
    assert {n for n, r in rows.items() if r["expand_dw"] == "fused"} == expected
    assert rows["blocks.1.0"]["why"] == rows["blocks.3.0"]["why"] == "table (modelled, triton 3.9)"
    assert rows["blocks.0.0"]["why"] == "no expand" and rows["blocks.6.0"]["why"] == "rule"


def test_measured_times_beat_modelled_ones(table):
    model = fm.efficientnet_b0()
    layer = next(l for l in walk(model, 224, 224) if l.name == "blocks.2.0")
    key = layer_plan.layer_key(layer, torch.float16)
    table({key: {**modelled(1.0, 2.0), "measured_us": {"fused": 5.0, "separate": 4.0}}})
    assert layer_plan.explain(layer, torch.float16) == ("separate", "table (measured)")
    table({key: {**modelled(1.0, 2.0), "measured_us": {"fused": 5.0}}})
    assert layer_plan.explain(layer, torch.float16) == ("fused", "table (modelled, triton 3.9)")
    for unusable in ({"modelled": {"3.9": {"modelled_us": {"fused": "n/a"}}}}, {"modelled": {}},
                     {"modelled": {"3.9": "n/a"}}, {"modelled_us": {"fused": 1.0, "separate": 2.0}}):
        table({key: unusable})  # the rule decides
        assert layer_plan.explain(layer, torch.float16) == (layer_plan._rule(layer, torch.float16), "rule")


def test_a_machine_takes_its_own_tritons_modelled_times(table, monkeypatch):
    """The same kernels compile differently with each Triton release: the installed release's
    times decide where the entry has them, else the newest release's (3.10 is newer than 3.9)."""
    model = fm.efficientnet_b0()
    layer = next(l for l in walk(model, 224, 224) if l.name == "blocks.4.1")
    key = layer_plan.layer_key(layer, torch.float16)
    entry = {"modelled": {"3.6": {"modelled_us": {"fused": 180.0, "separate": 158.0}},
                          "3.9": {"modelled_us": {"fused": 153.0, "separate": 158.0}}}}
    table({key: entry})
    newest = ("fused", "table (modelled, triton 3.9)")
    for release, want in (("3.6", ("separate", "table (modelled, triton 3.6)")), ("3.9", newest), ("3.7", newest),
                          (None, newest)):
        monkeypatch.setattr(layer_plan, "TRITON_RELEASE", release)
        assert layer_plan.explain(layer, torch.float16) == want, release
    newer = {"modelled": {**entry["modelled"], "3.10": {"modelled_us": {"fused": 200.0, "separate": 100.0}}}}
    assert layer_plan.modelled_record(newer, "3.8")[0] == "3.10"
    assert layer_plan.table_choice(newer, "3.8") == "separate" and layer_plan.table_choice(newer, "3.9") == "fused"
    assert layer_plan.installed_triton_release() in (None, ".".join(__import__("triton").__version__.split(".")[:2]))


def test_a_way_that_spills_is_not_chosen_by_its_modelled_time():
    assert layer_plan.table_choice(modelled(90.0, 100.0)) == "fused"
    assert layer_plan.table_choice(modelled(90.0, 100.0, spill_bytes={"fused": 16, "separate": 0})) == "separate"
    both = {"fused": 16, "separate": 8}  # both spill: the faster again
    assert layer_plan.table_choice(modelled(90.0, 100.0, spill_bytes=both)) == "fused"
    measured = {"fused": 80.0, "separate": 85.0}  # a GPU's times decide, spills or not
    assert layer_plan.table_choice({**modelled(90.0, 100.0, spill_bytes={"fused": 16}), "measured_us": measured}) \
        == "fused"


def test_a_way_that_cannot_run_is_never_chosen():
    """A way whose kernel needs more shared memory than an SM has is listed under ``fails``
    with no time, and the other way is chosen however slow."""
    from fastmbconv.kernel_report.plan_table import layer_times
    report = {"launches": [{"layer": "blocks.2.1", "modelled_us": 50.0}, {"layer": "blocks.2.1", "modelled_us": None,
                                                                          "error": "needs 240000 B"},
                           {"layer": "blocks.2.1", "modelled_us": 5.0}, {"layer": "blocks.3.0", "modelled_us": 7.0}]}
    assert layer_times(report) == {"blocks.2.1": None, "blocks.3.0": 7.0}
    record = {"modelled_us": {"fused": None, "separate": 900.0}, "fails": ["fused"]}
    assert layer_plan.record_choice(record) == "separate"
    assert layer_plan.record_choice({"modelled_us": {"fused": None, "separate": None},
                                     "fails": ["fused", "separate"]}) is None
    assert layer_plan.record_choice({"modelled_us": {"fused": None, "separate": 900.0}}) is None  # incomplete


def test_plan_table_records_each_ways_spills():
    from fastmbconv.kernel_report.plan_table import layer_spills
    report = {"launches": [{"layer": "blocks.1.0", "spill_bytes": 0}, {"layer": "blocks.1.0", "spill_bytes": 24},
                           {"layer": "blocks.1.1", "spill_bytes": None}, {"layer": None, "spill_bytes": 8}]}
    assert layer_spills(report) == {"blocks.1.0": 24, "blocks.1.1": 0}


def test_env_var_forces_either_way_and_rejects_typos(monkeypatch):
    model = fm.efficientnet_b0()
    layers = [l for l in walk(model, 224, 224) if l.kind == "block"]
    for choice in layer_plan.CHOICES:
        monkeypatch.setenv(layer_plan.ENV_VAR, choice)
        assert {layer_plan.explain(l, torch.float16) for l in layers if l.has_expand} == {(choice, "env")}
        assert layer_plan.explain(layers[0], torch.float16) == ("separate", "no expand")
    monkeypatch.setenv(layer_plan.ENV_VAR, "fuse")
    with pytest.raises(ValueError, match="FASTMBCONV_EXPAND_DW must be one of"):
        layer_plan.explain(layers[1], torch.float16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_committed_table_is_consistent_and_covers_b0(dtype):
    """Every release's choice is its faster way that does not spill; every B0 224px block with
    an expand conv has an entry in fp16, bf16 and fp32, modelled with triton 3.9 at least; the
    rule agrees with the newest release's choices on B0 (it stands in for geometries without an
    entry)."""
    raw = json.loads(layer_plan.TABLE.read_text())
    for key, entry in raw["entries"].items():
        assert entry["modelled"], key
        for release, record in entry["modelled"].items():
            assert record["choice"] == layer_plan.record_choice(record), (key, release)
    layer_plan.load_table.cache_clear()
    model = fm.efficientnet_b0()
    for layer in walk(model, 224, 224):
        if layer.kind == "block" and layer.has_expand:
            entry = layer_plan.load_table().get(layer_plan.layer_key(layer, dtype))
            assert entry is not None and "3.9" in entry["modelled"], layer.name
            _, newest = layer_plan.modelled_record(entry, "0.0")
            assert layer_plan._rule(layer, dtype) == newest["choice"], layer.name


# Triton 3.8's fp32 fused kernel spills 8-24 B at three geometries whose neighbours (other map
# sizes, same channels) do not spill, under 3.8 or any other release: no rule by channels and
# map size can tell them apart, and the table's own 3.8 records keep them separate
RULE_BLIND_SPILLS = {("24-144-k3-s2-228x228-float32", "3.8"), ("40-240-k3-s2-30x30-float32", "3.8"),
                     ("40-240-k5-s2-132x132-float32", "3.8")}


def test_the_rule_never_fuses_a_geometry_whose_fused_kernel_spilled():
    """The rule stands in for geometries without an entry (other resolutions): wherever the
    table saw the fused kernel spill (but for RULE_BLIND_SPILLS, each checked to still be
    one), the rule keeps the block separate."""
    from fastmbconv.shapes import LayerShape
    raw = json.loads(layer_plan.TABLE.read_text())
    spilled, blind = 0, set()
    for key, entry in raw["entries"].items():
        c_in, mid, k, s, h, w, dtype = re.fullmatch(r"(\d+)-(\d+)-k(\d)-s(\d)-(\d+)x(\d+)-(\w+)", key).groups()
        rule = layer_plan._rule(LayerShape("b", "block", int(c_in), int(c_in), int(k), int(s), int(h), int(w),
                                           int(mid), has_expand=True), getattr(torch, dtype))
        for release, record in entry["modelled"].items():
            spills = record.get("spill_bytes") or {}
            if not (spills.get("fused") and not spills.get("separate")):
                continue
            if rule == "fused" and (key, release) in RULE_BLIND_SPILLS:
                blind.add((key, release))
                continue
            assert rule == "separate", (key, release)
            spilled += 1
    assert blind == RULE_BLIND_SPILLS
    assert spilled >= 10  # B0-B7 fp32 have such geometries


@pytest.mark.parametrize("dtype, c_in, mid, k, s, side, expected", [
    # fp16/bf16: separate from 1300 expanded channels on maps of 12 and up
    (torch.float16, 96, 1300, 3, 1, 12, "separate"), (torch.bfloat16, 96, 1300, 3, 1, 11, "fused"),
    (torch.float16, 96, 1299, 5, 2, 40, "fused"),
    # fp32: 3x3 on maps of 28 and up, at most 48 input channels (40 at stride 2); 5x5 stride 2 from 56
    (torch.float32, 48, 288, 3, 1, 28, "fused"), (torch.float32, 48, 288, 3, 1, 27, "separate"),
    (torch.float32, 49, 294, 3, 1, 28, "separate"), (torch.float32, 40, 240, 3, 2, 28, "fused"),
    (torch.float32, 41, 246, 3, 2, 28, "separate"), (torch.float32, 96, 576, 5, 2, 56, "fused"),
    (torch.float32, 96, 576, 5, 2, 55, "separate"), (torch.float32, 24, 144, 5, 1, 56, "separate"),
])
def test_the_rule_at_its_boundaries(dtype, c_in, mid, k, s, side, expected):
    from fastmbconv.shapes import LayerShape

    layer = LayerShape("b", "block", c_in, c_in, k, s, side, side + 9, mid, has_expand=True)
    assert layer_plan._rule(layer, dtype) == expected


def test_unreadable_table_falls_back_to_the_rule(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    assert layer_plan.load_table(bad) == {}
    bad.write_text(json.dumps({"entries": ["a list"]}))
    assert layer_plan.load_table(bad) == {}
    assert layer_plan.load_table(tmp_path / "missing.json") == {}


def test_plan_table_merge_keeps_measured_times_and_other_models(tmp_path):
    from fastmbconv.kernel_report.plan_table import merge_into

    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"entries": {
        "a": {**modelled(1, 2), "measured_us": {"fused": 3, "separate": 1}, "measured_source": "H200, ncu",
              "layers": ["efficientnet_b1.blocks.1.0"]},
        "b": {**modelled(1, 2, "3.6"), "layers": ["efficientnet_b1.blocks.2.0"]}}}))
    new = {"entries": {"a": {**modelled(5, 4, choice="separate"), "layers": ["efficientnet_b0.blocks.1.0"]},
                       "b": {**modelled(7, 8, choice="fused"), "layers": ["efficientnet_b1.blocks.2.0"]}},
           "totals": {"efficientnet_b0 batch 256": {}}}
    out = merge_into(path, new)
    a, b = out["entries"]["a"], out["entries"]["b"]
    assert a["measured_us"] == {"fused": 3, "separate": 1} and a["measured_source"] == "H200, ncu"
    assert a["modelled"] == {"3.9": {"modelled_us": {"fused": 5, "separate": 4}, "choice": "separate"}}
    assert a["layers"] == ["efficientnet_b0.blocks.1.0", "efficientnet_b1.blocks.1.0"]
    assert list(b["modelled"]) == ["3.6", "3.9"]  # another release's times stay beside the new ones
    assert b["modelled"]["3.6"]["modelled_us"] == {"fused": 1, "separate": 2}
    assert json.loads(path.read_text()) == out


@pytest.mark.interpreter
@pytest.mark.parametrize("plan", ["fused", "auto"])
def test_whole_b0_with_fused_blocks_compiles_as_one_graph(monkeypatch, plan):
    """torch.compile(fullgraph=True) with expand_dwconv in every block that has an expand conv,
    and with the default plan (which reads the committed table: dynamo cannot trace its file
    read, so the choice is a constant of the trace): no graph break, the plan's launches,
    output equal to eager."""
    monkeypatch.setenv(layer_plan.ENV_VAR, plan)
    model = b0(17)
    fused = sum(r["expand_dw"] == "fused" for r in layer_plan.plan_rows(model, 17, 17, torch.float32))
    eager, _, out, launches = compile_fullgraph(model, torch.randn(1, 3, 17, 17, device=DEVICE))
    torch._dynamo.reset()
    assert fused == (15 if plan == "fused" else 0)  # at 17 px in fp32 the rule keeps every block separate
    assert launches["expand_dwconv"] == fused and launches["dwconv_bn_act"] == 16 - fused
    assert_close_to_ref(out, eager, what="compiled B0 with fused expand + depthwise")


GPUS = {  # shared memory per SM and per program, compute capability
    "h100": (228 * 1024, 227 * 1024, (9, 0)), "sm_86": (100 * 1024, 99 * 1024, (8, 6)),
    "t4": (64 * 1024, 64 * 1024, (7, 5)), "64k_sm_80": (64 * 1024, 64 * 1024, (8, 0)),
}


@pytest.fixture
def gpu_shared(monkeypatch):
    """A CUDA device of the given shared memory and compute capability, as the launchers see it."""
    from types import SimpleNamespace

    from fastmbconv.kernels import _expand_dw_tiles as tiles
    from fastmbconv.kernels import _utils

    def use(name):
        per_sm, per_program, capability = GPUS[name]
        props = SimpleNamespace(shared_memory_per_multiprocessor=per_sm, shared_memory_per_block_optin=per_program)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
        monkeypatch.setattr(tiles, "interpreting", lambda: False)
        monkeypatch.setattr(_utils, "interpreting", lambda: False)
        _utils._cuda_shared_limits.cache_clear()
        _utils.cuda_capability.cache_clear()
        return torch.device("cuda", 0)
    yield use
    _utils._cuda_shared_limits.cache_clear()
    _utils.cuda_capability.cache_clear()


def test_shared_budget_comes_from_the_device(gpu_shared):
    from fastmbconv.kernels import _expand_dw_tiles as tiles

    assert tiles.shared_budget(torch.device("meta")) == tiles.SHARED_BUDGET == 107520  # an H100's
    assert tiles.shared_budget(gpu_shared("h100")) == 107520
    assert tiles.shared_budget(gpu_shared("sm_86")) == 100 * 1024 // 2 - 1024 - 8192
    # B0's 2.1 (25 taps of 64 channels): 4 windows a group on an H100, 1 where half an SM is 50 KiB
    assert tiles.taps_group(64, 64, 32, 40, 5, True, tiles.shared_budget(gpu_shared("sm_86"))) == 1


def test_persistent_programs_read_each_gpus_sm_count_once(monkeypatch):
    """Two programs per SM of the launch's own GPU, its properties asked once per device: every
    expand_dwconv launch needs the count, and the host time of a batch-1 forward is all launches."""
    from types import SimpleNamespace

    from fastmbconv.kernels import _expand_dw_tiles as tiles

    asked = []

    def properties(index):
        asked.append(index)
        return SimpleNamespace(multi_processor_count={0: 132, 1: 40}[index])

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(tiles, "interpreting", lambda: False)
    tiles._cuda_sm_count.cache_clear()
    try:
        for _ in range(3):
            assert tiles.persistent_programs(torch.device("cuda", 0), 10_000, 4) == 66
            assert tiles.persistent_programs(torch.device("cuda"), 10_000, 4) == 20  # the current GPU's
        assert tiles.persistent_programs(torch.device("cuda", 0), 7, 4) == 7  # never more than the tiles
        assert tiles.persistent_programs(torch.device("cuda", 1), 10_000, 200) == 1
        assert tiles.persistent_programs(torch.device("meta"), 10_000, 4) == 66  # an H100's 132 SMs
    finally:
        tiles._cuda_sm_count.cache_clear()
    assert asked == [0, 1]


def test_blocks_whose_fused_program_cannot_fit_the_gpu_run_separate(table, gpu_shared, monkeypatch):
    """With 64 KiB per program, B0's 2.x and 6.0 (25 taps of 64 channels, 192 input channels)
    cannot keep even one window beside their weights; on an H100 every block fits. Before sm_80
    (a T4) no 16-bit block fuses: Triton's sm_75 code keeps about twice the model's shared memory.
    With the taps' layout of triton 3.9 and later (before it, each warp's batch keeps its own
    diagonal blocks, and more blocks run separate on such a GPU)."""
    from fastmbconv.kernels import _expand_dw_tiles as tiles

    monkeypatch.setattr(tiles, "TAPS_WARPS_ON_BATCH", False)
    table({})
    with torch.device("meta"):
        model = fm.efficientnet_b0()
    layers = [l for l in walk(model, 224, 224) if l.has_expand]
    every = {l.name for l in layers}
    for name, separate in (("h100", set()), ("sm_86", set()), ("64k_sm_80", {"blocks.2.0", "blocks.2.1", "blocks.6.0"}),
                           ("t4", every)):
        device = gpu_shared(name)
        why = {l.name: layer_plan.explain(l, torch.float16, device) for l in layers}
        assert {n for n, w in why.items() if w == ("separate", "shared memory")} == separate, name
        assert {l.name for l in layers if layer_plan.expand_dw_choice(l, torch.float16, device) == "separate"} >= separate
    assert all(layer_plan.explain(l, torch.float32, gpu_shared("t4"))[1] != "shared memory" for l in layers)
    rows = layer_plan.plan_rows(model, 224, 224, torch.float16, gpu_shared("t4"))
    assert {r["layer"] for r in rows if r["why"] == "shared memory"} == every


def test_the_launcher_sizes_its_groups_for_the_device(monkeypatch):
    """expand_dwconv's TAPS_GROUP comes from the budget of x's device (recorded on meta, with
    the GPU's tiles)."""
    from fastmbconv.kernels import _expand_dw_tiles as tiles
    from fastmbconv.kernels import expand_dwconv as op
    from fastmbconv.kernels.dwconv_bn_act import taps_diag

    monkeypatch.setattr(tiles, "interpreting", lambda: False)
    C_in, C, k = 40, 240, 5
    x = torch.empty(2, C_in, 28, 28, device="meta", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w_dw = tiles.pad_taps(taps_diag(torch.empty(k * k, C, device="meta"), torch.float16))
    v = torch.empty(C, device="meta")
    th, tw, bc, bk = tiles.blocks_for(28, 28, C_in, C, k, 1, torch.float16)
    groups = {}
    for budget in (tiles.SHARED_BUDGET, 40 * 1024):
        monkeypatch.setattr(op, "shared_budget", lambda device: budget)
        with record_launches() as launches:
            op.expand_dwconv(x, torch.empty(C, C_in, device="meta", dtype=torch.float16), v, w_dw, v, v, (2, 2, 2, 2), 1)
        groups[budget] = launches[0].constexprs["TAPS_GROUP"]
        assert groups[budget] == tiles.taps_group(tiles.pixel_slots(th, tw), bc, bk, C_in, k, True, budget)
    assert groups[tiles.SHARED_BUDGET] > groups[40 * 1024]


def test_the_fused_forward_asks_whether_each_block_fits_its_device(monkeypatch):
    asked = []

    def fits(*args):
        asked.append(args[-1])
        return False

    monkeypatch.setattr(layer_plan, "fits_one_program", fits)
    # on meta, which the fused path plans for on any machine (a CPU tensor needs the interpreter,
    # which a GPU machine runs without)
    model = fm.efficientnet_b0(num_classes=10).eval().to("meta", torch.float16)
    with torch.no_grad(), fm.use_backend("fused"), record_launches() as launches:  # recorded: nothing runs
        model(torch.zeros(2, 3, 64, 64, dtype=torch.float16, device="meta"))
    assert len(asked) == 15 and {d.type for d in asked} == {"meta"}  # every block with an expand, on x's device
    assert not [r for r in launches if r.op == "expand_dwconv"]
