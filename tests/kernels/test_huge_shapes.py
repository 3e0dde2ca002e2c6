"""What the launchers decide for shapes too large to run here: recorded on ``meta`` tensors
(:func:`record_launches`), so nothing is allocated or launched.

- 64-bit offsets where the kernel's own indices pass 2^31 though no tensor's reach does (the
  pool-only 1x1 conv of a batch-broadcast input);
- 64-bit offsets in the depthwise and expand + depthwise kernels only for an image past 2^31
  (their CUDA tests' shapes: the kernels form each image's base offset in 64 bits anyway);
- launch grids past CUDA's per-axis limits (65535 programs on axes 1 and 2) refused by name,
  not left to the driver's bare "invalid argument".
"""
import pytest
import torch

from fastmbconv.kernels._launch import record_launches
from fastmbconv.kernels.affine_act_pool import affine_act_pool
from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act, dwconv_bn_act_ref
from fastmbconv.kernels.expand_dwconv import expand_dwconv, expand_dwconv_ref
from fastmbconv.kernels.pointwise_gated import pointwise_gated
from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act

from ..helpers import last_rows
from . import test_dwconv_bn_act as dw_tests
from . import test_expand_dwconv as expand_dw_tests


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def record(fn, *args, **kwargs) -> list:
    with record_launches() as launches, torch.no_grad():
        fn(*args, **kwargs)
    return launches


def pool_int64(N: int, K: int, HW: int, gate: bool = False) -> bool:
    x = meta(1, K, HW, 1, dtype=torch.float16).expand(N, K, HW, 1)  # one image, broadcast over the batch
    launches = record(pointwise_gated, x, meta(16, K, dtype=torch.float16), meta(16), act="silu", pool_only=True,
                      gate=meta(N, K) if gate else None, impl="triton")
    return launches[0].constexprs["INT64"]


def test_pool_row_numbers_and_gate_offsets_past_2_31_take_64_bits():
    """Rows are numbered over all images (image * H * W + pixel), the gate's entries image * K +
    channel; with pool_only the map is never written, and a batch-broadcast input spans one
    image, so only those counts show that the numbers pass 2^31 - 1 (32767 images of 256 x 256
    pixels still fit)."""
    assert not pool_int64(32767, 8, 256 * 256)
    assert pool_int64(32768, 8, 256 * 256)
    assert not pool_int64(2**21 - 1, 1024, 1, gate=True)
    assert pool_int64(2**21, 1024, 1, gate=True)


