"""affine_act_pool (BN + activation + SE pool sums in place) against its pure-torch twin, and the
cuDNN depthwise route it serves (``dwconv_bn_act(..., impl="torch")``) against the depthwise
reference: odd sizes, several tiles and channel blocks, dtypes, layouts, both paddings, launches
counted, bad input."""
import pytest
import torch

from fastmbconv.geometry import conv_padding
from fastmbconv.kernels import affine_act_pool as module
from fastmbconv.kernels._launch import count_launches
from fastmbconv.kernels.affine_act_pool import affine_act_pool, affine_act_pool_ref
from fastmbconv.kernels.dwconv_bn_act import choose_depthwise_impl, dwconv_bn_act, dwconv_bn_act_ref, taps_diag
from fastmbconv.kernels.testing import assert_close_to_ref, nan_fenced_dense

from ..helpers import DEVICE, interpreter_memcheck

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(N, C, H, W, dtype, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(N, C, H, W, generator=g).to(DEVICE, dtype)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    scale = (torch.rand(C, generator=g) + 0.5).to(DEVICE)
    shift = (torch.randn(C, generator=g) * 0.1).to(DEVICE)
    return y, scale, shift


@pytest.fixture
def small_tiles(monkeypatch):
    """16-pixel tiles of 16 channels: several tiles per image and channel blocks, as on a GPU."""
    monkeypatch.setattr(module, "blocks_for", lambda hw, c: (16, 16))


def check(y, scale, shift, act, with_pool):
    """One in-place call against the float64 twin (and the low-precision twin for fp16/bf16): one
    launch, y itself returned, and the pool sums' shape and values (fp32 sums before the cast)."""
    N, C, H, W = y.shape
    ref, ref_sums = affine_act_pool_ref(y, scale, shift, act, with_pool=True, compute_dtype=torch.float64)
    lowp = None if y.dtype == torch.float32 else affine_act_pool_ref(y, scale, shift, act, compute_dtype=y.dtype)
    with count_launches() as launches:
        got = affine_act_pool(y, scale, shift, act, with_pool=with_pool)
    assert launches["affine_act_pool"] == 1, launches
    out, partials = got if with_pool else (got, None)
    assert out.data_ptr() == y.data_ptr()  # in place
    assert_close_to_ref(out, ref, lowp, what=f"{act} {y.dtype}")
    if with_pool:
        assert partials.shape == (N, -(-H * W // module.blocks_for(H * W, C)[0]), C)
        torch.testing.assert_close(partials.sum(1).double().cpu(), ref_sums.cpu(), atol=1e-3 * H * W, rtol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channels_last", [((2, 40, 7, 5), True), ((3, 24, 9, 11), False), ((1, 17, 1, 1), True)])
@pytest.mark.parametrize("act", ["silu", "relu6", "identity"])
def test_matches_reference_with_pool_sums(small_tiles, dtype, shape, channels_last, act):
    check(*make(*shape, dtype, channels_last), act, with_pool=True)


def test_bad_input_is_named():
    y, scale, shift = make(2, 8, 3, 3, torch.float32)
    with pytest.raises(ValueError, match="scale must have 8 entries"):
        affine_act_pool(y, scale[:4], shift)
    with pytest.raises(TypeError, match="shift must have dtype"):
        affine_act_pool(y, scale, shift.half())
    with pytest.raises(ValueError, match="unknown act"):
        affine_act_pool(y, scale, shift, "gelu")
    with pytest.raises(ValueError, match="y must be 4-D"):
        affine_act_pool(y[0], scale, shift)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k,stride,pad_mode", [(3, 1, "symmetric"), (5, 2, "symmetric"), (3, 2, "same"), (5, 1, "same")])
def test_cudnn_route_matches_the_depthwise_reference(small_tiles, dtype, k, stride, pad_mode):
    g = torch.Generator().manual_seed(k * 10 + stride)
    N, C, H, W = 2, 40, 11, 9
    x = torch.randn(N, C, H, W, generator=g).to(DEVICE, dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, k, k, generator=g) * 0.3).to(DEVICE)
    scale, shift = (torch.rand(C, generator=g) + 0.5).to(DEVICE), (torch.randn(C, generator=g) * 0.1).to(DEVICE)
    padding = conv_padding(H, W, k, stride, pad_mode)
    weights = [w] + ([taps_diag(w, dtype)] if dtype != torch.float32 else [])  # every layout the fused path folds
    for weight in weights:
        with count_launches() as launches:
            out, partials = dwconv_bn_act(x, weight, scale, shift, padding, stride, with_pool=True, impl="torch")
        assert launches == {"dwconv_bn_act[torch]": 1, "affine_act_pool": 1}, launches
        assert out.is_contiguous(memory_format=torch.channels_last)
        ref, ref_sums = dwconv_bn_act_ref(x, w, scale, shift, padding, stride, with_pool=True,
                                          compute_dtype=torch.float64)
        lowp = None if dtype == torch.float32 else dwconv_bn_act_ref(x, w, scale, shift, padding, stride,
                                                                     compute_dtype=dtype)
        assert_close_to_ref(out, ref, lowp, what=f"cuDNN route k{k} s{stride} {pad_mode} {dtype}")
        if dtype == torch.float32:
            assert_close_to_ref(partials.sum(1), ref_sums, what=f"cuDNN route's pool sums k{k} s{stride} {pad_mode}")
        else:  # the low-precision twin returns no sums to scale a bound by: a bound per pixel summed
            torch.testing.assert_close(partials.sum(1).double().cpu(), ref_sums.cpu(), atol=0.05 * out[0, 0].numel(),
                                       rtol=2e-2)


def test_depthwise_choice(monkeypatch):
    monkeypatch.delenv("FASTMBCONV_DEPTHWISE_IMPL", raising=False)
    assert choose_depthwise_impl() == "triton"
    monkeypatch.setenv("FASTMBCONV_DEPTHWISE_IMPL", "torch")
    assert choose_depthwise_impl() == "torch"
    assert choose_depthwise_impl(ragged=True) == "triton"  # the conv has no per-image padding
    x, scale, shift = make(1, 16, 5, 5, torch.float32)
    w = torch.randn(16, 1, 3, 3, device=DEVICE)
    with count_launches() as launches:
        dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1))
    assert launches == {"dwconv_bn_act[torch]": 1, "affine_act_pool": 1}
    with pytest.raises(ValueError, match="dense batches only"):
        dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), impl="torch",
                      valid_hw=torch.tensor([[5, 5]], dtype=torch.int32, device=DEVICE),
                      pad_tl=torch.tensor([[1, 1]], dtype=torch.int32, device=DEVICE))
    monkeypatch.setenv("FASTMBCONV_DEPTHWISE_IMPL", "cudnn")
    with pytest.raises(ValueError, match="FASTMBCONV_DEPTHWISE_IMPL must be"):
        choose_depthwise_impl()


