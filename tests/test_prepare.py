"""fastmbconv.prepare, F.interpolate bilinear path: the compiled op against the pure-torch
reference, over modes x dtypes x odd sizes, list and batch input, bad input, one op call per
batch, and the fake (meta) implementation of the first op version. The antialiased (Pillow)
paths, centre crops, numpy input and timm's eval preprocessing are in test_prepare_eval.py, the
CUDA tests in test_prepare_cuda.py, the size decisions' edge cases in test_prepare_plan.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmbconv import _ext
from fastmbconv.prepare import IMAGENET_MEAN, IMAGENET_STD, letterbox_size, prepare_images, prepare_images_ref

from .prepare_inputs import DTYPES, MODES, SIZES, assert_within_one_ulp, needs_cuda, uint8_images



@pytest.fixture(scope="module", autouse=True)
def extension():
    return _ext.load()  # fails with the build command in the message if the extension is missing


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_op_matches_reference(mode, dtype):
    images = uint8_images()
    kw = dict(size=45, mode=mode, dtype=dtype, align=16)
    out, valid = prepare_images(images, **kw)
    ref, valid_ref = prepare_images_ref(images, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert out.device.type == "cpu" and out.dtype == dtype
    assert_within_one_ulp(out, ref)
    assert valid.dtype == torch.int32 and valid.shape == (len(images), 2)
    assert torch.equal(valid, valid_ref)


def _interpolate_rounds_once() -> bool:
    """Whether this torch's CPU F.interpolate computes the source coordinate in one rounding
    (its AVX2/AVX-512 kernels, built with FMA) or two (its DEFAULT kernels): a ramp 320 -> 224."""
    ramp = torch.arange(320, dtype=torch.float32).view(1, 1, 1, 320)
    got = torch.nn.functional.interpolate(ramp, size=(1, 224), mode="bilinear", align_corners=False).flatten()
    scale = torch.tensor(320 / 224, dtype=torch.float32).item()
    # in float64 the product and the difference are exact: one rounding, to fp32 at the end
    once = torch.tensor([scale * (d + 0.5) - 0.5 for d in range(224)], dtype=torch.float32).clamp(0, 319)
    return torch.equal(got, once)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.gpu])])
@pytest.mark.parametrize("mode", ["resize", "letterbox"])
def test_bilinear_matches_f_interpolate_at_model_sizes(mode, device):
    """Photo-sized images to 224 and 380: the source coordinate rounds once, as F.interpolate's
    FMA builds do (two roundings put 320 -> 224 off by 6e-5, six times the fp32 allowance)."""
    if not _interpolate_rounds_once():
        pytest.skip("this torch's CPU F.interpolate rounds the source coordinate twice (its DEFAULT kernels, "
                    "no FMA: ATEN_CPU_CAPABILITY=default or a CPU without AVX2); the op follows its FMA builds")
    images = uint8_images([(430, 320), (320, 430), (375, 500)], seed=3)
    for size in (224, 380):
        kw = dict(size=size if mode == "letterbox" else (size, size), mode=mode, align=16)
        out, _ = prepare_images([im.to(device) for im in images], **kw)
        ref, _ = prepare_images_ref(images, **kw)
        assert_within_one_ulp(out.cpu(), ref)


def test_bilinear_source_coordinate_rounds_once_without_f_interpolate():
    """The source coordinate is one fp32 rounding of scale * (dst + 0.5) - 0.5, checked against
    float64 instead of F.interpolate, so it holds where the test above skips (torch's DEFAULT
    kernels round twice). Alternating 0 / 255 columns make each output lambda or 1 - lambda."""
    for w, sw in ((320, 224), (500, 380), (430, 224)):
        img = torch.tensor([0, 255], dtype=torch.uint8).repeat(w // 2).view(1, w, 1).expand(1, w, 3).contiguous()
        meta = torch.tensor([[0, 0, 1, w, 3, 1, sw, 0, 0, 1, sw]])
        out = _ext.ops().prepare_images_v2([img], meta, 0, 1, sw, torch.float32, [0.0] * 3, [1.0] * 3)
        scale = float(np.float32(w) / np.float32(sw))
        real = np.maximum(np.float32([scale * (d + 0.5) - 0.5 for d in range(sw)]), 0).astype(np.float64)
        lam = real - np.floor(real)
        expect = np.where(np.floor(real) % 2 == 0, lam, 1 - lam)  # column i0 is 0 when even, 255 when odd
        for c in range(3):
            np.testing.assert_allclose(out[0, c, 0].double().numpy(), expect, rtol=0, atol=2e-6, err_msg=str((w, sw)))


@pytest.mark.parametrize("mode", MODES)
def test_valid_hw_and_zero_padding(mode):
    images = uint8_images()
    out, valid = prepare_images(images, 64, mode=mode, align=32)
    if mode == "pad":
        assert out.shape == (5, 3, 512, 384)  # max (500, 375) rounded up to 32
        expected = SIZES
    else:
        assert out.shape == (5, 3, 64, 64)
        expected = [(64, 64)] * 5 if mode == "resize" else [letterbox_size(h, w, 64) for h, w in SIZES]
    assert valid.tolist() == [list(s) for s in expected]
    if mode == "letterbox":
        assert expected == [(45, 64), (64, 48), (64, 64), (64, 48), (2, 64)]
    for i, (h, w) in enumerate(expected):
        assert (out[i, :, h:, :] == 0).all() and (out[i, :, :, w:] == 0).all()  # pad after normalising
        assert (out[i, :, :h, :w] != 0).any()


@pytest.mark.parametrize("channels", [3, 1])
def test_batch_input_equals_list_input(channels):
    """Grayscale too: each image of a batch starts h * w * c bytes after the previous one."""
    g = torch.Generator().manual_seed(1)
    batch = torch.randint(0, 256, (4, 37, 53, channels), generator=g, dtype=torch.uint8)
    for mode in MODES:
        a, va = prepare_images(batch, 40, mode=mode, dtype=torch.float16, align=8)
        b, vb = prepare_images(list(batch), 40, mode=mode, dtype=torch.float16, align=8)
        r, _ = prepare_images_ref(batch, 40, mode=mode, dtype=torch.float16, align=8)
        assert torch.equal(a, b) and torch.equal(va, vb)
        assert_within_one_ulp(a, r)


def test_non_contiguous_inputs():
    base = torch.randint(0, 256, (3, 40, 60, 4), dtype=torch.uint8)
    batch = base[:, 2:39, 1:54, :3]  # a view: strided in every dimension
    items = [base[0, :, :, :3], base[1].transpose(0, 1)[:, :, :3]]
    for imgs in (batch, items):
        out, _ = prepare_images(imgs, 33, mode="letterbox")
        ref, _ = prepare_images_ref(imgs, 33, mode="letterbox")
        assert_within_one_ulp(out, ref)


def test_grayscale_is_expanded():
    gray = uint8_images(SIZES[:3], channels=1)
    rgb = [g.expand(-1, -1, 3) for g in gray]
    a, _ = prepare_images(gray, 30, mode="letterbox", mean=0.5, std=0.25)
    b, _ = prepare_images(rgb, 30, mode="letterbox", mean=0.5, std=0.25)
    r, _ = prepare_images_ref(gray, 30, mode="letterbox", mean=0.5, std=0.25)
    assert torch.equal(a, b)
    assert_within_one_ulp(a, r)


def test_numpy_integer_size():
    np = pytest.importorskip("numpy")
    out, _ = prepare_images(uint8_images(SIZES[:2]), np.int64(20))
    assert out.shape == (2, 3, 20, 20)


def test_identity_resize_is_exact_normalisation():
    img = uint8_images([(16, 16)])[0]
    out, _ = prepare_images([img], 16, dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (img.permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.equal(out[0], expected)


def test_list_is_one_op_call():
    images = uint8_images()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        prepare_images(images, 32, mode="letterbox", dtype=torch.float16)
    names = [e.name for e in prof.events()]
    assert names.count("fastmbconv::prepare_images_v2") == 1, names
    assert names.count("aten::cat") == 0  # the op reads the images in place
    assert names.count("aten::upsample_bilinear2d") == 0


def test_fake_impl_opcheck():
    op = torch.ops.fastmbconv.prepare_images.default
    packed = torch.randint(0, 256, (5 * 7 * 3 + 2 * 3 * 3,), dtype=torch.uint8)
    separate = [torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8),
                torch.randint(0, 256, (2, 3, 3), dtype=torch.uint8)]
    cases = [
        ([packed], torch.tensor([[0, 0, 5, 7, 4, 6], [0, 105, 2, 3, 2, 3]])),
        (separate, torch.tensor([[0, 0, 5, 7, 4, 6], [1, 0, 2, 3, 2, 3], [0, 0, 5, 7, 5, 7]])),
    ]
    for images, meta in cases:
        for dtype in DTYPES:
            torch.library.opcheck(op, (images, meta, 3, 6, 7, dtype, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]))


def test_fake_impl_large_output_shape():
    """Under FakeTensorMode nothing is allocated: an output past 2^31 elements has the right
    shape and strides (the kernels index with int64)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        data = torch.empty(30000 * 30000 * 3, dtype=torch.uint8)
        meta = torch.empty((3, 6), dtype=torch.int64)
        out = torch.ops.fastmbconv.prepare_images([data], meta, 3, 30000, 30000, torch.float16,
                                                  [0.0] * 3, [1.0] * 3)
    assert out.shape == (3, 3, 30000, 30000) and out.numel() > 2**31
    assert out.stride() == (3 * 30000 * 30000, 1, 3 * 30000, 3)


