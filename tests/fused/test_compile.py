"""torch.compile and CUDA graphs over the fused path.

The kernels are registered with ``torch.library.custom_op`` (with fake implementations), so
dynamo traces one fused MBConv block as a single graph with no breaks. On CPU the compiled graph
runs the kernels through Triton's interpreter, and launch counts prove they ran.
"""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import fused
from fastmbconv.geometry import conv_padding
from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels.testing import assert_close_to_ref
from fastmbconv.layers import DepthwiseSeparable, MBConv

from ..helpers import DEVICE, compile_fullgraph, randomize_bn, reference_forward

# launch counts below assume every 1x1 conv takes the Triton kernel
pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("pointwise_on_triton", "expand_dw_separate")]


def make_block(kind):
    torch.manual_seed(0)
    if kind == "mbconv_skip":
        block = MBConv(24, 24, 5, 1, 6, 0.25, "same", 1e-3)
    elif kind == "mbconv_stride2":
        block = MBConv(16, 24, 3, 2, 6, 0.25, "same", 1e-3)
    else:
        block = DepthwiseSeparable(32, 16, 3, 1, 0.25, "symmetric", 1e-5)
    block = randomize_bn(block, size=(9, 11)).eval().to(DEVICE)
    x = torch.randn(2, block.in_channels, 9, 11, device=DEVICE).contiguous(memory_format=torch.channels_last)
    return block, x


@pytest.mark.parametrize("kind", ["mbconv_skip", "mbconv_stride2", "ds"])
def test_block_compiles_fullgraph_without_breaks(kind):
    block, x = make_block(kind)
    pad_mode = block.conv_dw.pad_mode
    folded_block = fused.fold_block(block)
    padding = conv_padding(x.shape[-2], x.shape[-1], block.kernel, block.stride, pad_mode)

    def fused_block(inp):
        return fused.block_forward(folded_block, inp, padding, pad_mode)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fused_block)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    compiled = torch.compile(fused_block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref = block(x)
        with count_launches() as launches:
            out = compiled(x)
    n_pointwise = 2 if kind.startswith("mbconv") else 1
    assert dict(launches) == {"dwconv_bn_act": 1, "squeeze_excite_gate": 1, "pointwise_gated": n_pointwise}
    assert out.shape == ref.shape
    assert_close_to_ref(out, ref, what=f"compiled {kind} block")


def _opcheck_cases():
    from fastmbconv.kernels.affine_act_pool import affine_act_pool  # noqa: F401  (registers the ops)
    from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act, taps_diag  # noqa: F401
    from fastmbconv.kernels.expand_dwconv import expand_dwconv  # noqa: F401
    from fastmbconv.kernels.pointwise_gated import pointwise_gated  # noqa: F401
    from fastmbconv.kernels.squeeze_excite import squeeze_excite_gate  # noqa: F401
    from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act  # noqa: F401

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE)

    x = rnd(2, 24, 9, 11).contiguous(memory_format=torch.channels_last)
    w, scale, shift = rnd(24, 1, 3, 3), rnd(24).abs() + 0.5, rnd(24)
    valid = torch.tensor([[9, 11], [4, 5]], dtype=torch.int32, device=DEVICE)
    pad_tl = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)
    dw = torch.ops.fastmbconv.dwconv_bn_act.default
    se = torch.ops.fastmbconv.squeeze_excite_gate.default
    pw = torch.ops.fastmbconv.pointwise_gated.default
    stem = torch.ops.fastmbconv.stem_conv_bn_act.default
    ed = torch.ops.fastmbconv.expand_dwconv.default
    fused_dw = (rnd(40, 24), rnd(40), rnd(9, 40), rnd(40).abs() + 0.5, rnd(40))
    res = rnd(2, 40, 9, 11).contiguous(memory_format=torch.channels_last)
    image = rnd(2, 3, 17, 13)
    aap = torch.ops.fastmbconv.affine_act_pool.default
    return {
        "dw_fp16_mma": (dw, (x.half(), taps_diag(w, torch.float16), scale, shift, [1, 1, 1, 1], 1, "silu", True,
                             None, None)),
        "affine_pool": (aap, (x.clone(), scale, shift, "silu", True)),
        "affine_nchw": (aap, (x.contiguous(), scale, shift, "relu6", False)),
        "dw_pool": (dw, (x, w, scale, shift, [1, 1, 1, 1], 1, "silu", True, None, None)),
        "dw_ragged_s2": (dw, (x, w.reshape(24, 9).t().contiguous(), scale, shift, [0, 1, 0, 1], 2, "silu", True,
                              valid, pad_tl)),
        "dw_nchw": (dw, (x.contiguous(), w, scale, shift, [1, 1, 1, 1], 1, "relu6", False, None, None)),
        "se_hw": (se, (rnd(2, 3, 24), rnd(6, 24), rnd(6), rnd(24, 6), rnd(24), None, 49)),
        "se_count": (se, (rnd(2, 1, 24), rnd(6, 24), rnd(6), rnd(24, 6), rnd(24),
                          torch.tensor([3.0, 4.0], device=DEVICE), 1)),
        "pw_gate_res": (pw, (x, rnd(40, 24), rnd(40), torch.rand(2, 24, device=DEVICE), res, "identity", False, None)),
        "pw_pool": (pw, (x, rnd(40, 24), rnd(40), None, None, "silu", True, valid)),
        "stem": (stem, (image, rnd(8, 3, 3, 3), rnd(8), [0, 1, 1, 1], 2, "silu", torch.float32, None, None)),
        "stem_ragged": (stem, (image, rnd(8, 3, 3, 3), rnd(8), [0, 1, 1, 1], 2, "silu", torch.float32, valid,
                               pad_tl)),
        "expand_dw": (ed, (x, *fused_dw, [1, 1, 1, 1], 1, "silu", None, None)),
        "expand_dw_ragged_s2": (ed, (x, *fused_dw, [0, 1, 0, 1], 2, "silu", valid, pad_tl)),
    }