@pytest.fixture
def gpu_configs(monkeypatch):
    """The blocks a GPU would launch: the launchers' GPU heuristics, and the autotuner's configs
    (nothing is tuned while recording)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("FASTMBCONV_AUTOTUNE", "1")


def on_meta(*tensors):
    return [t.to("meta") for t in tensors]


@pytest.mark.parametrize("case", ["images", "one_image"])
@pytest.mark.parametrize("mma", [False, True], ids=["fma", "mma"])
def test_depthwise_offsets_take_64_bits_for_an_image_past_2_31(gpu_configs, case, mma):
    """The plans that the CUDA tests past 2^31 elements assert, at their shapes: INT64 only where
    one image passes 2^31 (many smaller images take a 64-bit image base with 32-bit offsets)."""
    (N, C, H, W), int64 = dw_tests.PAST_2_31[case]
    x = meta(N, C, H, W, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    _, w, scale, shift = dw_tests.make(1, C, 1, 1, 3, torch.float16, layout="mma" if mma else "conv")
    launches = record(dwconv_bn_act, x, *on_meta(w, scale, shift), (1, 1, 1, 1), 1, with_pool=True)
    assert [(r.constexprs["MMA"], r.constexprs["INT64"]) for r in launches] == [(mma, int64)]
    (N, C_in, H, W), int64 = expand_dw_tests.PAST_2_31[case]
    x = meta(N, C_in, H, W, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    _, params = expand_dw_tests.make(1, C_in, 32, 1, 1, 3, torch.float16, taps="auto" if mma else "major")
    launches = record(expand_dwconv, x, *on_meta(*params), (1, 1, 1, 1), 2)
    assert [(r.constexprs["MMA"], r.constexprs["INT64"]) for r in launches] == [(mma, int64)]


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
@pytest.mark.parametrize("padding", [(1, 1, 1, 1), (2, 2, 2, 2), (0, 1, 0, 1), (1, 2, 1, 2)], ids=str)
@pytest.mark.parametrize("H", [13, 14])
def test_last_rows_are_what_a_conv_reads_for_its_last_output_rows(k, stride, padding, H):
    """The input rows that those CUDA tests compare against the reference for one image past 2^31."""
    g = torch.Generator().manual_seed(H + k)
    x = torch.randn(1, 16, H, 9, generator=g)
    w, scale, shift = torch.randn(16, 1, k, k, generator=g), torch.rand(16, generator=g), torch.randn(16, generator=g)
    w_expand, b_expand = torch.randn(16, 16, generator=g), torch.randn(16, generator=g)
    whole = dwconv_bn_act_ref(x, w, scale, shift, padding, stride)
    expanded, _ = expand_dwconv_ref(x, w_expand, b_expand, w.reshape(16, k * k).t(), scale, shift, padding, stride)
    for rows in range(1, 4):
        part, part_padding = last_rows(x, padding, k, stride, rows)
        torch.testing.assert_close(dwconv_bn_act_ref(part, w, scale, shift, part_padding, stride), whole[..., -rows:, :])
        got, _ = expand_dwconv_ref(part, w_expand, b_expand, w.reshape(16, k * k).t(), scale, shift, part_padding,
                                   stride)
        torch.testing.assert_close(got, expanded[..., -rows:, :])
    with pytest.raises(ValueError, match="reach the top padding"):
        last_rows(x, padding, k, stride, whole.shape[-2] if padding[0] else whole.shape[-2] + 1)


def dwconv(C, dtype=torch.float32):
    x = meta(1, C, 4, 4, dtype=dtype)
    weight = meta(9, C, 16, dtype=dtype) if dtype != torch.float32 else meta(C, 1, 3, 3)
    return record(dwconv_bn_act, x, weight, meta(C), meta(C), (1, 1, 1, 1), 1, with_pool=True, impl="triton")


def pointwise(O, pool_only=False, N=1):
    x = meta(1, 8, 2, 2, dtype=torch.float16).expand(N, 8, 2, 2)
    return record(pointwise_gated, x, meta(O, 8, dtype=torch.float16), meta(O), pool_only=pool_only, impl="triton")


def test_grids_past_cuda_limits_are_refused_by_name(gpu_configs, monkeypatch):
    """Channel blocks run along grid axis 1. An autotuned launch is checked at its smallest
    block (16 channels for the depthwise and 1x1 map kernels, 32 for the 1x1 pool variant),
    since any config may win; a launch with one config at that config."""
    limit = 65535
    cases = [  # (the launch, the most channels it takes: blocks of 16, 32, 64)
        (dwconv, 16 * limit),  # autotuned FMA taps
        (lambda C: dwconv(C, torch.float16), 16 * limit),  # tensor-core taps: 16-channel blocks
        (pointwise, 16 * limit),  # autotuned map
        (lambda O: pointwise(O, pool_only=True), 32 * limit),  # autotuned pool variant
        (lambda C: record(affine_act_pool, meta(1, C, 2, 2), meta(C), meta(C)), 64 * limit),
        (lambda C: record(stem_conv_bn_act, meta(1, 3, 4, 4), meta(C, 3, 3, 3), meta(C), (1, 1, 1, 1)),
         64 * limit),  # blocks of MAX_BLOCK_CO
    ]
    for launch, most in cases:
        assert len(launch(most)) >= 1
        with pytest.raises(ValueError, match=f"{most + 1} (output )?channels would take {limit + 1} programs along "
                                             f"launch-grid axis 1, past CUDA's limit of {limit}"):
            launch(most + 1)
    with pytest.raises(ValueError, match=f"{2**31} images of 1 tiles would take {2**31} programs along "
                                         f"launch-grid axis 0"):
        pointwise(16, pool_only=True, N=2**31)
    monkeypatch.setenv("FASTMBCONV_AUTOTUNE", "0")  # one heuristic config of 32 channels a block
    assert len(dwconv(16 * limit + 1)) == 1
    with pytest.raises(ValueError, match=f"{32 * limit + 1} channels"):
        dwconv(32 * limit + 1)
