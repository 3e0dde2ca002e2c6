import math

import pytest
import torch

import fastmbconv as fm
from fastmbconv.layers import DepthwiseSeparable, DropPath, MBConv

from .helpers import randomize_bn


def test_timm_parameter_names():
    keys = set(fm.efficientnet_b0().state_dict())
    for k in ["conv_stem.weight", "bn1.running_var", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn1.weight",
              "blocks.0.0.se.conv_reduce.bias", "blocks.0.0.conv_pw.weight", "blocks.0.0.bn2.num_batches_tracked",
              "blocks.1.0.conv_pw.weight", "blocks.1.0.bn3.bias", "blocks.1.0.conv_pwl.weight",
              "blocks.6.0.se.conv_expand.weight", "conv_head.weight", "bn2.weight", "classifier.bias"]:
        assert k in keys, k
    assert "blocks.0.0.conv_pwl.weight" not in keys


def test_block_structure_b0():
    m = fm.efficientnet_b0()
    assert [len(s) for s in m.blocks] == [1, 2, 2, 3, 3, 4, 1]
    assert isinstance(m.blocks[0][0], DepthwiseSeparable) and isinstance(m.blocks[1][0], MBConv)
    b = m.blocks[1][0]
    assert (b.in_channels, b.mid_channels, b.out_channels, b.stride, b.kernel) == (16, 96, 24, 2, 3)
    assert b.se.conv_reduce.out_channels == 4  # 0.25 of the block's *input* channels
    assert not b.has_skip and m.blocks[1][1].has_skip and m.blocks[1][1].stride == 1


@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
@pytest.mark.parametrize("hw", [(1, 1), (32, 32), (97, 131), (7, 5)])
def test_any_input_size(pad_mode, hw):
    """Both paddings give ceil(size / 32) at the head (odd kernels: ceil(size / stride) per
    stride-2 layer), for sizes that are not multiples of 32 too."""
    m = fm.efficientnet_b0(pad_mode=pad_mode).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, *hw))
        fmap = m.forward_features(torch.randn(1, 3, *hw))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    expected = [d for d in hw]
    for _ in range(5):
        expected = [-(-d // 2) for d in expected]
    assert tuple(fmap.shape) == (1, 1280, *expected)


def test_cifar_final_map_is_1x1():
    m = fm.efficientnet_b0(num_classes=10).eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 1280, 1, 1)
        assert m(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_same_mode_uses_asymmetric_padding_for_stride_2():
    torch.manual_seed(0)
    m = fm.efficientnet_b0(pad_mode="same").eval()
    conv = m.conv_stem
    x = torch.randn(1, 3, 8, 8)
    manual = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), manual)
    assert m.bn1.eps == 1e-3 and fm.efficientnet_b0().bn1.eps == 1e-5


def test_num_classes_zero_returns_pooled_features_and_reset_classifier():
    m = fm.efficientnet_b0(num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = m(x)
        assert feats.shape == (2, 1280)
        torch.testing.assert_close(feats, m.forward_features(x).mean((2, 3)))
        m.reset_classifier(7)
        assert m(x).shape == (2, 7)
        torch.testing.assert_close(m.forward_head(m.forward_features(x), pre_logits=True), feats)
    m.reset_classifier(0)
    assert isinstance(m.get_classifier(), torch.nn.Identity)


def test_features_only_strides_and_channels():
    m = fm.efficientnet_b0(features_only=True).eval()
    assert [f["reduction"] for f in m.feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in m.feature_info] == [16, 24, 40, 112, 320]
    with torch.no_grad():
        maps = m(torch.randn(1, 3, 64, 96))
    assert [tuple(t.shape[1:]) for t in maps] == [(16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6), (320, 2, 3)]
    det = fm.efficientnet_b3(features_only=True, out_indices=(2, 3, 4)).eval()
    with torch.no_grad():
        maps = det(torch.randn(1, 3, 64, 64))
    assert [t.shape[1] for t in maps] == [48, 136, 384] and det.feature_info.reduction() == [8, 16, 32]
    assert det.feature_info.channels() == [48, 136, 384] and len(det.feature_info) == 5  # timm: info on all five
    assert not hasattr(det, "conv_head")
    with pytest.raises(ValueError, match="out_indices"):
        fm.efficientnet_b0(features_only=True, out_indices=(5,))


def test_channels_last_matches_nchw():
    m = randomize_bn(fm.efficientnet_b0(), size=(45, 61)).eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_dropout_and_drop_path_only_in_training():
    m = fm.efficientnet_b0(drop_rate=0.5, drop_path_rate=0.3)
    drop = [b.drop_path.drop_prob for s in m.blocks for b in s]
    assert drop[0] == 0.0 and drop == sorted(drop) and max(drop) < 0.3
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    b = m(x)
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert m.conv_stem.weight.grad is not None


def test_blocks_expose_their_parts():
    m = fm.efficientnet_b0()
    ds, mb = m.blocks[0][0].parts(), m.blocks[1][1].parts()
    assert ds.expand is None and (ds.depthwise.conv_name, ds.project.conv_name) == ("conv_dw", "conv_pw")
    assert (mb.expand.conv_name, mb.expand.bn_name, mb.project.conv_name, mb.project.bn_name) == (
        "conv_pw", "bn1", "conv_pwl", "bn3")
    assert mb.expand.conv is m.blocks[1][1].conv_pw and mb.depthwise.bn is m.blocks[1][1].bn2
    assert (mb.kernel, mb.stride, mb.has_skip, mb.mid_channels) == (3, 1, True, 144)


def test_drop_path_keeps_the_expected_value_in_training():
    """Stochastic depth drops whole samples and scales the kept ones by 1 / (1 - p), so the
    residual branch's expected value is the same in training as in eval."""
    drop = DropPath(0.25).train()
    torch.manual_seed(0)
    y = drop(torch.ones(4000, 2, 3, 3)).flatten(1)
    kept = y[:, 0] != 0
    assert (y == y[:, :1]).all()  # per sample
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.03 and abs(y.mean().item() - 1.0) < 0.04


def test_stride_2_blocks_have_no_skip_even_where_their_width_is_kept():
    """At width 0.1 rounding gives some stride-2 blocks as many output as input channels; the
    residual is still for stride 1 only (the maps differ in size)."""
    m = fm.efficientnet(width_mult=0.1, num_classes=5).eval()
    strided = [b for stage in m.blocks for b in stage if b.stride == 2]
    assert any(b.in_channels == b.out_channels for b in strided)
    assert not any(b.has_skip or b.parts().has_skip for b in strided)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 33, 47)).shape == (1, 5)


def test_fresh_conv_weights_follow_timms_fan_out_init():
    """N(0, 2 / fan_out) with fan_out = k * k * out_channels / groups (timm's init): a
    depthwise conv's fan-out is k * k, not k * k * channels."""
    torch.manual_seed(0)
    m = fm.efficientnet_b0()
    for conv in (m.conv_stem, m.blocks[1][0].conv_pw, m.blocks[1][0].conv_dw, m.blocks[2][0].conv_dw):
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.15, conv