@pytest.mark.parametrize("case", ["dw_pool", "dw_ragged_s2", "dw_nchw", "dw_fp16_mma", "affine_pool", "affine_nchw",
                                  "se_hw", "se_count", "pw_gate_res", "pw_pool",
                                  "stem", "stem_ragged", "expand_dw", "expand_dw_ragged_s2"])
def test_custom_op_registration_opcheck(case):
    """Schema, fake (meta) implementation, and AOT dispatch with dynamic shapes agree with the
    real kernels (torch.library.opcheck)."""
    op, args = _opcheck_cases()[case]
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("case", ["dw_ragged_s2", "pw_pool", "stem_ragged", "expand_dw", "expand_dw_ragged_s2"])
def test_fake_implementations_take_symbolic_sizes_with_the_gpus_geometry(case, monkeypatch):
    """Dynamic shapes hand the fake implementations symbolic sizes. On a GPU (not interpreting)
    they reach the tile searches, which are cached by value: traced symbolically here, with the
    GPU's choices, as opcheck's dynamic AOT check and ``torch.compile(dynamic=True)`` do."""
    import importlib

    from torch.fx.experimental.proxy_tensor import make_fx

    for name in ("_utils", "_expand_dw_tiles", "expand_dwconv", "dwconv_bn_act", "pointwise_gated",
                 "stem_conv_bn_act"):
        module = importlib.import_module(f"fastmbconv.kernels.{name}")
        if hasattr(module, "interpreting"):
            monkeypatch.setattr(module, "interpreting", lambda: False)
    op, args = _opcheck_cases()[case]
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def call(*tensors):
        full = list(args)
        for i, t in zip(where, tensors):
            full[i] = t
        return op(*full)

    graph = make_fx(call, tracing_mode="symbolic")(*(args[i] for i in where))
    outputs = [node.meta["val"] for node in graph.graph.nodes if node.target is op]
    assert len(outputs) == 1
    if case == "expand_dw":  # the tiles depend on the map's size, not on the batch
        assert all(isinstance(out.shape[0], torch.SymInt) for out in outputs[0]), [o.shape for o in outputs[0]]


def test_whole_b0_compiles_as_one_graph_and_sees_bn_edits():
    """torch.compile(fullgraph=True) of the whole fused B0: no graph break anywhere (so none
    inside a block), one compile for all 16 blocks, output equal to eager; an in-place BN edit
    after compilation takes effect without a recompile (the fold is traced into the graph, so
    the weights are graph inputs); switching the backend recompiles to the reference path."""
    model = randomize_bn(fm.efficientnet_b0(num_classes=10), size=17).eval().to(DEVICE)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    eager, compiled, out, launches = compile_fullgraph(model, x)
    assert launches["dwconv_bn_act"] == 16
    assert_close_to_ref(out, eager, what="compiled B0")
    with torch.no_grad(), fm.use_backend("fused"):
        model.blocks[2][0].bn2.weight.mul_(2.0)
        edited_eager = model(x)
        assert (edited_eager - eager).abs().max() > 1e-4
        with torch._dynamo.config.patch(error_on_recompile=True):
            assert_close_to_ref(compiled(x), edited_eager, what="compiled B0 after a BN edit")
    with torch.no_grad(), fm.use_backend("reference"), count_launches() as launches:
        reference = compiled(x)
    assert not launches
    assert_close_to_ref(reference, edited_eager, what="compiled B0 on the reference backend")
    torch._dynamo.reset()