@pytest.mark.subprocess
def test_fake_impl_after_bare_extension_import():
    """`import fastmbconv._C` alone registers the ops; importing the module each op names as its
    fake impl's home (fastmbconv._ext for v1, fastmbconv.prepare for v2) registers the fake."""
    import subprocess
    import sys

    code = (
        "import torch, fastmbconv._C, fastmbconv._ext, fastmbconv.prepare\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "with FakeTensorMode():\n"
        "    d = torch.empty(100, dtype=torch.uint8); m = torch.empty((2, 6), dtype=torch.int64)\n"
        "    o = torch.ops.fastmbconv.prepare_images([d], m, 3, 4, 6, torch.float16, [0.0] * 3, [1.0] * 3)\n"
        "    m2 = torch.empty((3, 11), dtype=torch.int64)\n"
        "    o2 = torch.ops.fastmbconv.prepare_images_v2([d], m2, 2, 5, 7, torch.bfloat16, [0.0] * 3, [1.0] * 3)\n"
        "print(tuple(o.shape), tuple(o2.shape), o2.dtype, o2.is_contiguous(memory_format=torch.channels_last))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "(2, 3, 4, 6) (3, 3, 5, 7) torch.bfloat16 True"


def test_compile_traces_the_op():
    data = torch.randint(0, 256, (8 * 9 * 3,), dtype=torch.uint8)
    meta = torch.tensor([[0, 0, 8, 9, 5, 6]], dtype=torch.int64)

    def f(d, m):
        return torch.ops.fastmbconv.prepare_images([d], m, 3, 8, 8, torch.float32, [0.1] * 3, [0.5] * 3) * 2

    eager = f(data, meta)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(data, meta)
    assert torch.equal(eager, compiled)


_GOOD = [torch.zeros(4, 5, 3, dtype=torch.uint8)]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(images=[torch.zeros(4, 5, 3)]), TypeError, "uint8"),
        (dict(images=torch.zeros(2, 4, 5, 3, dtype=torch.int16)), TypeError, "uint8"),
        (dict(images=[torch.zeros(4, 5, 4, dtype=torch.uint8)]), ValueError, "4 channels"),
        (dict(images=[torch.zeros(3, 4, 5, dtype=torch.uint8)]), ValueError, "5 channels last"),
        (dict(images=[torch.zeros(4, 5, 2, dtype=torch.uint8)]), ValueError, "2 channels"),
        (dict(images=[torch.zeros(0, 5, 3, dtype=torch.uint8)]), ValueError, "empty"),
        (dict(images=torch.zeros(2, 4, 0, 3, dtype=torch.uint8)), ValueError, "empty"),
        (dict(images=torch.zeros(0, 4, 5, 3, dtype=torch.uint8)), ValueError, "empty batch"),
        (dict(images=[]), ValueError, "empty list"),
        (dict(images=_GOOD + [torch.zeros(1, 4, 5, 3, dtype=torch.uint8)]), ValueError, "4 dims"),
        (dict(images=_GOOD + [torch.zeros(4, 5, 3, dtype=torch.uint8, device="meta")]), ValueError, "device"),
        (dict(images=_GOOD + ["x"]), TypeError, "not a tensor"),
        (dict(images=torch.zeros(4, 5, 3, 3, 1, dtype=torch.uint8)), ValueError, "NHWC"),
        (dict(images="img"), TypeError, "NHWC"),
        (dict(size=0), ValueError, "size must be positive"),
        (dict(size=-3), ValueError, "size must be positive"),
        (dict(size=None), TypeError, "size must be an int"),
        (dict(size=2.5), TypeError, "size must be an int"),
        (dict(size=(4, 5), mode="letterbox"), TypeError, "size must be an int"),
        (dict(size=(4, 0)), ValueError, "size must be positive"),
        (dict(size=2**31), ValueError, "overflows 32-bit"),
        (dict(mode="pad", images=[torch.zeros(2**31, 1, 3, dtype=torch.uint8, device="meta")]), ValueError, "overflows 32-bit"),
        # resized: only the per-image check sees it (pad mode's padded size would too)
        (dict(images=[torch.zeros(2**31, 1, 3, dtype=torch.uint8, device="meta")]), ValueError, "overflows 32-bit"),
        (dict(images=[torch.zeros(1, 2**31, 3, dtype=torch.uint8, device="meta")]), ValueError, "overflows 32-bit"),
        (dict(align=7), ValueError, "align"),
        (dict(align=64), ValueError, "align"),
        (dict(mode="crop"), ValueError, "mode"),
        (dict(dtype=torch.float64), TypeError, "dtype"),
        (dict(mean=(0.1, 0.2)), ValueError, "mean"),
        (dict(std=(0.1, 0.0, 0.2)), ValueError, "std must be non-zero"),
    ],
)
@pytest.mark.parametrize("fn", [prepare_images, prepare_images_ref], ids=["op", "ref"])
def test_bad_input(fn, kwargs, exc, match):
    args = dict(images=_GOOD, size=8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fn(args.pop("images"), **args)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(meta=torch.tensor([[0, 100, 4, 5, 4, 5]])), "outside"),  # past the end of the tensor
        (dict(meta=torch.tensor([[0, 1, 4, 5, 4, 5]])), "outside"),  # one byte past
        (dict(meta=torch.tensor([[0, -1, 4, 5, 4, 5]])), "outside"),
        (dict(meta=torch.tensor([[0, 0, 4, 2**40, 4, 5]])), "outside"),
        (dict(meta=torch.tensor([[0, 0, 4, 2**62, 4, 5]])), "outside"),  # h * w overflows
        (dict(meta=torch.tensor([[1, 0, 4, 5, 4, 5]])), "names images"),
        (dict(meta=torch.tensor([[-1, 0, 4, 5, 4, 5]])), "names images"),
        (dict(meta=torch.tensor([[0, 0, 0, 5, 4, 5]])), "empty"),
        (dict(meta=torch.tensor([[0, 0, 4, 5, 9, 5]])), "does not fit"),
        (dict(meta=torch.tensor([[0, 0, 4, 5, 0, 5]])), "does not fit"),
        (dict(meta=torch.tensor([[0, 0, 4, 5, 4, 5, 0]])), "meta must be"),
        (dict(meta=torch.tensor([[0, 0, 4, 5, 4, 5]], dtype=torch.int32)), "meta must be"),
        (dict(images=[]), "empty list"),
        (dict(images=[torch.zeros(60)]), "uint8"),
        (dict(images=[torch.zeros(6, 20, dtype=torch.uint8)[:, ::2]]), "contiguous"),
        (dict(images=[torch.zeros(60, dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8, device="meta")]), "device|meta"),
        (dict(channels=4), "channels must be 1 or 3"),  # the v1 op's own check, before the table's
        (dict(out_h=0), "output size"),
        (dict(out_w=2**31), "output size"),
        (dict(dtype=torch.float64), "dtype"),
        (dict(mean=[0.0, 0.0]), "3 values"),
        (dict(std=[1.0, 0.0, 1.0]), "non-zero"),
    ],
)
def test_op_checks_its_arguments(change, match):
    """Direct torch.ops calls skip the Python checks; the C++ TORCH_CHECKs must catch a bad table
    before any loop touches memory."""
    args = dict(images=[torch.zeros(60, dtype=torch.uint8)], meta=torch.tensor([[0, 0, 4, 5, 4, 5]]),
                channels=3, out_h=8, out_w=8, dtype=torch.float32, mean=[0.0] * 3, std=[1.0] * 3)
    args.update(change)
    with pytest.raises((RuntimeError, NotImplementedError), match=match):
        torch.ops.fastmbconv.prepare_images(*args.values())


