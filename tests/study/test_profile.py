"""Where a forward's time goes (fastmbconv.study.profile_breakdown): measured on the CPU, and its
GPU accounting checked on profiler events made by hand (a kernel appears twice in a CUDA trace)."""
import pytest
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList, FunctionEvent

from fastmbconv import study
from fastmbconv.study import profile as profile_mod


def test_cpu_breakdown_of_the_eager_reference():
    runner = study.make_runner("eager", "b0", 1, "fp32", "cpu", 32)
    out = study.profile_breakdown(runner, iters=1)
    ms = {r["category"]: r["ms"] for r in out["rows"]}
    assert set(ms) == set(study.CATEGORIES)
    assert all(ms[c] > 0 for c in ("stem", "depthwise", "se", "1x1", "elementwise"))
    assert sum(ms.values()) == pytest.approx(out["wall_ms"], rel=0.05)  # the rest is "launches/other"


def _event(i, name, device_type, start, end):
    return FunctionEvent(id=i, name=name, thread=0, start_us=start, end_us=end, use_device="cuda",
                         device_type=device_type)


class _Trace:
    """A CUDA trace as Kineto gives it: each kernel as its own device event and in the launching
    CPU op's kernels; record_function labels as CPU events around the ops."""

    def __init__(self, *a, **kw):
        label = _event(1, "fmb::se", DeviceType.CPU, 0, 50)
        op = _event(2, "aten::cudnn_convolution", DeviceType.CPU, 5, 20)
        op.append_kernel("conv_kernel", 0, 100.0)
        label.append_kernel("se_gate_kernel", 0, 30.0)  # launched by the module outside any aten op
        fused = _event(3, "fastmbconv::dwconv_bn_act", DeviceType.CPU, 60, 70)
        fused.append_kernel("_dwconv_bn_act_kernel", 0, 200.0)
        kernels = [_event(4, "conv_kernel", DeviceType.CUDA, 20, 120), _event(5, "se_gate_kernel", DeviceType.CUDA, 120, 150),
                   _event(6, "_dwconv_bn_act_kernel", DeviceType.CUDA, 150, 350)]
        self.list = EventList([label, op, fused, *kernels], use_device="cuda")
        self.list._build_tree()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def events(self):
        return self.list


def test_gpu_kernels_are_counted_once_under_their_module_label(monkeypatch):
    import torch.profiler

    monkeypatch.setattr(torch.profiler, "profile", _Trace)
    monkeypatch.setattr(profile_mod, "sync", lambda device: None)
    runner = study.make_runner("eager", "b0", 1, "fp32", "cpu", 32)
    runner.device = torch.device("cuda")  # the accounting only; nothing runs on a GPU
    runner.call = lambda: None
    ms = {r["category"]: r["ms"] for r in study.profile_breakdown(runner, iters=1)["rows"]}
    assert ms["se"] == pytest.approx(0.13)  # the conv under the SE label, and the label's own kernel
    assert ms["depthwise"] == pytest.approx(0.2)
    assert ms["stem"] == ms["1x1"] == ms["elementwise"] == 0
