"""Helpers the tests share (functions, not fixtures: see conftest.py for those)."""
from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
from torch import nn

from fastmbconv.kernels._utils import output_size

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"  # where kernels run (the CPU through Triton's interpreter)

#: Parameter counts of timm's and torchvision's EfficientNet B0-B7 (equal in both).
EXPECTED_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
    "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960,
}


def randomize_bn(model: nn.Module, seed: int = 0, size=64) -> nn.Module:
    """Give every BatchNorm a random affine and running statistics measured on random input.

    The affine (scale 0.5-1.5, shift ~0.1), a random mean and a per-channel factor of 0.5-1.5 on
    each variance keep BN bugs (eps, folding) from hiding. The scale of each BN's statistics is
    measured: one eval forward of random ``size`` images (an int or (H, W)) sets each BN's
    variance from its own input's mean power just before it runs. Made-up statistics shrank the
    input's share of the signal about 3x a stage, so B0's logits were mostly BN shifts and a 10%
    error in an early block moved them less than the fp32 tolerance. The variance is 16x that
    power (each BN's output at about a quarter of its input's scale): at 1x, random residual
    streams amplify a perturbation about 1.2x a block; at 16x, a 5-10% change in the stem or an
    early block moves the logits by 1-10% of their spread. One power per layer, not per channel:
    a near-constant channel would be amplified ~30x.

    Give ``size`` as the test's input size. The deep maps of a small image are mostly padding,
    so their power depends on the size, and a mismatch compounds layer by layer: B0 measured at
    64 px and run at 17 px hardly sees its input (a 5% stem error moved the logits 2e-4); at
    224 px its logits reach ~40, and B7 measured at 32 px gave 1e8 at 33x47. The input's
    channels come from the first conv, so blocks as well as whole models (ours, timm's,
    torchvision's) can be given."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def calibrate(bn, inputs):
        # a float, so the CPU generator's draws mix with it whatever the model's device
        power = inputs[0].detach().float().pow(2).mean().clamp_min(1e-4).item()
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1 * power ** 0.5)
        bn.running_var.copy_(power * 16 * (torch.rand(n, generator=g) + 0.5))

    with torch.no_grad():
        for m in bns:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if not bns or first_conv is None:
        return model
    param = next(model.parameters())
    height, width = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, first_conv.in_channels, height, width, generator=g).to(param.device, param.dtype)
    modes = {m: m.training for m in model.modules()}
    hooks = [m.register_forward_pre_hook(calibrate) for m in bns]
    import fastmbconv as fm

    try:
        with torch.no_grad(), fm.use_backend("reference"):
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in modes.items():
            m.training = training
    return model


def import_or_skip(name: str):
    """Import an optional peer library, or skip with the real import error as the reason."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # torchvision's compiled ops fail to load on CPU-only machines
        pytest.skip(f"{name} does not import here: {type(exc).__name__}: {exc}"[:300])


def timm_model(name: str, size) -> nn.Module:
    """timm's ``name`` in eval mode with BN statistics measured at ``size`` (seed 0), or a skip
    where timm does not import."""
    timm = import_or_skip("timm")
    torch.manual_seed(0)
    return randomize_bn(timm.create_model(name), size=size).eval()


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


def build(name="efficientnet_b0", seed=0, size=64, **kw):
    """An eval-mode model of MODEL_BUILDERS[name] with BN statistics measured at ``size`` (see
    :func:`randomize_bn`), on DEVICE."""
    import fastmbconv as fm

    torch.manual_seed(seed)
    return randomize_bn(fm.MODEL_BUILDERS[name](**kw).to(DEVICE), seed, size).eval()  # calibrated where it runs


def assert_fold_is_fresh(fold, model, dtype) -> None:
    """Every tensor of ``fold`` equals, bit for bit, a fold of ``model``'s weights made now: an
    edit the cache missed shows here whatever its effect on the logits."""
    from fastmbconv import fused
    from fastmbconv.fused.fold import fold_tensors

    have, fresh = fold_tensors(fold), fold_tensors(fused.fold_model(model, dtype))
    assert len(have) == len(fresh)
    for a, b in zip(have, fresh):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=0, rtol=0)


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


