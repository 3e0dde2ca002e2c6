"""The published B0 numbers against an independent hand count (tests/b0_by_hand.py): parameters,
MACs, the bytes of every fusion level op for op, each dtype's element size, and the tables that
print them. The range checks in test_roofline.py let a dropped write or residual read through."""
import re

import pytest
import torch

import fastmbconv as fm
from fastmbconv import roofline as rl

from . import b0_by_hand as hand
from .helpers import EXPECTED_PARAMS

DTYPES = ["fp16", "bf16", "fp32", "float16", "bfloat16", torch.float16, torch.bfloat16, torch.float32]


def _itemsize(dtype) -> int:
    name = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}.get(dtype, dtype)
    return torch.empty((), dtype=getattr(torch, name) if isinstance(name, str) else name).element_size()


def test_hand_count_is_b0():
    # the hand model itself, against timm's parameter count and the paper's ~0.39 G multiply-adds
    assert hand.params() == EXPECTED_PARAMS["b0"] == fm.count_params(fm.efficientnet_b0())
    assert 0.38e9 <= sum(hand.macs(224).values()) <= 0.40e9


@pytest.mark.parametrize("resolution", [224, 97])
def test_flops_are_twice_the_hand_macs(resolution):
    macs = sum(hand.macs(resolution).values())
    assert rl.roofline("b0", resolution, batch=3).flops == 2 * 3 * macs
    assert fm.count_flops(fm.efficientnet_b0(), resolution) == 2 * macs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_level_matches_the_hand_count(dtype):
    """Exact bytes at 224 px, batch 3."""
    roof, want = rl.roofline("b0", 224, batch=3, dtype=dtype), hand.level_bytes(224, 3, _itemsize(dtype))
    for level in rl.LEVELS:
        assert roof.bytes(level) == want[level], level


def test_whole_block_weights_by_hand():
    """Weights once per forward: a block without an expand conv (B0's first) has no expand weight."""
    assert rl.roofline("b0", 224, batch=1).bytes("whole_block") == hand.level_bytes(224, 1, 2)["whole_block"]


def _cells(table: str, row: int) -> list[str]:
    return [c.strip() for c in table.splitlines()[row].strip("|").split("|")]


def test_roofline_table_prints_per_image_numbers():
    from fastmbconv.study import Bandwidth

    bw = Bandwidth(3.0e12, "test", "device copy (HBM)", 1, "given")
    batch = 4
    table = rl.format_table([rl.roofline("b0", 224, batch)], bw)
    got = dict(zip(_cells(table, 0), _cells(table, 2)))
    want = hand.level_bytes(224, batch, 2)
    assert got["GFLOP/img"] == f"{2 * sum(hand.macs(224).values()) / 1e9:.3f}"
    for level in rl.LEVELS:
        per_image = want[level] / batch
        assert got[f"MB/img {level}"] == f"{per_image / 1e6:.2f}"
        assert got[f"floor img/s {level}"] == f"{3.0e12 / per_image:,.0f}"


def test_model_table_macs_are_half_the_flops():
    (row,) = fm.model_table({"efficientnet_b0": fm.efficientnet_b0})
    macs = sum(hand.macs(224).values())
    assert row["params"] == hand.params() and row["gmacs"] == pytest.approx(macs / 1e9)
    assert row["gflops"] == pytest.approx(2 * macs / 1e9)
    table = fm.format_table([row])
    got = dict(zip(_cells(table, 0), _cells(table, 2)))
    assert got["GMACs"] == f"{macs / 1e9:.3f}" and got["GFLOPs"] == f"{2 * macs / 1e9:.3f}"
    assert re.fullmatch(r"[\d,]+", got["params"]) and int(got["params"].replace(",", "")) == hand.params()
