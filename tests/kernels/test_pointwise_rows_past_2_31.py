"""The 1x1 kernel where the rows themselves (pixels over all images) pass 2^31: few channels and
a huge batch (66 GiB of fp16 activations in and out). The other kernels index within one image;
this one numbers rows across the batch, so a 32-bit row index would wrap and pass its mask."""
import pytest
import torch

from fastmbconv.kernels.pointwise_gated import pointwise_gated, pointwise_gated_ref


@pytest.mark.gpu
@pytest.mark.slow  # 66 GiB: not in the first stage's quick share, which runs 16 tests at once
def test_rows_past_2_31_cuda():
    N, K, O, H, W = 32769, 8, 8, 256, 256  # N * H * W = 2^31 + 65536 rows
    assert N * H * W > 2**31
    x = torch.empty(N, K, H, W, device="cuda", dtype=torch.float16, memory_format=torch.channels_last).normal_()
    w = (torch.randn(O, K, device="cuda") / K**0.5).half()
    bias = torch.randn(O, device="cuda")
    gate = torch.rand(N, K, device="cuda")
    out = pointwise_gated(x, w, bias, gate=gate, impl="triton")
    ref = pointwise_gated_ref(x[-2:], w, bias, gate=gate[-2:])
    torch.testing.assert_close(out[-2:].float(), ref, atol=2e-2, rtol=1e-2)
    del out
    means = pointwise_gated(x, w, bias, act="silu", pool_only=True, impl="triton")
    ref_means = pointwise_gated_ref(x[-2:], w, bias, act="silu", pool_only=True)
    torch.testing.assert_close(means[-2:].float(), ref_means, atol=2e-2, rtol=1e-2)
