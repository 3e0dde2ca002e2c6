"""Every entry of every GPU autotune config list, launched explicitly (``forced_config``) and
compared with the kernel's ``*_ref``: the autotuner picks by speed alone, so a config that
computes wrong at some shape would otherwise surface only where it happens to win.

Each case is launched with each config the autotuner's own pruning keeps for it, at shapes with
several output tiles and several channel blocks, odd sizes and channel counts that are not
multiples of the blocks. On a GPU these are the real tiles; under the interpreter the same
configs run (the depthwise tiles as on a GPU), where fp32's and bf16's products both take the
FMA configs. ``test_the_cases_cover_every_config`` proves the cases reach every entry of each
list on a GPU."""
import pytest
import torch

from fastmbconv.geometry import conv_padding
from fastmbconv.kernels import dwconv_bn_act as dw
from fastmbconv.kernels import pointwise_gated as pw
from fastmbconv.kernels._launch import forced_config, record_launches
from fastmbconv.kernels._utils import dot_fp32

from ..helpers import interpreter_memcheck
from . import test_dwconv_bn_act as dw_tests
from . import test_pointwise_gated as pw_tests

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (N, K, O, H, W, gate, residual): expand (wide tiles), a gated projection with a partial last
# step of every BLOCK_K, one of few input channels (the depthwise-separable blocks' tile limit),
# 16-output projections with K a multiple of 16 and not (the narrow tiles, 512 rows over 3
# images of 15x13)
POINTWISE = {
    "expand": (2, 24, 144, 11, 9, False, False),
    "project": (2, 144, 40, 11, 9, True, True),
    "gated_few_inputs": (2, 40, 72, 9, 7, True, True),
    "narrow": (3, 32, 16, 15, 13, True, False),
    "narrow_k24": (2, 24, 16, 11, 13, True, True),
}
POOL = (2, 48, 80, 9, 11)  # the head's 1x1 + pool: (N, K, O, H, W)
# (N, C, H, W, k, stride): output maps of 32-pixel tiles with a partial last channel block (every
# config kept) and of 64-pixel tiles over several tiles per image; 96 channels, a whole number
# of the heuristic's 32-channel blocks but not of the configs' 64 (a channel mask dropped on the
# strength of the heuristic's block would read past the input: launched under the memcheck)
DEPTHWISE = {
    "tile32": (2, 72, 4, 8, 3, 1),
    "tile64": (2, 40, 17, 15, 5, 2),
    "even96": (1, 96, 4, 8, 3, 1),
}


def kept(autotuner, named_args: dict) -> list:
    """The configs the autotuner would benchmark for these arguments (its early prune)."""
    prune = autotuner.early_config_prune
    return list(prune(autotuner.configs, named_args)) if prune else list(autotuner.configs)


def pointwise_kept(case: str, dtype: torch.dtype, on_gpu: bool) -> list:
    _, K, O, *_, gate, _ = POINTWISE[case]
    fp32 = dtype == torch.float32 if on_gpu else dot_fp32(dtype)
    return kept(pw._pointwise_gated_autotuned, {"K": K, "O": O, "HAS_GATE": gate, "DOT_FP32": fp32})


