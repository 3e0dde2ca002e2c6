"""timm's model hooks: FeatureInfo and out_indices, forward_intermediates, gradient
checkpointing, reset_classifier with a pool choice, group_matcher, and the memory format of the
returned maps on both executors."""
import copy
import inspect
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

import fastmbconv as fm
from fastmbconv import reference
from fastmbconv.features import take_indices

from .helpers import data_parallel_replica, import_or_skip, randomize_bn, reference_forward, timm_model

X = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet_b0(pad_mode="same"), size=X.shape[-2:]).eval()


def tiny(size=X.shape[-2:], **kw):
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet(0.25, 0.25, **kw), size=size).eval()


def test_feature_info_has_timms_stages_and_accessors(b0):
    info = b0.feature_info
    assert isinstance(info, fm.FeatureInfo)
    assert info.get("stage") == [1, 2, 3, 5, 7]  # timm counts the stem as stage 0
    assert info.channels() == [16, 24, 40, 112, 320] and info.reduction() == [2, 4, 8, 16, 32]
    assert info.module_name() == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert len(info) == 5 and info[3]["num_chs"] == 112 and [d["index"] for d in info] == list(range(5))
    assert info.channels(4) == 320 and info.reduction([0, 2]) == [2, 8]


@pytest.mark.parametrize("out_indices, channels, maps", [
    ((-1, -2), [320, 112], [112, 320]),  # info in the given order, maps in network order (timm)
    (2, [112, 320], [112, 320]),  # an int: the last n
    ((0, 3), [16, 112], [16, 112]),
])
def test_out_indices_as_timm_takes_them(out_indices, channels, maps):
    model = fm.efficientnet_b0(features_only=True, out_indices=out_indices).eval()
    assert model.feature_info.channels() == channels
    with torch.no_grad():
        assert [t.shape[1] for t in model(X)] == maps


def test_bad_out_indices():
    for bad in [(5,), (-6,), 0, 6, ()]:
        with pytest.raises(ValueError, match="out_indices"):
            fm.efficientnet_b0(features_only=True, out_indices=bad)
    assert take_indices(5, None) == [0, 1, 2, 3, 4] and take_indices(5, [-1, 0]) == [4, 0]


def test_take_indices_refuses_zero_last_n_and_bools():
    """As timm: an int n takes the last n, for 1 <= n <= count; 0 is no selection (not an empty
    one) and a bool is neither an int nor a sequence (True is not "the last 1")."""
    assert take_indices(5, 5) == [0, 1, 2, 3, 4] and take_indices(5, 1) == [4]
    for bad in (0, 6, -1):
        with pytest.raises(ValueError, match="out of range"):
            take_indices(5, bad)
    for bad in (True, False):
        with pytest.raises(TypeError, match="int or a sequence"):
            take_indices(5, bad)


def test_feature_info_of_a_subset_answers_for_the_returned_features():
    """With out_indices picking some features: the accessors and get_dicts answer for those, in
    out_indices' order; len and indexing still see every feature; plan_stages is in network
    order, each stage once."""
    info = fm.efficientnet_b0(features_only=True, out_indices=(3, 1)).feature_info
    assert len(info) == 5 and info[4]["num_chs"] == 320
    assert info.channels() == [112, 24] and info.module_name() == ["blocks.4", "blocks.1"]
    assert info.get_dicts(keys=["num_chs", "stage"]) == [{"num_chs": 112, "stage": 5}, {"num_chs": 24, "stage": 2}]
    assert [d["index"] for d in info.get_dicts()] == [3, 1] and info.get_dicts(idx=0)["reduction"] == 2
    assert info.plan_stages() == (1, 4)
    assert info.from_other((4, -1, 0)).plan_stages() == (0, 6)


def test_forward_intermediates():
    model = tiny(size=(32, 40))
    x = X[:1, :, :32, :40]
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [m.shape[1] for m in maps] == model.feature_info.channels()
        assert [x.shape[-2] // m.shape[-2] for m in maps] == [2, 4, 8, 16, 32]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last2) == 2
        torch.testing.assert_close(last2[1], maps[4], rtol=0, atol=0)
        early, taken = model.forward_intermediates(x, indices=[1, -4], stop_early=True)
        assert len(taken) == 1 and early is taken[0]
        torch.testing.assert_close(early, maps[1], rtol=0, atol=0)
        stem, *rest = model.forward_intermediates(x, extra_blocks=True, intermediates_only=True)
        assert stem.shape[1:] == (8, 16, 20) and len(rest) == 7
        torch.testing.assert_close(rest[4], maps[3], rtol=0, atol=0)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[5])
    with pytest.raises(RuntimeError, match="intermediates_only"):
        fm.efficientnet_b0(features_only=True).forward_intermediates(x)


