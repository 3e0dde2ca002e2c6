"""Which providers run where, and why not."""
import pytest
import torch

from fastmbconv import study


def test_provider_rules():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert study.skip_reason("eager", "b0", 2, cpu, 64) is None
    assert "CUDA" in study.skip_reason("fused", "b0", 2, cpu, 64)
    assert "launch-overhead" in study.skip_reason("cudagraph_fused", "b0", 32, gpu)
    assert "launch-overhead" in study.skip_reason("compile_reduce_overhead", "b0", 256, gpu)
    assert study.skip_reason("cudagraph_fused", "b0", 256, gpu) in (None, "no CUDA GPU on this machine")
    assert "ResNet-50" in study.skip_reason("fused", "resnet50", 1, gpu)
    assert "capped" in study.skip_reason("eager", "b7", 256, gpu)
    assert study.skip_reason("eager", "b5", 256, gpu) in (None, "no CUDA GPU on this machine")
    with pytest.raises(ValueError, match="unknown model"):
        study.full_model_name("b9")
    with pytest.raises(RuntimeError, match="cannot run fused"):
        study.make_runner("fused", "b0", 1, "fp32", "cpu", 32)




def test_fused_variants_force_one_choice_at_batch_256_only(monkeypatch):
    """Each variant sets the environment the fused path reads per call, only around the call,
    and runs only at the headline's batch 256 (where its choice is decided)."""
    from fastmbconv.fused import layer_plan
    from fastmbconv.kernels.dwconv_bn_act import choose_depthwise_impl
    from fastmbconv.kernels.pointwise_gated import choose_pointwise_impl

    gpu = torch.device("cuda")
    for name in ("fused_separate", "fused_torch_1x1", "fused_cudnn_dw"):
        assert "variant" in study.skip_reason(name, "b0", 1, gpu)
        assert study.skip_reason(name, "b0", 256, gpu) in (None, "no CUDA GPU on this machine")
        assert "variant" in study.skip_reason(name, "b3", 256, gpu)
    monkeypatch.setenv("FASTMBCONV_POINTWISE_IMPL", "triton")
    monkeypatch.delenv("FASTMBCONV_EXPAND_DW", raising=False)
    with study.providers.environment(study.PROVIDERS["fused_torch_1x1"].env):
        assert choose_pointwise_impl(256 * 49, 1152, 320, torch.float16, "cuda") == "torch"
    assert choose_pointwise_impl(256 * 49, 1152, 320, torch.float16, "cuda") == "triton"
    with study.providers.environment(study.PROVIDERS["fused_separate"].env):
        assert layer_plan._env_choice() == "separate"
    assert layer_plan._env_choice() == "auto"
    monkeypatch.delenv("FASTMBCONV_DEPTHWISE_IMPL", raising=False)
    with study.providers.environment(study.PROVIDERS["fused_cudnn_dw"].env):
        assert layer_plan._env_choice() == "separate" and choose_depthwise_impl() == "torch"
    assert choose_depthwise_impl() == "triton"
    import os
    assert "FASTMBCONV_EXPAND_DW" not in os.environ and os.environ["FASTMBCONV_POINTWISE_IMPL"] == "triton"
    from fastmbconv import efficientnet_b0

    with study.providers.environment(study.PROVIDERS["fused_separate"].env):  # as bench_models reports it
        rows = layer_plan.plan_rows(efficientnet_b0(), 224, 224, torch.float16, "meta")
    assert {r["expand_dw"] for r in rows} == {"separate"}


def test_a_cuda_graph_is_captured_on_the_runners_own_gpu(monkeypatch):
    """Captured on a stream of cuda:1 while cuda:0 is current (torch.cuda.graph's default capture
    stream is the first capture's GPU's): three warm-up calls, one captured, then replays."""
    import contextlib

    import torch

    from fastmbconv.study import providers

    events = []

    class FakeStream:
        def __init__(self, device=None):
            self.device = torch.device(device or "cuda:0")

        def wait_stream(self, other):
            pass

    class FakeGraph:
        def replay(self):
            events.append("replay")

    @contextlib.contextmanager
    def graph(g, stream=None):
        events.append(("capture on", None if stream is None else stream.device))
        yield

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(device))
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    replay = providers.captured(lambda: events.append("call") or "out", torch.device("cuda", 1))
    assert events == ["call"] * 3 + [("capture on", torch.device("cuda", 1)), "call"] + ["replay"] * 3
    assert replay() == "out" and events[-1] == "replay"
