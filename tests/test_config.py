import math
import warnings

import pytest

import fastmbconv as fm
from fastmbconv.config import B0_STAGES, StageConfig, round_channels, round_repeats, scale_stages



def test_b0_stage_table_is_typed_data():
    assert all(isinstance(s, StageConfig) for s in B0_STAGES)
    assert [(s.kernel, s.stride, s.expand_ratio, s.out_channels, s.repeats) for s in B0_STAGES] == [
        (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
        (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
    ]
    assert B0_STAGES[0].block == "ds" and all(s.block == "ir" for s in B0_STAGES[1:])
    assert all(s.se_ratio == 0.25 for s in B0_STAGES)


@pytest.mark.parametrize(
    "channels, mult, expected",
    [(32, 1.0, 32), (32, 1.1, 32), (16, 1.1, 16), (40, 1.1, 48), (24, 1.2, 32), (1280, 1.1, 1408),
     (112, 1.4, 160), (320, 2.0, 640), (8, 0.5, 8), (20, 0.5, 16), (12, 1.0, 16)],
)
def test_round_channels(channels, mult, expected):
    assert round_channels(channels, mult) == expected


def test_round_channels_adds_divisor_when_losing_more_than_10_percent():
    # 36 -> nearest multiple of 8 is 40 (no loss); 11.9 rounds to 8 (33% loss) so 16.
    assert round_channels(11.9) == 16
    assert round_channels(36) == 40


def test_round_repeats_is_ceil():
    assert round_repeats(3, 1.1) == 4 and round_repeats(1, 3.1) == 4 and round_repeats(2, 1.0) == 2


def test_scale_stages_b7():
    stages = scale_stages(2.0, 3.1)
    assert [s.repeats for s in stages] == [math.ceil(s.repeats * 3.1) for s in B0_STAGES]
    assert [s.out_channels for s in stages] == [32, 48, 80, 160, 224, 384, 640]


@pytest.mark.parametrize("name", sorted(fm.VARIANTS))
def test_variant_table(name):
    v = fm.VARIANTS[name]
    assert (v.width_mult, v.depth_mult, v.resolution, v.dropout) == {
        "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
        "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
        "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5),
    }[name]


def test_compound_scaling_formula():
    s0 = fm.compound_scaling(0)
    assert (s0.width_mult, s0.depth_mult, s0.resolution) == (1.0, 1.0, 224)
    s2 = fm.compound_scaling(2)
    assert s2.width_mult == pytest.approx(1.21) and s2.depth_mult == pytest.approx(1.44)
    assert s2.resolution % 8 == 0 and abs(s2.resolution - 224 * 1.15**2) <= 4
    # 224 * 1.15**3 = 340.7: the nearest multiple of 8, not the one below
    assert fm.compound_scaling(3).resolution == 344
    s_frac = fm.compound_scaling(0.5, base_resolution=100)
    assert s_frac.resolution % 8 == 0


def test_compound_scaling_warns_far_from_two():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fm.compound_scaling(1)  # 1.2 * 1.1^2 * 1.15^2 = 1.92: no warning
    with pytest.warns(UserWarning, match="far from 2"):
        fm.compound_scaling(1, alpha=2.0, beta=1.5, gamma=1.5)


@pytest.mark.parametrize("kwargs", [{"phi": -1}, {"phi": float("nan")}, {"phi": 1, "alpha": 0.5}])
def test_compound_scaling_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        fm.compound_scaling(**kwargs)
