"""The ResNet-50 stand-in (the FLOPs anchor when torchvision does not import)."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv.resnet import RESNET50_PARAMS, resnet50


def test_resnet50_stand_in_matches_torchvision_count():
    with torch.device("meta"):
        model = resnet50()
    assert fm.count_params(model) == RESNET50_PARAMS == 25_557_032
    assert fm.count_flops(model, 224) == pytest.approx(8.18e9, rel=0.01)  # 4.09 GMACs
