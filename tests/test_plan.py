import pytest
import torch

import fastmbconv as fm


@pytest.fixture(scope="module")
def model():
    return fm.efficientnet_b0(num_classes=10).eval()


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 1, 3, 32, 32), (32,)])
def test_non_4d_input(model, shape):
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(shape))


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match="3 input channels, got 4"):
        model(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64, torch.bool])
def test_integer_dtype(model, dtype):
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=dtype))


def test_dtype_mismatch_names_both(model):
    with pytest.raises(TypeError, match="float64.*float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))


def test_device_mismatch(model):
    with pytest.raises(ValueError, match="meta.*cpu"):
        model(torch.empty(1, 3, 32, 32, device="meta"))


@pytest.mark.parametrize("hw", [(0, 32), (32, 0)])
def test_zero_spatial_size(model, hw):
    with pytest.raises(ValueError, match="spatial"):
        model(torch.zeros(1, 3, *hw))


def test_not_a_tensor(model):
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])


def test_empty_batch_returns_empty_output(model):
    with torch.no_grad():
        out = model(torch.randn(0, 3, 32, 32))
        feats = model.forward_features(torch.randn(0, 3, 40, 40))
    assert out.shape == (0, 10) and feats.shape == (0, 1280, 2, 2)


def test_nan_propagates(model):
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 5, 5] = float("nan")
    with torch.no_grad():
        out = model(x)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