@pytest.mark.parametrize("prefix", ["", "tf_"])
def test_forward_intermediates_match_timm(prefix):
    timm = import_or_skip("timm")
    src = timm_model(f"{prefix}efficientnet_b0", X.shape[-2:])
    model = fm.from_timm(src).eval()
    assert model.feature_info.get_dicts(keys=["stage", "reduction", "module", "num_chs"]) == src.feature_info
    with torch.no_grad():
        for kw in [{}, {"indices": 2}, {"indices": [1, -1], "stop_early": True}, {"indices": [0, 2], "stop_early": True},
                   {"extra_blocks": True}, {"indices": 3, "extra_blocks": True, "stop_early": True},
                   {"intermediates_only": True, "indices": [-2]}]:
            ours, theirs = model.forward_intermediates(X, **kw), src.forward_intermediates(X, **kw)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=str(kw))
    assert model.group_matcher() == src.group_matcher() and model.group_matcher(True) == src.group_matcher(True)
    backbone = timm.create_model(f"{prefix}efficientnet_b0", features_only=True, out_indices=(-1, 1))
    ours = fm.create_model(f"{prefix}efficientnet_b0", features_only=True, out_indices=(-1, 1))
    assert ours.feature_info.channels() == backbone.feature_info.channels()
    assert ours.feature_info.module_name() == backbone.feature_info.module_name()
    assert ours.pretrained_cfg == backbone.pretrained_cfg


def test_group_matcher_groups_every_parameter(b0):
    import re

    m = b0.group_matcher()
    assert m["stem"] == r"^conv_stem|bn1" and m["blocks"][1] == (r"conv_head|bn2", (99999,))
    names = [n for n, _ in b0.named_parameters()]
    block = re.compile(m["blocks"][0][0])
    assert {block.match(n).groups() for n in names if block.match(n)} == {
        (str(i), str(j)) for i, s in enumerate(b0.blocks) for j in range(len(s))}
    coarse = re.compile(b0.group_matcher(coarse=True)["blocks"][0][0])
    assert {coarse.match(n).group(1) for n in names if coarse.match(n)} == {str(i) for i in range(7)}


