"""The compile options every launch passes (kernels._launch.LAUNCH_OPTIONS), through a plain
kernel and through Triton's own autotuner, whose config pruning receives them too."""
import torch
import triton

from fastmbconv.kernels._launch import LAUNCH_OPTIONS, launch


class RecordingKernel:
    """What launch() and the autotuner need of a JITFunction, keeping every run's keywords."""

    arg_names = ["x", "K", "BLOCK"]

    def __init__(self):
        self.fn = lambda: None
        self.runs = []

    def run(self, *args, **kwargs):
        self.runs.append(kwargs)

    def __getitem__(self, grid):
        return lambda **kwargs: self.run(grid=grid, **kwargs)


def test_every_launch_asks_for_fused_multiply_adds(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors are launchable (on a GPU machine too)
    assert LAUNCH_OPTIONS == {"enable_fp_fusion": True}
    on = torch.empty(1)
    plain = RecordingKernel()
    launch("probe", plain, (1,), {"x": None, "K": 3}, {"BLOCK": 16}, on)
    assert plain.runs == [{"grid": (1,), "x": None, "K": 3, "BLOCK": 16, "enable_fp_fusion": True}]

    inner, pruned_with = RecordingKernel(), []

    def prune(configs, named_args, **kwargs):  # the kernels' early_config_prune signature
        pruned_with.append(kwargs)
        return configs[:1]

    tuned = triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32)], key=["K"],
                            prune_configs_by={"early_config_prune": prune},
                            do_bench=lambda call, quantiles: (call(), [1.0, 1.0, 1.0])[1])(inner)
    launch("probe", tuned, (1,), {"x": None, "K": 3}, {}, on)
    assert inner.runs and all(run["enable_fp_fusion"] is True for run in inner.runs)
    assert pruned_with and all(kw.get("enable_fp_fusion") is True for kw in pruned_with)