def test_list_is_read_in_place():
    """A list on the output's device reaches the op as it is: no concatenation."""
    images = uint8_images()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        prepare_images(images, 32)
    names = [e.name for e in prof.events()]
    assert "aten::cat" not in names and "aten::copy_" not in names, names


@pytest.mark.subprocess
def test_missing_extension_error_names_build_command():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['fastmbconv._C'] = None\n"
        "import torch, fastmbconv\n"
        "from fastmbconv.prepare import prepare_images\n"
        "try:\n"
        "    prepare_images([torch.zeros(4, 4, 3, dtype=torch.uint8)], 8)\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ExtensionNotBuiltError" in r.stdout
    assert "pip install -e . --no-build-isolation" in r.stdout


_V2_ROW = dict(src=0, off=0, h=5, w=7, c=3, sh=11, sw=13, top=0, left=0, rh=6, rw=7)  # valid for out 8 x 8


def _v2_meta(**change):
    return torch.tensor([list({**_V2_ROW, **change}.values())])


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(meta=_v2_meta(left=7)), "lies outside its resized size"),  # left + rw = 14 > resized w
        (dict(meta=_v2_meta(top=-1)), "lies outside its resized size"),
        (dict(meta=_v2_meta(sw=2**31)), "lies outside"),
        (dict(meta=_v2_meta(w=0)), "empty"),
        (dict(meta=_v2_meta(rw=0)), "does not fit"),
        (dict(meta=_v2_meta(rw=9)), "does not fit"),  # one column past out_w
        (dict(meta=_v2_meta(h=2**31 - 1, w=2**31 - 1, sh=8, sw=8, rh=8, rw=8)), "outside"),  # h * w * 3 overflows
        # taller than int32; the bytes exist (allocated when the case runs, never touched)
        (dict(meta=_v2_meta(h=2**31, w=1, c=1, sh=8, sw=1, rh=8, rw=1), images=lambda: [torch.empty(2**31, dtype=torch.uint8)]),
         "lies outside"),
        (dict(meta=_v2_meta(h=1, w=2**31, c=1, sh=8, sw=8, rh=8, rw=8), images=lambda: [torch.empty(2**31, dtype=torch.uint8)]),
         "lies outside"),  # wider than int32
        (dict(meta=torch.zeros(0, 11, dtype=torch.long), out_h=2**31), "output size"),
        (dict(out_h=2**31 - 1, out_w=2**31 - 1), "overflows"),
        (dict(out_w=0), "output size"),
        (dict(std=[1.0, 1.0]), "3 values"),
        (dict(meta=_v2_meta()[:, :10]), "meta must be"),
        (dict(meta=_v2_meta().int()), "meta must be"),
        (dict(meta=_v2_meta().repeat_interleave(2, dim=1)[:, ::2]), "meta must be"),  # not contiguous
    ],
)
@pytest.mark.parametrize("filter_", [0, 1, 2])
def test_v2_op_checks_its_arguments(change, match, filter_):
    """As above, for prepare_images_v2's windows and the arguments the v1 op always passes right."""
    args = dict(images=[torch.zeros(105, dtype=torch.uint8)], meta=_v2_meta(), filter=filter_, out_h=8, out_w=8,
                dtype=torch.float32, mean=[0.0] * 3, std=[1.0] * 3)
    args.update({k: v() if callable(v) else v for k, v in change.items()})
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastmbconv.prepare_images_v2(*args.values())


@pytest.mark.parametrize("filter_", [1, 2])
def test_v2_op_refuses_coefficient_tables_past_int32(filter_):
    """A 2^30-row image shrunk to one row: Pillow's filter then spans every row, 2^31 taps or more,
    and the table's int32 offsets would wrap. The bytes exist but are never touched."""
    meta = _v2_meta(h=2**30, w=1, c=1, sh=1, sw=1, rh=1, rw=1)
    with pytest.raises(RuntimeError, match=r"2\^31 entries"):
        torch.ops.fastmbconv.prepare_images_v2([torch.empty(2**30, dtype=torch.uint8)], meta, filter_, 8, 8,
                                               torch.float32, [0.0] * 3, [1.0] * 3)