# ---------------------------------------------------------------- gradient checkpointing
class PeakLiveBytes(TorchDispatchMode):
    """The peak of CPU tensor bytes allocated inside the mode and still alive (storages are
    counted once and released when they are freed): activation memory, forward and backward."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self.seen:
                    self.seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key, size):
        self.live -= size
        self.seen.discard(key)


def _train_step(model, x, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with PeakLiveBytes() as meter:
        model(x).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, meter.peak


@pytest.mark.slow
def test_grad_checkpointing_same_gradients_less_memory():
    torch.manual_seed(0)
    plain = fm.efficientnet(0.25, 0.5, num_classes=10, drop_path_rate=0.2).train()
    checked = copy.deepcopy(plain)
    checked.set_grad_checkpointing()
    assert checked.grad_checkpointing
    x = torch.randn(4, 3, 96, 96)  # activations well above the weights' gradients
    _train_step(plain, x), _train_step(checked, x)  # warm-up: one-time allocations
    grads, peak = _train_step(plain, x)
    grads_ck, peak_ck = _train_step(checked, x)
    assert grads.keys() == grads_ck.keys()
    for name in grads:  # drop-path masks are replayed: the same samples are dropped
        torch.testing.assert_close(grads_ck[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert peak_ck < 0.75 * peak, (peak_ck, peak)  # measured: 0.66
    checked.set_grad_checkpointing(False)
    assert set(checked.state_dict()) == set(plain.state_dict())


def test_grad_checkpointing_runs_each_block_of_a_data_parallel_replica_with_its_weights(monkeypatch):
    """Checkpointing is the layer walk's, read from the model a forward runs: a DataParallel
    replica (on "meta" here, as if another GPU) checkpoints its own blocks, with its own weights,
    only while autograd records."""
    calls = []

    def counted(block, *args, **kwargs):
        calls.append(block)
        return checkpoint(block, *args, **kwargs)

    monkeypatch.setattr(reference, "checkpoint", counted)
    model = fm.efficientnet(0.25, 0.5, num_classes=10)
    model.set_grad_checkpointing()
    replica = data_parallel_replica(model)
    blocks = [b for stage in replica.blocks for b in stage]
    x = torch.empty(2, 3, 32, 32, device="meta")
    assert replica(x).device.type == "meta"
    assert calls == blocks
    with torch.no_grad():
        replica(x)
    assert len(calls) == len(blocks)
    model.requires_grad_(False)  # frozen: nothing to record, nothing to recompute
    data_parallel_replica(model)(x)
    assert len(calls) == len(blocks)
    model.requires_grad_(True).set_grad_checkpointing(False)
    data_parallel_replica(model)(x)
    assert len(calls) == len(blocks)


# ---------------------------------------------------------------- classifier and pooling
def test_reset_classifier_with_pools():
    model = tiny()
    with torch.no_grad():
        fmap = model.forward_features(X)
        model.reset_classifier(0, "max")
        torch.testing.assert_close(model(X), fmap.amax((2, 3)), rtol=0, atol=0)
        model.reset_classifier(7, None)  # None keeps max
        assert model.global_pool == "max" and model(X).shape == (2, 7) and not model.classifier.training
        torch.testing.assert_close(model(X), model.classifier(fmap.amax((2, 3))), rtol=0, atol=0)
        model.reset_classifier(3)  # the default keeps max too (timm 1.0.31)
        assert model.global_pool == "max" and model(X).shape == (2, 3)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(X), fmap, rtol=0, atol=0)
        model.reset_classifier(7, "avg")
        assert model.global_pool == "avg" and model(X).shape == (2, 7)
        torch.testing.assert_close(model(X), model.classifier(fmap.mean((2, 3))), rtol=1e-6, atol=1e-6)
        model.reset_classifier(0)
        torch.testing.assert_close(model(X), fmap.mean((2, 3)), rtol=1e-6, atol=1e-6)
        model.reset_classifier(0, "")
    with pytest.raises(ValueError, match=r"keeps the current pooling, global_pool=''.*'avg' or 'max'"):
        model.reset_classifier(5)  # timm keeps no pooling here too, then its Linear fails on the map
    assert model.global_pool == "" and isinstance(model.classifier, torch.nn.Identity)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(5, "")
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, "catavgmax")
    assert fm.efficientnet_b0(global_pool="max").global_pool == "max"


def test_classifier_attributes_and_reset_follow_timm():
    timm = import_or_skip("timm")
    src, ours = (lib.create_model("efficientnet_b0", global_pool="max").eval() for lib in (timm, fm))
    assert (ours.num_features, ours.head_hidden_size) == (src.num_features, src.head_hidden_size)
    x = torch.randn(1, 3, 64, 64)
    # timm before 1.0.31 reset the pool to 'avg' by default; ours keeps it, as 1.0.31 does: an
    # older timm is asked for the kept pool by name
    timm_keeps = inspect.signature(src.reset_classifier).parameters["global_pool"].default is None
    for args in [(0, ""), (7, "avg"), (3, "max"), (0,), (5,), (0, "avg"), (4,)]:
        src.reset_classifier(*args if timm_keeps or len(args) == 2 else (*args, src.global_pool.pool_type))
        ours.reset_classifier(*args)
        assert ours.global_pool == src.global_pool.pool_type, args
        with torch.no_grad():
            assert ours(x).shape == src(x).shape, args


def test_ragged_max_pool_matches_images_run_alone():
    model = tiny(num_classes=0, global_pool="max", pad_mode="same")
    sizes = [[40, 56], [17, 33]]
    with torch.no_grad():
        out = model(X, sizes)
        alone = model(X[1:, :, :17, :33])
    torch.testing.assert_close(out[1:], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:1], model(X[:1]), rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("pool,num_classes", [("max", 0), ("max", 7), ("", 0)])
def test_fused_path_pools_like_the_reference(pool, num_classes, device):
    """Max and no pooling on the fused path: the head map (not the pool-only head launch), then
    the reference head, over each image's valid region of a ragged batch."""
    from fastmbconv.kernels._launch import count_launches
    from fastmbconv.kernels.testing import assert_close_to_ref

    model = tiny(num_classes=num_classes, global_pool=pool, pad_mode="same").to(device)
    x, sizes = X.to(device), [[40, 56], [17, 33]]
    with torch.inference_mode():
        ref = reference_forward(model, x, sizes)
        with fm.use_backend("fused"), count_launches() as launches:
            out = model(x, sizes)
    assert launches["pointwise_gated"] > 0 and launches["pointwise_gated[pool]"] == 0
    assert out.shape == ref.shape and out.dim() == (4 if pool == "" else 2)
    assert_close_to_ref(out, ref, what=f"{pool or 'no'} pool")


# ---------------------------------------------------------------- memory format, both paths
@pytest.mark.interpreter
@pytest.mark.parametrize("channels_last", [False, True])
def test_both_executors_return_the_inputs_memory_format(channels_last, device):
    model = tiny(size=32, num_classes=10).to(device)
    x = torch.randn(1, 3, 32, 32, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    outs = {}
    for backend in ("reference", "fused"):
        with torch.inference_mode(), fm.use_backend(backend):
            final, maps = model.forward_intermediates(x, indices=[0, -1])
        assert all(t.is_contiguous(memory_format=fmt) for t in [final, *maps]), backend
        outs[backend] = [final, *maps]
    for ours, ref in zip(outs["fused"], outs["reference"]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
