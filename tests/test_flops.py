import pytest

import fastmbconv as fm


def test_b0_flops_at_224():
    flops = fm.count_flops(fm.efficientnet_b0(), 224)
    assert 0.38e9 <= flops / 2 <= 0.40e9  # ~0.39 GMACs, ~0.77 GFLOPs


def test_flops_scale_with_batch_and_resolution():
    m = fm.efficientnet_b0()
    f1 = fm.count_flops(m, 64)
    assert fm.count_flops(m, 64, batch=3) == 3 * f1
    assert fm.count_flops(m, (64, 128)) > 1.9 * f1


def test_count_flops_leaves_model_untouched():
    m = fm.efficientnet_b0()
    fm.count_flops(m, 32)
    assert m.conv_stem.weight.device.type == "cpu" and m.training


@pytest.mark.slow
def test_model_table_b0_to_b7():
    rows = fm.model_table()
    assert [r["model"] for r in rows] == [f"efficientnet_b{i}" for i in range(8)]
    assert [r["resolution"] for r in rows] == [224, 240, 260, 300, 380, 456, 528, 600]
    assert rows[0]["params"] == 5_288_548 and rows[7]["params"] == 66_347_960
    gflops = [r["gflops"] for r in rows]
    assert gflops == sorted(gflops) and gflops[0] == pytest.approx(0.77, abs=0.01)
    table = fm.format_table(rows)
    assert "| efficientnet_b7 | 600 | 66,347,960 |" in table
