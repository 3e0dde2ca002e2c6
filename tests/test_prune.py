"""``prune_intermediate_layers`` (timm's, as of 1.0.31): what it removes, what a pruned model
returns on both executors, its weights, and timm's own models side by side."""
import copy
import re

import pytest
import torch
from torch import nn

import fastmbconv as fm

from .helpers import import_or_skip, randomize_bn, reference_forward, timm_model

X = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
SIZES = [[40, 56], [23, 37]]


def tiny(**kw):
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet(0.25, 0.25, **kw), size=X.shape[-2:]).eval()


def pruned(model, *args, **kw):
    model = copy.deepcopy(model)
    model.prune_intermediate_layers(*args, **kw)
    return model


def head_keys(model) -> set:
    return {k.split(".")[0] for k in model.state_dict() if k.startswith(("conv_head", "bn2", "classifier"))}


# B0: feature maps 0..4 are stages 1, 2, 3, 5, 7 (blocks[0], [1], [2], [4], [6]), of 16, 24, 40, 112, 320 channels
@pytest.mark.parametrize("kw, stages, width", [
    (dict(indices=[0, 2]), 3, 40),
    (dict(), 7, 320),  # the last map: every stage stays, the head goes
    (dict(indices=[1], prune_head=False), 2, 24),  # truncated: the head goes anyway
    (dict(indices=5, prune_head=False, prune_norm=True), 7, 320),
    (dict(indices=[0, 3], extra_blocks=True), 3, 40),  # extra_blocks: the stem, then every stage
    (dict(indices=[0], extra_blocks=True), 0, 32),  # the stem alone
])
def test_pruning_removes_the_stages_after_the_last_selected_map_and_the_head(kw, stages, width):
    model = fm.efficientnet_b0()
    taken = model.prune_intermediate_layers(**kw)
    indices = kw.get("indices", 1)
    assert taken == (list(range(5 - indices, 5)) if isinstance(indices, int) else indices)
    assert len(model.blocks) == len(model.stages) == stages
    assert not model.has_head_conv and isinstance(model.bn2, nn.Identity)
    assert isinstance(model.classifier, nn.Identity) and (model.num_classes, model.global_pool) == (0, "")
    assert model.num_features == model.head_hidden_size == width
    assert head_keys(model) == set() and not any(k.startswith(f"blocks.{stages}.") for k in model.state_dict())
    assert len(model.feature_info) == 5  # as in timm: feature indices keep counting over every map


def test_pruning_that_removes_nothing_leaves_the_model_as_it_was():
    model = fm.efficientnet_b0()
    keys = set(model.state_dict())
    assert model.prune_intermediate_layers(5, prune_head=False) == [0, 1, 2, 3, 4]
    assert model.prune_intermediate_layers(3, prune_head=False, extra_blocks=True) == [5, 6, 7]
    assert model.has_head_conv and set(model.state_dict()) == keys and model.num_features == 1280
    assert isinstance(model.classifier, nn.Linear) and model.global_pool == "avg"


def test_a_pruned_model_returns_the_last_kept_map():
    full = tiny()
    with torch.no_grad():
        maps = full.forward_intermediates(X, intermediates_only=True)
        stem = full.forward_intermediates(X, indices=[0], extra_blocks=True, intermediates_only=True)[0]
        ragged_map = full.forward_intermediates(X, indices=[2], valid_sizes=SIZES, intermediates_only=True)[0]
        model = pruned(full, [0, 2])
        assert model.num_features == maps[2].shape[1]
        torch.testing.assert_close(model(X), maps[2], rtol=0, atol=0)
        torch.testing.assert_close(model.forward_features(X), maps[2], rtol=0, atol=0)
        final, kept = model.forward_intermediates(X)  # None takes the kept maps
        torch.testing.assert_close((final, kept), (maps[2], maps[:3]), rtol=0, atol=0)
        early, taken = model.forward_intermediates(X, indices=[1], stop_early=True)
        torch.testing.assert_close((early, taken), (maps[1], [maps[1]]), rtol=0, atol=0)
        torch.testing.assert_close(model(X, SIZES), ragged_map, rtol=0, atol=0)
        torch.testing.assert_close(pruned(full, [0], extra_blocks=True)(X), stem, rtol=0, atol=0)

        model.reset_classifier(3, "avg")  # a new classifier on the pruned features, as timm allows
        assert model.classifier.in_features == maps[2].shape[1]
        torch.testing.assert_close(model(X), model.classifier(maps[2].mean((2, 3))), rtol=1e-6, atol=1e-6)


def test_hooks_on_the_pruned_head_fire_as_in_timm():
    """timm's forward and forward_features still call the Identity conv_head and bn2 that a
    pruned model keeps, so hooks placed on them (feature taps, observers) fire."""
    model, seen = pruned(tiny(), [0, 2]), []
    for name in ("conv_head", "bn2"):
        getattr(model, name).register_forward_hook(lambda m, args, out, name=name: seen.append((name, out.shape)))
    with torch.no_grad():
        out, features = model(X, SIZES), model.forward_features(X)
    assert seen == [("conv_head", out.shape), ("bn2", out.shape)] * 2 and features.shape == out.shape


