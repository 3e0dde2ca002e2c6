"""Export: torch.export of the reference and the fused model, dense (dynamic batch) and ragged
(the sizes are constants of the exported program: they choose each image's padding on the
host), and ONNX export of the reference model in both padding modes, run with onnxruntime."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv.kernels._launch import count_launches

from .helpers import import_or_skip, randomize_bn

SIZES = [[32, 21], [17, 32]]


def tiny(pad_mode):
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet(0.25, 0.25, num_classes=10, pad_mode=pad_mode), size=32).eval()


class Ragged(torch.nn.Module):
    """A ragged call with its sizes fixed, as it is exported."""

    def __init__(self, model, sizes):
        super().__init__()
        self.model, self.sizes = model, sizes

    def forward(self, x):
        return self.model(x, self.sizes)


def _export_and_compare(model, backend, device):
    model = model.to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad(), fm.use_backend(backend):
        dense = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        ragged = torch.export.export(Ragged(model, SIZES), (x,))
        x3 = torch.randn(3, 3, 32, 32, device=device)
        with count_launches() as exported:
            out = dense.module()(x3)
        with count_launches() as eager:
            want = model(x3)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ragged.module()(x), model(x, SIZES), rtol=1e-5, atol=1e-5)
    assert not any(n.target == torch.ops.aten.item.default for n in ragged.graph.nodes)  # no data-dependent reads
    # the exported program holds the kernels' ops and runs them (not the reference it could fall back to)
    ops = {str(n.target).split(".")[1] for n in dense.graph.nodes if str(n.target).startswith("fastmbconv.")}
    if backend == "fused":
        assert ops == {"stem_conv_bn_act", "dwconv_bn_act", "squeeze_excite_gate", "pointwise_gated"}, ops
        assert exported == eager and exported["dwconv_bn_act"] == sum(len(stage) for stage in model.blocks)
    else:
        assert not ops and not exported and not eager


@pytest.mark.slow
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_torch_export_reference(pad_mode):
    _export_and_compare(tiny(pad_mode), "reference", "cpu")


@pytest.mark.interpreter
@pytest.mark.slow
def test_torch_export_fused(device):
    pytest.importorskip("triton")
    _export_and_compare(tiny("same"), "fused", device)


def test_export_with_tensor_sizes_says_to_pass_a_list():
    model = tiny("same")

    class TensorSizes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, sizes):
            return self.model(x, sizes)

    with pytest.raises(Exception, match="Python list"):
        torch.export.export(TensorSizes(), (torch.randn(2, 3, 32, 32), torch.tensor(SIZES)))


@pytest.mark.slow
@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_onnx_export_runs_in_onnxruntime(pad_mode, tmp_path):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        import_or_skip(name)
    import onnxruntime

    model = tiny(pad_mode)
    x = torch.randn(2, 3, 37, 45)
    path = tmp_path / "model.onnx"
    with torch.no_grad(), fm.use_backend("reference"):
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}}, dynamo=True)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (2, 3):
            xb = torch.randn(batch, 3, 37, 45)
            (out,) = session.run(None, {"x": xb.numpy()})
            torch.testing.assert_close(torch.from_numpy(out), model(xb), rtol=1e-4, atol=1e-4)
