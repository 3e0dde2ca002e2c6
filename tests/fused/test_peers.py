"""The fused path against the peers' own forwards: timm's and torchvision's EfficientNet-B0,
converted by from_timm / from_torchvision, give the peer's logits through the kernels.

tests/test_convert.py checks the conversion on the reference modules; here the kernels run, on the
GPU or through Triton's interpreter, and the side they are compared with is the peer's module
itself. Skipped, with the import error, where timm or torchvision does not import: their Linux
wheels on PyPI are CUDA builds, which need a CUDA torch. The GPU machines have both.
"""
import pytest
import torch

import fastmbconv as fm
from fastmbconv.fused import layer_plan
from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels.testing import assert_close_to_ref

from ..helpers import DEVICE, blocks_with_expand, expected_launches, import_or_skip, randomize_bn

# exact launch counts below assume every 1x1 conv takes the Triton kernel
pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("pointwise_on_triton")]


def fused_and_peer(peer: torch.nn.Module, model: fm.EfficientNet, x: torch.Tensor):
    """(our fused logits, the peer's logits, the fused call's launches) for ``x``."""
    with torch.inference_mode():
        ref = peer(x)
        with fm.use_backend("fused"), count_launches() as launches:
            out = model(x)
    return out, ref, launches


@pytest.mark.parametrize("prefix,dtype,expand_dw", [
    ("", torch.float32, "separate"),  # symmetric padding, BN eps 1e-5
    ("tf_", torch.float32, "fused"),  # TF "SAME" padding, BN eps 1e-3
    ("tf_", torch.float16, "separate"),
    ("", torch.bfloat16, "fused"),
], ids=lambda v: str(v).replace("torch.", "") or "timm")
def test_fused_from_timm_gives_timms_logits(prefix, dtype, expand_dw, monkeypatch):
    timm = import_or_skip("timm")
    monkeypatch.setenv("FASTMBCONV_EXPAND_DW", expand_dw)
    torch.manual_seed(0)
    peer = randomize_bn(timm.create_model(f"{prefix}efficientnet_b0"), size=(33, 47)).eval().to(DEVICE)
    x = torch.randn(2, 3, 33, 47, device=DEVICE)
    if dtype == torch.float32:
        model = fm.from_timm(peer)
        out, ref, launches = fused_and_peer(peer, model, x)
        assert_close_to_ref(out, ref, what=f"{prefix}efficientnet_b0 logits against timm's")
    else:
        with torch.inference_mode():
            ref64 = peer.double()(x.double())
        peer = peer.to(dtype)
        model = fm.from_timm(peer)
        out, ref_lowp, launches = fused_and_peer(peer, model, x.to(dtype))
        assert out.dtype == dtype
        assert_close_to_ref(out, ref64, ref_lowp, what=f"{prefix}efficientnet_b0 {dtype} logits against timm's")
    assert model.pad_mode == ("same" if prefix else "symmetric")
    fused_blocks = blocks_with_expand(model) if expand_dw == "fused" else 0
    assert dict(launches) == expected_launches(model, fused_blocks=fused_blocks)


def test_fused_from_torchvision_gives_torchvisions_logits(monkeypatch):
    tvm = import_or_skip("torchvision.models")
    monkeypatch.setenv("FASTMBCONV_EXPAND_DW", "separate")
    torch.manual_seed(0)
    peer = randomize_bn(tvm.efficientnet_b0(), size=(35, 29)).eval().to(DEVICE)
    model = fm.from_torchvision(peer)
    out, ref, launches = fused_and_peer(peer, model, torch.randn(2, 3, 35, 29, device=DEVICE))
    assert_close_to_ref(out, ref, what="efficientnet_b0 logits against torchvision's")
    assert dict(launches) == expected_launches(model)


def test_fp32_references_run_without_tf32():
    """The root conftest.py turns TF32 off: on a GPU, timm's fp32 forward on cuDNN
    is the fp32 reference below, and cuDNN's default TF32 is too coarse for the fp32 rule."""
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cuda_fused_from_timm_gives_timms_logits_at_224(dtype, monkeypatch):
    """At the trained resolution, on the plan the model chooses for itself (expand + depthwise
    fused where the plan table says so): timm's tf_efficientnet_b0 on cuDNN against our kernels."""
    timm = import_or_skip("timm")
    monkeypatch.delenv("FASTMBCONV_EXPAND_DW", raising=False)
    torch.manual_seed(0)
    peer = randomize_bn(timm.create_model("tf_efficientnet_b0"), size=224).eval().cuda()
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.inference_mode():
        ref64 = peer.double()(x.double())
    peer = peer.to(dtype)
    model = fm.from_timm(peer)
    out, ref, launches = fused_and_peer(peer, model, x.to(dtype))
    plan = layer_plan.plan_rows(model, 224, 224, dtype, x.device)
    fused_blocks = sum(row["expand_dw"] == "fused" for row in plan)
    assert dict(launches) == expected_launches(model, fused_blocks=fused_blocks)
    if dtype == torch.float32:
        assert_close_to_ref(out, ref64, what="CUDA fp32 logits against timm's (fp64)")
        assert_close_to_ref(out, ref, what="CUDA fp32 logits against timm's")
    else:
        assert_close_to_ref(out, ref64, ref, what=f"CUDA {dtype} logits against timm's")