def test_pruned_models_refuse_what_they_no_longer_have():
    model = pruned(tiny(), [0, 2])
    with pytest.raises(ValueError, match=r"feature index 3 \(blocks.4\) was removed by prune_intermediate_layers"):
        model.forward_intermediates(X, indices=[0, 3])
    with pytest.raises(ValueError, match="removed by prune_intermediate_layers"):
        model.forward_intermediates(X, indices=4)  # the last 4 of timm's 5: 1..4
    with pytest.raises(ValueError, match=r"keeps the current pooling, global_pool=''"):
        model.reset_classifier(3)
    with pytest.raises(ValueError, match="no feature map is left"):
        pruned(tiny(), [0], extra_blocks=True).forward_intermediates(X)
    with pytest.raises(ValueError, match="out of range"):
        tiny().prune_intermediate_layers([5])
    with pytest.raises(RuntimeError, match="features_only"):
        fm.efficientnet_b0(features_only=True).prune_intermediate_layers([0, 2])


def test_pruned_weights_load_into_a_model_pruned_alike_and_nowhere_else():
    source, target = pruned(tiny(), [0, 2]), pruned(fm.efficientnet(0.25, 0.25), [0, 2])
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(X), source(X), rtol=0, atol=0)
    with pytest.raises(fm.StateDictMismatchError, match=r"(?s)unexpected keys.*blocks\.3\..*conv_head\.weight"):
        target.load_state_dict(tiny().state_dict())
    with pytest.raises(fm.StateDictMismatchError, match=r"found stages \[0, 1, 2\] .*prune_intermediate_layers"):
        fm.from_state_dict(source.state_dict(), pad_mode="symmetric")
    with pytest.raises(fm.StateDictMismatchError, match="features-only or pruned"):
        fm.from_state_dict(pruned(tiny(), 5, prune_norm=True).state_dict(), pad_mode="symmetric")


def test_a_pruned_model_trains():
    model = pruned(tiny(), [1]).train()
    model.set_grad_checkpointing()
    model(X).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.interpreter
def test_the_fused_path_runs_a_pruned_model_without_a_head_launch(device):
    from fastmbconv.kernels._launch import count_launches
    from fastmbconv.kernels.testing import assert_close_to_ref

    model, x = tiny(pad_mode="same").to(device), X.to(device)
    with torch.inference_mode(), fm.use_backend("fused"):
        model(x)  # a fold with the head, cached before pruning
        with count_launches() as unpruned:
            model.forward_intermediates(x, indices=[2], intermediates_only=True, stop_early=True)
        model.prune_intermediate_layers([0, 2])
        ref = reference_forward(model, x, SIZES)
        with count_launches() as launches:
            out = model(x, SIZES)
        assert launches == unpruned and launches["pointwise_gated"] > 0 and launches["pointwise_gated[pool]"] == 0
        assert_close_to_ref(out, ref, what="pruned model's map")
        model.reset_classifier(3, "avg")
        assert_close_to_ref(model(x, SIZES), reference_forward(model, x, SIZES), what="new classifier")
        stem = pruned(model, [0], extra_blocks=True)  # no block left: the stem's map
        with count_launches() as launches:
            out = stem(x, SIZES)
        assert dict(launches) == {"stem_conv_bn_act": 1}
        assert_close_to_ref(out, reference_forward(stem, x, SIZES), what="the stem alone")


@pytest.mark.parametrize("prefix", ["", "tf_"])
def test_pruning_matches_timm(prefix):
    timm = import_or_skip("timm")
    src0 = timm_model(f"{prefix}efficientnet_b0", X.shape[-2:])
    ours0 = fm.from_timm(src0).eval()
    before_1_0_31 = tuple(map(int, re.match(r"(\d+)\.(\d+)\.(\d+)", timm.__version__).groups())) < (1, 0, 31)
    for kw in [{}, {"indices": 3}, {"indices": [0, 2]}, {"indices": [1], "prune_head": False},
               {"indices": 5, "prune_head": False}, {"indices": 5, "prune_head": False, "prune_norm": True},
               {"indices": [0, 3], "extra_blocks": True}, {"indices": [0], "extra_blocks": True}]:
        src, ours = copy.deepcopy(src0), copy.deepcopy(ours0)
        taken = ours.prune_intermediate_layers(**kw)
        assert src.prune_intermediate_layers(**kw) == taken and len(ours.blocks) == len(src.blocks), kw
        select = dict(indices=taken, extra_blocks=kw.get("extra_blocks", False))
        with torch.no_grad():
            torch.testing.assert_close(ours.forward_intermediates(X, intermediates_only=True, **select),
                                       src.forward_intermediates(X, intermediates_only=True, **select),
                                       rtol=1e-4, atol=1e-4, msg=str(kw))
        if before_1_0_31:
            continue  # older timm kept the head conv after pruning (its forward fails on truncated stages)
        assert set(ours.state_dict()) == set(src.state_dict()), kw
        assert (ours.num_features, ours.head_hidden_size, ours.num_classes, ours.global_pool) == (
            src.num_features, src.head_hidden_size, src.num_classes, src.global_pool.pool_type), kw
        with torch.no_grad():
            torch.testing.assert_close(ours(X), src(X), rtol=1e-4, atol=1e-4, msg=str(kw))
            torch.testing.assert_close(ours.forward_intermediates(X, stop_early=True, **select),
                                       src.forward_intermediates(X, stop_early=True, **select),
                                       rtol=1e-4, atol=1e-4, msg=str(kw))
