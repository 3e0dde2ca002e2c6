"""Building EfficientNets: the official variants, any scale, and names."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv.builders import model_structure, resolve_model_name

from .helpers import EXPECTED_PARAMS


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_counts_match_timm_and_torchvision(name):
    with torch.device("meta"):
        model = getattr(fm, f"efficientnet_{name}")()
    assert fm.count_params(model) == EXPECTED_PARAMS[name]
    assert model.default_resolution == fm.VARIANTS[name].resolution
    assert model.drop_rate == fm.VARIANTS[name].dropout


def test_general_builder_and_phi():
    m = fm.efficientnet(1.1, 1.2, 260)
    assert fm.count_params(m) == 9_109_994 and m.default_resolution == 260
    scaled = fm.efficientnet(phi=1)
    s = fm.compound_scaling(1)
    assert scaled.default_resolution == s.resolution == 256
    assert [len(st) for st in scaled.blocks] == [2, 3, 3, 4, 4, 5, 2]
    with pytest.raises(ValueError):
        fm.efficientnet(0, 1)


def test_names_resolve_in_one_place():
    assert resolve_model_name("b3") == resolve_model_name("efficientnet_b3") == "efficientnet_b3"
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model_name("efficientnet_b9")
    meta = model_structure("b0")
    assert meta is model_structure("b0") and meta.conv_stem.weight.device.type == "meta"
