"""The backend switch: auto picks fused only for eval-mode CUDA inference; overrides win."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import backend

from .helpers import data_parallel_replica


@pytest.fixture
def model():
    return fm.efficientnet_b0().eval()


@pytest.fixture(autouse=True)
def clean_backend(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    fm.set_backend(None)
    yield
    fm.set_backend(None)


def test_auto_keeps_cpu_tensors_on_reference(model):
    with torch.inference_mode():
        assert backend.select_path(model, torch.zeros(1, 3, 8, 8)) == "reference"


class _CudaTensorStandIn:
    """select_path reads only .device, .requires_grad and .dtype, so a GPU-less machine can check the
    CUDA decision without a CUDA tensor."""

    device = torch.device("cuda", 0)
    requires_grad = False
    dtype = torch.float32


def test_auto_picks_fused_for_cuda_inference(model):
    x = _CudaTensorStandIn()
    with torch.inference_mode():
        assert backend.select_path(model, x) == "fused"
    with torch.no_grad():
        assert backend.select_path(model, x) == "fused"
        assert backend.select_path(model.train(), x) == "reference"
    model.eval()
    with torch.enable_grad():
        assert backend.select_path(model, x) == "reference"  # parameters require grad


@pytest.mark.parametrize("where", ["block", "conv", "pre", "global"])
def test_forward_hooks_below_the_model_keep_it_on_reference(model, where):
    """The fused path calls no submodule, so their hooks (observers, pruning masks, feature
    taps) would silently not fire: auto takes the reference path, a forced fused path says why.
    A hook on the model itself fires on either path; hooks on the stage containers on neither."""
    from torch.nn.modules import module as nn_module

    x, hook = _CudaTensorStandIn(), lambda *args: None
    register = {"block": lambda: model.blocks[2][0].register_forward_hook(hook),
                "conv": lambda: model.conv_head.register_forward_hook(hook),
                "pre": lambda: model.blocks[0][0].conv_dw.register_forward_pre_hook(hook),
                "global": lambda: nn_module.register_module_forward_hook(hook)}[where]
    on_model = model.register_forward_hook(hook)
    on_stages = [model.blocks.register_forward_hook(hook), model.blocks[1].register_forward_pre_hook(hook)]
    with torch.no_grad():
        assert backend.select_path(model, x) == "fused"  # no path calls the stage containers
        handle = register()
        try:
            assert backend.select_path(model, x) == "reference"
            with fm.use_backend("fused"), pytest.raises(RuntimeError, match="hooks"):
                backend.select_path(model, x)
        finally:
            handle.remove()
        assert backend.select_path(model, x) == "fused"
    for h in (on_model, *on_stages):
        h.remove()


def test_a_data_parallel_replica_under_autograd_stays_on_reference(model):
    """A DataParallel replica holds its weights as plain tensors, not parameters: they still
    keep the inference-only fused path away while autograd records."""
    replica, x = data_parallel_replica(model), _CudaTensorStandIn()
    assert list(replica.parameters()) == []
    with torch.enable_grad():
        assert backend.select_path(replica, x) == "reference"
    with torch.no_grad():
        assert backend.select_path(replica, x) == "fused"


def test_dtypes_the_kernels_lack_stay_on_reference(model):
    x = _CudaTensorStandIn()
    x.dtype = torch.float64
    with torch.no_grad():
        assert backend.select_path(model, x) == "reference"
        assert backend.select_path(model.double(), _CudaTensorStandIn()) == "reference"
        with fm.use_backend("fused"), pytest.raises(RuntimeError, match="float64"):
            backend.select_path(model, x)


def test_precedence_context_over_global_over_env(model, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "reference")
    assert fm.get_backend() == "reference"
    fm.set_backend("fused")
    assert fm.get_backend() == "fused"
    with fm.use_backend("auto"):
        assert fm.get_backend() == "auto"
        with fm.use_backend("reference"):
            assert fm.get_backend() == "reference"
        assert fm.get_backend() == "auto"
    assert fm.get_backend() == "fused"


@pytest.mark.parametrize("bad", ["cuda", "", "FUSEDX"])
def test_unknown_backend_names(bad, monkeypatch):
    with pytest.raises(ValueError, match="unknown fastmbconv backend"):
        fm.set_backend(bad) if bad else fm.use_backend(bad).__enter__()
    monkeypatch.setenv(backend.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        fm.get_backend()


def test_forced_fused_explains_why_it_cannot_run(model, monkeypatch):
    x = torch.zeros(1, 3, 8, 8)
    with fm.use_backend("fused"):
        with pytest.raises(RuntimeError, match="training mode"):
            model.train()(x)
        model.eval()
        with pytest.raises(RuntimeError, match="autograd"):
            model(x.requires_grad_())
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with torch.inference_mode(), pytest.raises(RuntimeError, match="CUDA tensor"):
            model(torch.zeros(1, 3, 8, 8))


def test_forced_reference_always_runs_modules(model):
    with fm.use_backend("reference"), torch.inference_mode():
        out = model(torch.zeros(1, 3, 8, 8))
    assert out.shape == (1, 1000)