def depthwise_tile(case: str) -> tuple[int, int]:
    N, C, H, W, k, stride = DEPTHWISE[case]
    h_out, w_out = -(-H // stride), -(-W // stride)
    return dw.spatial_tile(h_out, w_out)


def depthwise_configs(C: int, h_out: int, w_out: int) -> list:
    """The FMA variant's configs its pruning keeps for C channels on an (h_out, w_out) map."""
    th, tw = dw.spatial_tile(h_out, w_out)
    unit = dw._unit(C)
    return kept(dw._dwconv_bn_act_autotuned, {"c_units": C // unit, "C_UNIT": unit, "TILE_H": th, "TILE_W": tw})


def depthwise_kept(case: str) -> list:
    N, C, H, W, k, stride = DEPTHWISE[case]
    return depthwise_configs(C, -(-H // stride), -(-W // stride))


def name(config) -> str:
    return "-".join(f"{k}{v}" for k, v in config.kwargs.items()) + f"-w{config.num_warps}-s{config.num_stages}"


def launched_config(launch_call) -> dict:
    with record_launches() as planned:
        launch_call()
    return planned[0].constexprs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(POINTWISE))
def test_every_pointwise_config(case, dtype):
    N, K, O, H, W, gate, residual = POINTWISE[case]
    x, w, bias, g, res = pw_tests.make(N, K, O, H, W, dtype, seed=3)
    kw = dict(gate=g if gate else None, residual=res if residual else None, act="silu" if not residual else "identity")
    configs = pointwise_kept(case, dtype, on_gpu=x.is_cuda)
    assert configs
    for config in configs:
        with forced_config(pw._pointwise_gated_autotuned, config):
            seen = launched_config(lambda: pw.pointwise_gated(x, w, bias, impl="triton", **kw))
            assert {k: seen[k] for k in config.kwargs} == config.kwargs and seen["num_warps"] == config.num_warps
            assert N * H * W > config.kwargs["BLOCK_M"], "a single row tile"
            pw_tests.check(x, w, bias, **kw)


@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "ragged"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_pool_config(dtype, ragged):
    N, K, O, H, W = POOL
    x, w, bias, _, _ = pw_tests.make(N, K, O, H, W, dtype, seed=4)
    valid = torch.tensor([[H, W], [H - 2, W - 3]], dtype=torch.int32, device=x.device) if ragged else None
    for config in pw._pointwise_pool_autotuned.configs:
        with forced_config(pw._pointwise_pool_autotuned, config):
            seen = launched_config(lambda: pw.pointwise_gated(x, w, bias, act="silu", pool_only=True, valid_hw=valid,
                                                              impl="triton"))
            assert {k: seen[k] for k in config.kwargs} == config.kwargs
            pw_tests.check(x, w, bias, act="silu", pool_only=True, valid_hw=valid)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(DEPTHWISE))
def test_every_depthwise_config(case, dtype, monkeypatch):
    """The FMA variant (taps-major fp32 weights, any activation dtype); the tensor-core variant
    has one fixed config."""
    monkeypatch.setattr(dw, "interpreting", lambda: False)  # the GPU's tiles, which the pruning reads
    N, C, H, W, k, stride = DEPTHWISE[case]
    x, w, scale, shift = dw_tests.make(N, C, H, W, k, dtype, seed=5)
    padding = conv_padding(H, W, k, stride, "same")
    th, tw = depthwise_tile(case)
    h_out, w_out = -(-H // stride), -(-W // stride)
    assert dw.blocks_for(h_out, w_out, C)[:2] == (th, tw)
    configs = depthwise_kept(case)
    assert configs
    for config in configs:
        with forced_config(dw._dwconv_bn_act_autotuned, config):
            seen = launched_config(lambda: dw.dwconv_bn_act(x, w, scale, shift, padding, stride, with_pool=True))
            assert seen["BLOCK_C"] == config.kwargs["BLOCK_C"] and seen["num_warps"] == config.num_warps
            with interpreter_memcheck():
                dw_tests.check(x, w, scale, shift, padding, stride, with_pool=True)


def test_the_cases_cover_every_config():
    """On a GPU (fp32 alone on the FMA configs), the cases above launch every config of the
    three lists; a forced config is what the launch takes, and nothing else is forced."""
    for autotuner, configs in [
        (pw._pointwise_gated_autotuned, [c for case in POINTWISE for d in DTYPES for c in pointwise_kept(case, d, True)]),
        (dw._dwconv_bn_act_autotuned, [c for case in DEPTHWISE for c in depthwise_kept(case)]),
    ]:
        missing = [name(c) for c in autotuner.configs if not any(c is seen for seen in configs)]
        assert not missing, f"no case launches {missing}"
    for case in DEPTHWISE:
        assert len({c.kwargs["BLOCK_C"] for c in depthwise_kept(case)}) > 1
    config, CPU = pw._pointwise_gated_autotuned.configs[0], torch.zeros(1)
    with forced_config(pw._pointwise_gated_autotuned, config):
        assert pw.select_kernel(pw._pointwise_gated_autotuned, "plain", ("k",), {}, on=CPU)[1]["BLOCK_M"] == config.kwargs["BLOCK_M"]
        assert "BLOCK_M" not in pw.select_kernel(object(), "plain", ("k",), {"BLOCK_N": 16}, on=CPU)[1]


def test_depthwise_autotune_keeps_8_to_32_outputs_per_thread():
    """The FMA variant's configs each map and width may try: 8 to 32 outputs per thread (none
    spills on any B0-B7 layer, python -m fastmbconv.kernel_report) and channel blocks no wider
    than the layer (at least 16), on B0's 56x56 (8x8 tiles), 28x28 (2x32) and 14x14 (2x16) maps."""
    def blocks(C, H, W):
        return {(c.kwargs["BLOCK_C"], c.num_warps) for c in depthwise_configs(C, H, W)}

    assert blocks(96, 56, 56) == blocks(144, 28, 28) == {(16, 1), (32, 2), (64, 4), (128, 8)}
    assert blocks(40, 7, 7) == {(16, 1), (32, 2), (64, 4)}
    assert blocks(24, 14, 14) == {(16, 1), (32, 1), (32, 2)}
