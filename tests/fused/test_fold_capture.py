"""The fold cache and CUDA graphs, on a CPU ("a capture is under way" is patched in).

A graph holds the addresses of the folded tensors its capture read: a later refold must write
into them rather than free them (the allocator would hand their memory to other tensors that
replays then read), and a fold made inside a capture has no values until a replay runs, so it
must not be cached for eager forwards."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import fused
from fastmbconv.fused.fold import fold_tensors
from fastmbconv.kernels import _utils

from ..helpers import assert_fold_is_fresh, randomize_bn


@pytest.fixture
def capture(monkeypatch):
    state = {"on": False}
    monkeypatch.setattr(_utils, "cuda_capturing", lambda: state["on"])
    return state


def model_b0(**kw):
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet_b0(num_classes=10, **kw)).eval()


def read_in_a_capture(capture, model, dtype=None):
    """The fold a capture reads: folded once outside (the warm-up), then inside the capture."""
    fused.folded(model, dtype)
    capture["on"] = True
    seen = fused.folded(model, dtype)
    capture["on"] = False
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_a_refold_writes_into_the_fold_a_capture_read(capture, dtype):
    model = model_b0()
    seen = read_in_a_capture(capture, model, dtype)
    addresses = [t.data_ptr() for t in fold_tensors(seen) if t is not None]
    with torch.no_grad():
        model.blocks[1][0].bn3.weight.mul_(2.0)
        model.blocks[3][1].se.conv_reduce.weight.add_(0.5)
    again = fused.folded(model, dtype)
    assert again is seen and [t.data_ptr() for t in fold_tensors(again) if t is not None] == addresses
    assert_fold_is_fresh(again, model, dtype)
    # a dtype no capture read is folded anew
    other = torch.bfloat16 if dtype == torch.float16 else torch.float16
    first = fused.folded(model, other)
    with torch.no_grad():
        model.bn1.bias.add_(1.0)
    assert fused.folded(model, other) is not first


def test_refold_writes_into_the_fold_a_capture_read(capture):
    model = model_b0()
    seen = read_in_a_capture(capture, model)
    addresses = [t.data_ptr() for t in fold_tensors(seen) if t is not None]
    model.blocks[2][0].bn2.bias.data.add_(0.25)  # unseen by the cache
    assert fused.refold(model) is seen and [t.data_ptr() for t in fold_tensors(seen) if t is not None] == addresses
    assert_fold_is_fresh(seen, model, torch.float32)


def test_a_refold_that_cannot_reuse_the_captured_tensors_keeps_them(capture):
    model = model_b0()
    seen = read_in_a_capture(capture, model)
    model.to("meta")  # another device: the captured tensors cannot take the new values
    with pytest.warns(UserWarning, match="keeps replaying the old weights; capture it again"):
        now = fused.folded(model)
    assert now is not seen and now.stem_weight.device.type == "meta"
    assert any(kept is seen for kept in model._fused_fold_cache.kept)
    model.to(torch.float16)  # a later refold keeps it too
    fused.folded(model)
    assert any(kept is seen for kept in model._fused_fold_cache.kept)


def test_a_refold_of_new_shapes_keeps_the_captured_tensors(capture):
    """A submodule replaced by one of another width (same device and dtype): the captured
    tensors cannot take the new shapes, so none is written and they are kept."""
    from fastmbconv.layers import SqueezeExcite

    model = model_b0()
    seen = read_in_a_capture(capture, model)
    before = [t.clone() for t in fold_tensors(seen) if t is not None]
    block = model.blocks[1][0]
    block.se = SqueezeExcite(block.mid_channels, 2 * block.se.conv_reduce.out_channels)
    with pytest.warns(UserWarning, match="capture it again"):
        now = fused.folded(model)
    assert now is not seen and now.stages[1][0].se_w_reduce.shape[0] == 8
    assert any(kept is seen for kept in model._fused_fold_cache.kept)
    assert all(torch.equal(a, b) for a, b in zip(before, [t for t in fold_tensors(seen) if t is not None]))
    assert_fold_is_fresh(now, model, torch.float32)


def test_a_fold_needed_inside_a_capture_is_not_cached(capture):
    model = model_b0()
    warm = fused.folded(model)
    capture["on"] = True
    inside = fused.folded(model, torch.float16)  # a dtype the warm-up never folded
    assert torch.float16 not in model._fused_fold_cache.by_dtype
    with torch.no_grad():
        model.blocks[2][0].bn2.weight.mul_(3.0)  # weights changed since the warm-up
    changed = fused.folded(model)
    assert changed is not warm and model._fused_fold_cache.by_dtype[torch.float32] is warm
    assert_fold_is_fresh(changed, model, torch.float32)
    capture["on"] = False
    assert fused.folded(model, torch.float16) is not inside
    assert_fold_is_fresh(fused.folded(model), model, torch.float32)


def test_fold_tensors_never_alias_a_parameter():
    """Refilling writes into fold tensors; none may be a parameter's storage."""
    for dtype in (torch.float32, torch.float16):
        model = model_b0().to(dtype)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        shared = [i for i, t in enumerate(fold_tensors(fused.folded(model))) if t is not None
                  and t.untyped_storage().data_ptr() in params]
        assert not shared, shared


def capture_b0(model, x):
    """The documented recipe: a warm-up on a side stream, then the capture. Returns (graph, out)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(x)
    return graph, out


def edit_weights(model):
    with torch.no_grad():
        model.blocks[1][0].bn3.weight.mul_(2.0)
        model.bn2.bias.add_(0.5)


@pytest.mark.gpu
def test_cuda_graph_replays_see_weights_changed_after_the_capture():
    """Change the weights after capturing, refold with one eager forward, replay: the graph
    reads the refolded values, not freed memory."""
    model = model_b0().to("cuda", torch.float16)
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    with torch.inference_mode(), fm.use_backend("fused"):
        before = model(x)
        graph, out = capture_b0(model, x)
    edit_weights(model)
    with torch.inference_mode(), fm.use_backend("fused"):
        eager = model(x)  # refolds into the tensors the graph reads
        # blocks of the fold's sizes: what a freed fold's memory would be handed to
        poison = [torch.full_like(t, float("nan")) for t in fold_tensors(fused.folded(model)) if t is not None]
        graph.replay()
        torch.cuda.synchronize()
    del poison
    assert_fold_is_fresh(fused.folded(model), model, torch.float16)  # the bn3 edit too: the logits hardly see it
    assert not torch.allclose(before, eager, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, eager, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_cuda_graph_of_weights_changed_since_the_warm_up_refolds_in_every_replay():
    """The fold a capture needs (weights edited after the warm-up) is recorded into the graph."""
    model = model_b0().to("cuda", torch.float16)
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    with torch.inference_mode(), fm.use_backend("fused"):
        before = model(x)
    edit_weights(model)
    with torch.inference_mode(), fm.use_backend("fused"):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # no warm-up since the edit: the fold happens in the capture
            out = model(x)
        graph.replay()
        torch.cuda.synchronize()
        eager = model(x)
    assert not torch.allclose(before, eager, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out, eager, atol=2e-2, rtol=2e-2)
