"""The fold cache (fastmbconv.fused.fold): folded weights are reused while the model's weights
are unchanged and refolded after any edit it can see (in-place edits, replaced modules or
storage, load_state_dict, optimizer steps, fused ones included); copies fold their own; a
deleted model is freed without the cycle collector."""
import gc
import weakref

import pytest
import torch

import fastmbconv as fm
from fastmbconv import fused
from fastmbconv.kernels.testing import assert_close_to_ref

from ..helpers import DEVICE, assert_fold_is_fresh, build, data_parallel_replica, expected_launches, reference_forward, run_both

pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("pointwise_on_triton", "expand_dw_separate")]


def test_bn_edit_in_place_is_seen_and_fold_is_cached():
    model = build(num_classes=10, size=(19, 23))
    x = torch.randn(1, 3, 19, 23, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"):
        before = model(x)
        folded_once = fused.folded(model)
        assert fused.folded(model) is folded_once  # unchanged weights: no refold
    with torch.no_grad():
        model.blocks[3][1].bn2.weight.mul_(1.7)
        model.blocks[5][0].bn3.running_var.add_(0.3)
    with torch.inference_mode():
        ref = reference_forward(model, x)
        with fm.use_backend("fused"):
            after = model(x)
            assert fused.folded(model) is not folded_once
    assert (after - before).abs().max() > 1e-3
    assert_close_to_ref(after, ref, what="logits after an in-place BN edit")


def test_an_in_place_edit_of_bn_statistics_alone_refolds():
    """Running statistics are buffers, not parameters: an in-place edit of one alone is seen too."""
    model = build(num_classes=10, size=17)
    first = fused.folded(model)
    with torch.no_grad():
        model.blocks[4][2].bn2.running_var.mul_(3.0)
    again = fused.folded(model)
    assert again is not first
    assert_fold_is_fresh(again, model, torch.float32)
    with torch.no_grad():
        model.bn1.running_mean.add_(0.5)
    assert fused.folded(model) is not again
    assert_fold_is_fresh(fused.folded(model), model, torch.float32)


def test_a_new_bn_eps_refolds():
    """eps is a plain attribute, no tensor: the fold must still see it change (bn2 of a block and
    the stem's bn1, whose eps folds into the stem kernel's weights)."""
    model = build(num_classes=10, size=17)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"):
        before = model(x)
    for bn in (model.blocks[3][0].bn2, model.bn1):
        first = fused.folded(model)
        bn.eps = 0.5
        out, ref, _ = run_both(model, x)
        assert fused.folded(model) is not first
        assert (out - before).abs().max() > 1e-3
        assert_close_to_ref(out, ref, what="logits after a new BN eps")


def test_fold_cache_sees_replaced_modules_and_swapped_data():
    """Edits that bump no version counter still refold: a replaced submodule, and a ``.data``
    swap (a new storage behind the same Parameter object)."""
    model = build(num_classes=10, size=17)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"):
        model(x)
    first = fused.folded(model)
    old_bn = model.blocks[2][0].bn2
    new_bn = torch.nn.BatchNorm2d(old_bn.num_features, eps=old_bn.eps).to(DEVICE).eval()
    new_bn.load_state_dict(old_bn.state_dict())
    with torch.no_grad():
        new_bn.weight.data = old_bn.weight.data * 1.5  # built before being attached
    model.blocks[2][0].bn2 = new_bn
    out, ref, _ = run_both(model, x)
    assert fused.folded(model) is not first
    assert_close_to_ref(out, ref, what="logits after replacing a BN module")
    second = fused.folded(model)
    conv = model.blocks[4][1].conv_pwl
    conv.weight.data = conv.weight.data.flip(0).contiguous()
    out, ref, _ = run_both(model, x)
    assert fused.folded(model) is not second
    assert_close_to_ref(out, ref, what="logits after a .data swap")


def test_refold_after_an_edit_through_data():
    """``p.data.mul_()`` bumps no version counter the fold cache can see (the cache keeps its
    fold); refold() folds the edited weights."""
    model = build(num_classes=10, size=17)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"):
        before = model(x)
    first = fused.folded(model)
    model.blocks[3][0].bn3.weight.data.mul_(1.5)
    model.conv_stem.weight.data.mul_(0.5)
    assert fused.folded(model) is first  # unseen
    again = fused.refold(model)
    assert again is not first and fused.folded(model) is again
    assert_fold_is_fresh(again, model, torch.float32)  # both edits, the stem's included
    out, ref, _ = run_both(model, x)
    assert (out - before).abs().max() > 1e-3
    assert_close_to_ref(out, ref, what="logits after .data edits and refold()")
    assert fused.refold(build(num_classes=10, size=17)) is not None  # a model never folded: folds


def test_load_state_dict_refolds():
    model, other = build(num_classes=10, size=17), build(num_classes=10, seed=1, size=17)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"):
        model(x)
    model.load_state_dict(other.state_dict())
    out, ref, _ = run_both(model, x)
    assert_close_to_ref(out, ref, what="logits after load_state_dict")


def test_a_model_with_a_fold_still_copies_pickles_and_counts_flops():
    """The fold cache (events, a lock) is not copied: a deepcopy or an unpickled model folds its
    own weights when first run."""
    import copy
    import io

    model = build(num_classes=10)
    first = fused.folded(model)
    saved = io.BytesIO()
    torch.save(model, saved)  # a whole model (trusted here: our own bytes)
    saved.seek(0)
    for twin in (copy.deepcopy(model), torch.load(saved, weights_only=False)):
        assert getattr(twin, "_fused_fold_cache", None) is None
        again = fused.folded(twin)
        assert again is not first and torch.equal(again.stages[1][0].w_project, first.stages[1][0].w_project)
    assert fm.count_flops(model, 224) == fm.count_flops(build(num_classes=10), 224)
    assert fused.folded(model) is first


def test_a_data_parallel_replica_or_shallow_copy_folds_its_own_weights():
    """A DataParallel replica (and copy.copy) starts with a copy of the model's __dict__, the
    fold cache included: it must fold its own weights (a replica's are plain attributes, on its
    GPU; "meta" here) and leave the model's cache alone."""
    import copy

    model = build(num_classes=10, size=(17, 19))
    first = fused.folded(model)
    replica = data_parallel_replica(model)
    assert fused.folded(replica).stem_weight.device.type == "meta"
    assert fused.folded(model) is first
    shallow = copy.copy(model)
    again = fused.folded(shallow)
    assert again is not first and torch.equal(again.stages[1][0].w_project, first.stages[1][0].w_project)
    assert fused.folded(model) is first and fused.folded(shallow) is again
    on_cpu = data_parallel_replica(model, DEVICE)
    x = torch.randn(1, 3, 17, 19, device=DEVICE)
    out, ref, launches = run_both(on_cpu, x)
    assert dict(launches) == expected_launches(on_cpu)
    assert_close_to_ref(out, ref, what="a replica's logits")


@pytest.mark.parametrize("fused_step", [True, False], ids=["fused", "foreach"])
def test_an_optimizer_step_refolds(fused_step):
    """A fused optimizer writes the parameters without bumping their version counters; its step
    still forces a refold (the model stays in eval mode, as when fine-tuning with frozen BN).
    A model whose parameters the step did not hold (a frozen teacher) keeps its fold."""
    model, teacher = build(num_classes=10, size=17), build(num_classes=10, seed=1, size=17)
    x = torch.randn(1, 3, 17, 17, device=DEVICE)
    with torch.inference_mode(), fm.use_backend("fused"):
        before = model(x)
    first, teachers = fused.folded(model), fused.folded(teacher)
    step = torch.optim.SGD(model.parameters(), lr=0.5, **({"fused": True} if fused_step else {"foreach": True}))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    step.step()
    assert fused.folded(teacher) is teachers
    out, ref, _ = run_both(model, x)
    assert fused.folded(model) is not first
    assert (out - before).abs().max() > 1e-3
    assert_close_to_ref(out, ref, what="logits after an optimizer step")


def test_a_deleted_model_is_freed_without_the_cycle_collector():
    """The cache lives on the model and holds it weakly: deleting a folded model frees it (and
    its GPU memory) at once."""
    model = build(num_classes=10)
    with torch.inference_mode(), fm.use_backend("fused"):
        model(torch.randn(1, 3, 17, 17, device=DEVICE))
    assert fused.folded(model) is fused.folded(model)
    gone = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert gone() is None
    finally:
        gc.enable()