def test_cudnn_route_is_inference_only_and_ignores_autocast():
    """A gradient through it would skip BN and the activation: refused by name. Under autocast
    it computes in its inputs' dtype, as the Triton kernel does."""
    x, scale, shift = make(2, 16, 6, 5, torch.float32)
    w = torch.randn(16, 1, 3, 3, device=DEVICE) * 0.3
    with pytest.raises(RuntimeError, match="inference-only"):
        dwconv_bn_act(x.clone().requires_grad_(), w, scale, shift, (1, 1, 1, 1), impl="torch")
    with torch.no_grad():
        plain = dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), impl="torch")
        device_type = torch.device(DEVICE).type
        with torch.autocast(device_type, dtype=torch.float16 if device_type == "cuda" else torch.bfloat16):
            under = dwconv_bn_act(x, w, scale, shift, (1, 1, 1, 1), impl="torch")
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain)


def test_overlapping_y_is_refused():
    """y is written in place: where its elements share memory (an expanded batch), programs would
    apply the affine to what others already wrote, and on a GPU race each other. Refused by
    name, as torch's in-place ops refuse it; a strided view whose elements do not overlap still
    works."""
    y, scale, shift = make(1, 8, 3, 3, torch.float32, channels_last=False)
    with pytest.raises(ValueError, match="y is written in place, but more than one of its elements"):
        affine_act_pool(y.expand(3, 8, 3, 3), scale, shift, "identity")
    base = make(2, 8, 6, 5, torch.float32)[0]
    view = base[:, :, ::2]  # torch cannot tell that it does not overlap ("too hard"): not refused
    ref = affine_act_pool_ref(view, scale, shift, "silu", compute_dtype=torch.float64)
    assert_close_to_ref(affine_act_pool(view, scale, shift, "silu"), ref, what="strided view")


def test_gradients_are_refused():
    """The pass rewrites y in place with no gradient of its own, so a backward would pass the
    gradient through as if neither the affine nor the activation had run: refused by name while
    grad mode is on and y, scale or shift requires grad."""
    y, scale, shift = make(1, 16, 4, 4, torch.float32)
    grad = [t.clone().requires_grad_() for t in (y, scale, shift)]
    for args in ((grad[0] * 1, scale, shift), (y.clone(), grad[1], shift), (y.clone(), scale, grad[2])):
        with pytest.raises(RuntimeError, match="affine_act_pool: this in-place pass is inference-only"):
            affine_act_pool(*args, "identity", with_pool=True)
    with torch.no_grad():  # without grad mode the same call runs
        out = affine_act_pool(y.clone(), grad[1], shift, "identity")
    assert_close_to_ref(out, affine_act_pool_ref(y, scale, shift, "identity", compute_dtype=torch.float64))


@pytest.mark.parametrize("channels_last", [True, False])
def test_every_access_stays_inside_its_tensors(small_tiles, channels_last):
    """Every load and store checked under the interpreter's memcheck, the scale and shift in
    NaN-filled buffers: the last tile's pixels past the map and the last block's channels past
    C are masked (a write there would land past the last image; a sum past C past the last
    tile's row of the partial sums; a scale past C is never stored: only the memcheck sees it)."""
    y, scale, shift = make(2, 20, 5, 3, torch.float32, channels_last)
    ref, ref_sums = affine_act_pool_ref(y, scale, shift, "silu", with_pool=True, compute_dtype=torch.float64)
    with interpreter_memcheck():
        out, partials = affine_act_pool(y, nan_fenced_dense(scale), nan_fenced_dense(shift), "silu", with_pool=True)
    assert_close_to_ref(out, ref, what="out")
    assert_close_to_ref(partials.sum(1), ref_sums, what="sums")