@contextlib.contextmanager
def bf16_casts_round_to_nearest():
    """Inside the block, under Triton's interpreter, fp32 -> bf16 casts round to nearest even, as
    a GPU's and torch's do. The interpreter truncates (3.6 and 3.9: every magnitude rounds down):
    each bf16 store of a kernel then carried twice a GPU's error, with a bias, and through B0 the
    fused bf16 logits drifted to 4x torch's bf16 error (a GPU's is below torch's).
    ``kernels._math.round_to_bf16``, which rounds dot operands the way tensor cores take them, is
    needed either way. A no-op on a GPU."""
    from fastmbconv.kernels._utils import interpreting

    if not interpreting():
        yield
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    truncating = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.array(src.data, dtype=np.float32)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), dst_type.scalar)
        return truncating(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl
    try:
        yield
    finally:
        interpreter.InterpreterBuilder.cast_impl = truncating


@contextlib.contextmanager
def interpreter_memcheck():
    """Inside the block, under Triton's CPU interpreter, every element a kernel loads or stores
    (its unmasked lanes) must lie inside one of the tensors of that launch, counted from the
    tensor's first element to its last, not its whole storage: compute-sanitizer's memcheck for
    the interpreter. The NaN fences (``kernels.testing``) see a stray read only where its value
    reaches a stored output; a read whose lanes are never stored (channels past C, slots past a
    tile) is caught here, where on a GPU it may fault past the end of an allocation. A no-op on
    a GPU, where the kernels do not run through the interpreter."""
    from fastmbconv.kernels._utils import interpreting, reach

    if not interpreting():
        yield
        return
    import numpy as np
    from triton.runtime import interpreter as interp

    builder, executor = interp.InterpreterBuilder, interp.GridExecutor
    hooks = [(executor, "_init_args_hst"), (builder, "create_masked_load"), (builder, "create_masked_store"),
             (interp, "_get_np_dtype")]
    missing = [name for owner, name in hooks if not hasattr(owner, name)]
    if missing:  # private interpreter internals (checked with Triton 3.6 and 3.9): fail, never check nothing
        pytest.fail(f"interpreter_memcheck: this Triton's interpreter has no {missing}; update the helper")
    real = executor._init_args_hst, builder.create_masked_load, builder.create_masked_store
    extents = []  # (first byte, past the last byte, argument name) of the running launch's tensors

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = real[0](self, args_dev, kwargs)
        extents[:] = [(t.data_ptr(), t.data_ptr() + (1 + reach(t)) * t.element_size(), name)
                      for name, t in [*zip(self.arg_names, args_hst), *kwargs_hst.items()]
                      if isinstance(t, torch.Tensor) and t.numel()]
        return args_hst, kwargs_hst

    def check(what, ptrs, mask):
        size = np.dtype(interp._get_np_dtype(ptrs.get_element_ty())).itemsize
        addr = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)].astype(np.uint64)
        inside = np.zeros(addr.shape, dtype=bool)
        for lo, hi, _ in extents:
            inside |= (addr >= lo) & (addr + size <= hi)
        if not inside.all():
            first = int(addr[~inside][0])
            lo, hi, name = min(extents, key=lambda e: min(abs(first - e[0]), abs(first - e[1])),
                               default=(first, first, "no tensor"))
            raise AssertionError(f"{what} of {int((~inside).sum())} elements outside every tensor of the launch; "
                                 f"the first at byte {first - lo} of {name} ({hi - lo} bytes long)")

    def load(self, ptrs, mask, other, *args):
        check("a load", ptrs, mask)
        return real[1](self, ptrs, mask, other, *args)

    def store(self, ptrs, value, mask, *args):
        check("a store", ptrs, mask)  # before it: a stray store would corrupt the process's memory
        return real[2](self, ptrs, value, mask, *args)

    executor._init_args_hst, builder.create_masked_load, builder.create_masked_store = init_args, load, store
    try:
        yield
    finally:
        executor._init_args_hst, builder.create_masked_load, builder.create_masked_store = real


def assert_unchecked_sizes_clamped(run, h: int, w: int) -> None:
    """What a kernel does with valid sizes that no host check saw (as for CUDA tensors): it clamps
    them into [0, h] x [0, w], so sizes past the map compute as the whole map and negative ones
    as an empty image, every output 0. ``run(sizes)`` launches the kernel on an (h, w) map, inside
    :func:`interpreter_memcheck` and on a NaN-fenced input so that no read outside it passes,
    and returns its output or a tuple of outputs."""
    torch.testing.assert_close(run([[99, w], [h, 99]]), run([[h, w], [h, w]]))
    # each negative size on the last image too: an unclamped one reads past its map, which for
    # the first image is still inside the batch (and masked), for the last one past the input
    for sizes in ([[-5, w], [h, -1]], [[h, -1], [-5, w]]):
        empty = run(sizes)
        for out in empty if isinstance(empty, tuple) else (empty,):
            assert (out == 0).all(), sizes


def last_rows(x: torch.Tensor, padding, k: int, stride: int, rows: int):
    """(input rows, padding) that a k x k conv maps to its last ``rows`` output rows: what the
    CUDA tests past 2^31 elements compare, where the input's last rows are the ones whose
    offsets pass 2^31 and a reference over the whole map would need tens of GiB more."""
    top, bottom, left, right = padding
    h_out, _ = output_size(x.shape[-2], x.shape[-1], k, stride, padding)
    first = (h_out - rows) * stride - top  # the first input row the first kept output row reads
    if rows > h_out or first < 0:
        raise ValueError(f"{rows} output rows of {h_out} reach the top padding")
    return x[..., first:, :], (0, bottom, left, right)
