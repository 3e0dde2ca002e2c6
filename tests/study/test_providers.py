"""Which providers run where, and why not."""
import pytest
import torch

from fastmbconv import study


def test_provider_rules():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert study.skip_reason("eager", "b0", 2, cpu, 64) is None
    assert "CUDA" in study.skip_reason("fused", "b0", 2, cpu, 64)
    assert "batch-1" in study.skip_reason("cudagraph_fused", "b0", 32, gpu)
    assert "ResNet-50" in study.skip_reason("fused", "resnet50", 1, gpu)
    assert "capped" in study.skip_reason("eager", "b7", 256, gpu)
    assert study.skip_reason("eager", "b5", 256, gpu) in (None, "no CUDA GPU on this machine")
    with pytest.raises(ValueError, match="unknown model"):
        study.full_model_name("b9")
    with pytest.raises(RuntimeError, match="cannot run fused"):
        study.make_runner("fused", "b0", 1, "fp32", "cpu", 32)


