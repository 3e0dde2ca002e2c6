"""Helpers the tests share (functions, not fixtures: see conftest.py for those)."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"  # where kernels run (the CPU through Triton's interpreter)

#: Parameter counts of timm's and torchvision's EfficientNet B0-B7 (equal in both).
EXPECTED_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
    "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960,
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics so BN bugs (eps, folding) cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def import_or_skip(name: str):
    """Import an optional peer library, or skip with the real import error as the reason."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # torchvision's compiled ops fail to load on CPU-only machines
        pytest.skip(f"{name} does not import here: {type(exc).__name__}: {exc}"[:300])


def torchvision_style_state_dict(model) -> dict:
    """Write a fastmbconv model's weights under torchvision's key names, by hand, following
    torchvision's module layout (features.0 stem, features.1-7 stages, features.8 head,
    classifier.1), so the conversion is tested without torchvision installed."""
    sd, src = {}, model.state_dict()

    def put(tv_prefix, timm_prefix):
        for k, v in src.items():
            if k.startswith(timm_prefix + "."):
                sd[tv_prefix + k[len(timm_prefix):]] = v

    put("features.0.0", "conv_stem")
    put("features.0.1", "bn1")
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            tv, tm = f"features.{i + 1}.{j}.block", f"blocks.{i}.{j}"
            if hasattr(block, "conv_pwl"):
                names = [("0.0", "conv_pw"), ("0.1", "bn1"), ("1.0", "conv_dw"), ("1.1", "bn2"),
                         ("2.fc1", "se.conv_reduce"), ("2.fc2", "se.conv_expand"), ("3.0", "conv_pwl"), ("3.1", "bn3")]
            else:
                names = [("0.0", "conv_dw"), ("0.1", "bn1"), ("1.fc1", "se.conv_reduce"),
                         ("1.fc2", "se.conv_expand"), ("2.0", "conv_pw"), ("2.1", "bn2")]
            for tv_sub, tm_sub in names:
                put(f"{tv}.{tv_sub}", f"{tm}.{tm_sub}")
    put("features.8.0", "conv_head")
    put("features.8.1", "bn2")
    put("classifier.1", "classifier")
    return sd


def reference_forward(fn, *args):
    """``fn(*args)`` on the reference backend, checked to have launched no kernel: the side a
    fused output is compared with. Never leave it to ``auto``: on a GPU, ``auto`` runs an eval
    model under ``no_grad`` on the fused path, and the comparison would be fused against fused."""
    import fastmbconv as fm
    from fastmbconv.kernels._launch import count_launches

    with fm.use_backend("reference"), count_launches() as launches:
        out = fn(*args)
    assert not launches, f"the reference forward launched kernels: {dict(launches)}"
    return out


def build(name="efficientnet_b0", seed=0, **kw):
    """An eval-mode model of MODEL_BUILDERS[name] with non-trivial BN statistics, on DEVICE."""
    import fastmbconv as fm

    torch.manual_seed(seed)
    return randomize_bn(fm.MODEL_BUILDERS[name](**kw), seed).eval().to(DEVICE)


def blocks_with_expand(model) -> int:
    """How many of the model's blocks have an expand 1x1 conv (all but the depthwise-separable)."""
    return sum(1 for stage in model.blocks for b in stage if b.parts().expand is not None)


def expected_launches(model, output="logits", fused_blocks: int = 0):
    """Per forward: the stem, four launches per MBConv block (three without expansion), and for
    logits the head's GEMM and its pool-finishing launch (feature maps: the head GEMM alone).
    ``fused_blocks`` of the blocks run expand_dwconv, one launch in place of their expand 1x1
    and depthwise launches."""
    n_blocks = sum(len(stage) for stage in model.blocks)
    n_ds = n_blocks - blocks_with_expand(model)
    launches = {
        "stem_conv_bn_act": 1,
        "dwconv_bn_act": n_blocks - fused_blocks,
        "squeeze_excite_gate": n_blocks,
        "pointwise_gated": 2 * n_blocks - n_ds + (output != "stage_maps") - fused_blocks,
    }
    if fused_blocks:
        launches["expand_dwconv"] = fused_blocks
    if output == "logits":
        launches["pointwise_gated[pool]"] = 1
    return launches


def run_both(fn, *args):
    """(fused output, reference output, the fused call's launches) of ``fn(*args)``."""
    import fastmbconv as fm
    from fastmbconv.kernels._launch import count_launches

    with torch.inference_mode():
        ref = reference_forward(fn, *args)
        with fm.use_backend("fused"), count_launches() as launches:
            out = fn(*args)
    return out, ref, launches


def compile_fullgraph(model: nn.Module, x: torch.Tensor):
    """On the fused backend: the eager output, then ``torch.compile(model, fullgraph=True)``
    (aot_eager: no graph break allowed, no inductor codegen) called once with its launches
    counted. Returns (eager, compiled, out, launches); dynamo's caches are reset first."""
    import fastmbconv as fm
    from fastmbconv.kernels._launch import count_launches

    torch._dynamo.reset()
    with torch.no_grad(), fm.use_backend("fused"):
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        with count_launches() as launches:
            out = compiled(x)
    return eager, compiled, out, launches


def data_parallel_replica(model: nn.Module, device: str = "meta") -> nn.Module:
    """A replica as ``torch.nn.parallel.replicate`` builds one for ``DataParallel``, without
    CUDA: each module copied with ``_replicate_for_data_parallel`` (a shallow copy of its
    ``__dict__``), its parameters set as plain, non-leaf tensor attributes and its buffers
    replaced, all on ``device`` (default ``meta``: "another GPU" that any leftover tensor of the
    original, on the CPU, cannot be mistaken for)."""
    copies = {m: m._replicate_for_data_parallel() for m in model.modules()}
    for module, replica in copies.items():
        for name, child in module._modules.items():
            replica._modules[name] = None if child is None else copies[child]
        for name, param in module._parameters.items():
            if param is None:
                replica._parameters[name] = None
            else:
                copy = param.detach().to(device).requires_grad_(param.requires_grad)
                setattr(replica, name, copy * 1 if param.requires_grad else copy)  # not a leaf
        for name, buf in module._buffers.items():
            if buf is not None:
                replica._buffers[name] = buf.to(device)
    return copies[model]