@pytest.mark.parametrize("static", ["dynamic=False", "mark_static"])
def test_compiled_model_takes_new_image_sizes_with_static_sizes(static):
    """The fused path picks each layer's kernels from its size, which dynamo cannot do on
    symbolic sizes (a second image size makes them symbolic by default): with the image's
    height and width static, as the README says, every size compiles its own full graph and
    matches the reference; ``mark_static`` keeps the batch dynamic."""
    model = randomize_bn(fm.efficientnet(0.25, 0.25, num_classes=10, pad_mode="same"), size=40).eval().to(DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True,
                             **({"dynamic": False} if static == "dynamic=False" else {}))
    for shape in [(2, 3, 32, 32), (2, 3, 40, 36), (3, 3, 47, 45)]:
        x = torch.randn(*shape, device=DEVICE)
        if static == "mark_static":
            torch._dynamo.mark_static(x, 2)
            torch._dynamo.mark_static(x, 3)
        with torch.no_grad(), fm.use_backend("fused"), count_launches() as launches:
            out = compiled(x)
        assert launches["dwconv_bn_act"] == sum(len(stage) for stage in model.blocks)
        with torch.no_grad():
            assert_close_to_ref(out, reference_forward(model, x), what=f"compiled logits at {shape[2:]}")
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_graph_capture_of_whole_model(dtype, ragged):
    """Warm-up outside capture compiles, autotunes, folds BN and uploads a ragged batch's sizes
    (fixed at capture); the replays must match eager forwards on new inputs. The head map is
    captured beside the logits: logits of two random batches differ by about 1e-2 (the pool
    averages the noise out), too little to show a replay that read the old input."""
    model = randomize_bn(fm.efficientnet_b0(pad_mode="same"), size=224).eval().to("cuda", dtype)
    static_x = torch.randn(8, 3, 224, 224, device="cuda", dtype=dtype)
    sizes = [[224, 224], [161, 97], [224, 33], [7, 5], [100, 224], [224, 224], [31, 200], [1, 1]] if ragged else None

    def forward(x):
        return model(x, sizes), model.forward_features(x, sizes)

    with torch.inference_mode(), fm.use_backend("fused"):
        eager = forward(static_x)  # the warm-up
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            forward(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = forward(static_x)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_out, eager, atol=2e-2, rtol=2e-2)
        new_x = torch.randn_like(static_x)
        static_x.copy_(new_x)
        graph.replay()
        torch.cuda.synchronize()
        fresh = forward(new_x)
    torch.testing.assert_close(static_out, fresh, atol=2e-2, rtol=2e-2)
    assert not torch.allclose(eager[1], fresh[1], atol=2e-2, rtol=2e-2)  # the check above can fail


@pytest.mark.gpu
def test_cuda_compile_whole_fused_model():
    """Inductor (which the CPU tests never run: its layout and stride checks of the custom ops'
    outputs), one full graph per image size, the batch dynamic after a second size: the
    kernels' launches, and the eager fused output."""
    model = randomize_bn(fm.efficientnet_b0(), size=224).eval().to("cuda", torch.float16)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    for shape in [(4, 3, 224, 224), (2, 3, 192, 160)]:
        x = torch.randn(*shape, device="cuda", dtype=torch.float16)
        torch._dynamo.mark_static(x, 2)
        torch._dynamo.mark_static(x, 3)
        with torch.inference_mode(), fm.use_backend("fused"):
            eager = model(x)
            with count_launches() as launches:
                out = compiled(x)
        assert launches["squeeze_excite_gate"] == 16
        torch.testing.assert_close(out, eager, atol=2e-2, rtol=2e-2)
    torch._dynamo.reset()


def test_compute_dtype_never_asks_torch_amp_at_run_time(monkeypatch):
    """Dynamo in torch 2.11 cannot trace ``torch.amp.is_autocast_available`` (it broke every
    fullgraph compile of the fused model on the GPU image), so the forward must not call it:
    the answer is read once at import. Autocast still lowers an fp32 model."""
    from fastmbconv import plan

    def untraceable(device_type):
        raise AssertionError("torch.amp.is_autocast_available called inside the forward")

    monkeypatch.setattr(torch.amp, "is_autocast_available", untraceable)
    model = fm.efficientnet_b0(num_classes=10)
    x = torch.randn(1, 3, 17, 17)
    assert plan.compute_dtype(model, x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert plan.compute_dtype(model, x) == torch.bfloat16
