"""fastmbconv.prepare, Pillow paths: timm's eval preprocessing (eval_transform, mode
"center_crop") against a PIL implementation of timm's eval transform, the antialiased op
against its torch twin (prepare_images_ref) and against Pillow, the centre-crop geometry,
numpy input, mixed grayscale/RGB lists, CHW errors, the second op version (prepare_images_v2)
and its fake implementation. CUDA is in test_prepare_cuda.py."""
from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
import torch

import fastmbconv
from fastmbconv import _ext
from fastmbconv.prepare import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    center_crop_size,
    eval_transform,
    prepare_images,
    prepare_images_ref,
)

from .prepare_inputs import DTYPES, natural_image, v2_args


def pillow():
    """PIL.Image, the reference: the op resamples as Pillow 13 does. Pillow 12 and earlier run the
    horizontal pass first on every image, one 8-bit step apart from 13 where 13 goes vertical
    first, so with those these tests skip and say which Pillow is installed."""
    return pytest.importorskip("PIL.Image", minversion="13", reason="PIL is the reference")


def pil_timm_eval(arr: np.ndarray, cfg: dict) -> torch.Tensor:
    """timm's transforms_imagenet_eval (crop_mode "center") on a PIL image, written out with
    PIL alone: torchvision Resize(int) for square targets (shorter side to floor(size /
    crop_pct), longer int(s * long / short)), timm ResizeKeepRatio for non-square ones (round(x /
    min ratio), bilinear), torchvision CenterCrop (round((h - H) / 2)), ToTensor, Normalize."""
    Image = pillow()
    im = Image.fromarray(arr).convert("RGB")
    _, th, tw = cfg["input_size"]
    crop_pct, interp = cfg["crop_pct"], cfg["interpolation"]
    w, h = im.size
    if th == tw:
        s = math.floor(th / crop_pct)
        nh, nw = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[interp]
    else:
        ratio = min(h / math.floor(th / crop_pct), w / math.floor(tw / crop_pct))
        nh, nw = round(h / ratio), round(w / ratio)
        resample = Image.BILINEAR
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), resample)
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    x = torch.from_numpy(np.array(im.crop((left, top, left + tw, top + th)))).permute(2, 0, 1)
    x = x.float().div(255)
    mean = torch.tensor(cfg.get("mean", IMAGENET_MEAN)).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", IMAGENET_STD)).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def assert_within_one_step(out, ref, std=IMAGENET_STD, min_exact=0.98):
    """|out - ref| <= one 8-bit step, 1 / (255 std_c), plus 1 ulp of the dtype at the larger of the
    two (each was rounded once, by half an ulp at most) and 1e-5 of fp32 rounding; at least
    `min_exact` of the values within that ulp (a one-step difference is a rounding boundary
    crossed, which must stay rare)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    a, b = out.float(), ref.float()
    diff = (a - b).abs()
    step = (1 / (255 * torch.tensor(std, dtype=torch.float32))).flatten().expand(3).reshape(3, 1, 1)
    fi = torch.finfo(out.dtype)
    big = torch.maximum(a.abs(), b.abs()).clamp_min(fi.tiny)  # two values in different binades
    ulp = fi.eps * torch.exp2(torch.floor(torch.log2(big))) + 1e-5
    bad = diff > step + ulp
    assert not bad.any(), f"{int(bad.sum())} values off by more than one step; worst {diff.max():.5f}"
    exact = (diff <= ulp).float().mean().item()
    assert exact >= min_exact, f"only {exact:.4f} of the values agree within 1 ulp"


@pytest.fixture(scope="module", autouse=True)
def extension():
    return _ext.load()  # fails with the build command in the message if the extension is missing


# ------------------------------------------------------------------ timm's eval preprocessing

B0 = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")


@pytest.mark.parametrize("cfg", [
    B0,
    dict(input_size=(3, 300, 300), crop_pct=0.904, interpolation="bicubic"),  # tf_efficientnet_b3
    dict(input_size=(3, 240, 240), crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3),
    dict(input_size=(3, 192, 256), crop_pct=0.95, interpolation="bicubic"),  # non-square: bilinear
], ids=["b0", "b3", "bilinear-1.0", "192x256"])
def test_eval_transform_matches_pil_timm(cfg):
    images = [natural_image(333, 500, seed=1), natural_image(480, 640, seed=2),
              natural_image(37, 53, seed=3), natural_image(500, 333, seed=4),
              natural_image(101, 77, channels=0, seed=5),  # grayscale, upscaled
              natural_image(700, 300, seed=6)]  # tall: Pillow 13 resizes it vertically first
    transform = eval_transform(cfg)
    out, valid = transform(images)
    assert out.shape == (6, 3, *cfg["input_size"][1:]) and valid.tolist() == [list(cfg["input_size"][1:])] * 6
    ref = torch.stack([pil_timm_eval(im, cfg) for im in images])
    assert_within_one_step(out, ref, std=cfg.get("std", IMAGENET_STD), min_exact=0.999)


def test_pillow_paths_are_bit_exact_with_pillow():
    """The op's antialiased resize is Pillow's own arithmetic: with mean 0 and std 1/255 the
    output is the resized uint8 image, identical to Image.resize, downscaling and upscaling,
    either pass first (the fifth and sixth: Pillow 13 runs the vertical pass first; the last is a
    tie, where it runs the horizontal pass first)."""
    from fastmbconv.prepare import pillow_vertical_first

    assert pillow_vertical_first(120, 40, 50, 30) and pillow_vertical_first(41, 57, 30, 90)
    assert not pillow_vertical_first(333, 500, 100, 150) and not pillow_vertical_first(9, 400, 31, 7)
    assert not pillow_vertical_first(120, 40, 60, 10)  # a tie (60 = 2 * 30): horizontal first, as Pillow
    Image = pillow()
    for seed, ((h, w), (th, tw)) in enumerate([((333, 500), (100, 150)), ((37, 53), (92, 132)),
                                               ((240, 320), (240, 111)), ((9, 400), (31, 7)),
                                               ((120, 40), (50, 30)), ((41, 57), (30, 90)), ((120, 40), (60, 10))]):
        arr = natural_image(h, w, seed=seed)
        for interp, resample in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC)):
            out, _ = prepare_images([arr], (th, tw), interpolation=interp, antialias=True,
                                    mean=0.0, std=1 / 255)
            pil = np.asarray(Image.fromarray(arr).resize((tw, th), resample))
            assert np.array_equal(out[0].permute(1, 2, 0).round().to(torch.uint8).numpy(), pil), (h, w, interp)


def test_tiny_and_thin_images_match_pil_timm():
    """One-pixel and one-row images: a single tap per axis, the rest of the filter cut off."""
    images = [np.full((1, 1, 3), 200, np.uint8), natural_image(2, 71, seed=8), natural_image(71, 2, seed=9)]
    for interpolation in ("bilinear", "bicubic"):
        cfg = dict(input_size=(3, 32, 32), crop_pct=0.9, interpolation=interpolation)
        out, _ = eval_transform(cfg)(images)
        assert torch.equal(out, torch.stack([pil_timm_eval(im, cfg) for im in images]))


def test_timm_output_is_reproduced_bit_for_bit_in_fp32():
    """Same uint8 pixels and the same fp32 three-step normalisation as ToTensor + Normalize."""
    arr = natural_image(333, 500, seed=7)
    out, _ = eval_transform(B0)([arr])
    assert torch.equal(out[0], pil_timm_eval(arr, B0))


def test_center_crop_size():
    """Hand-worked timm / torchvision geometry."""
    assert center_crop_size(333, 500, 224) == ((256, 384), (16, 80))  # int(256 * 500 / 333) = 384
    assert center_crop_size(500, 333, 224) == ((384, 256), (80, 16))
    assert center_crop_size(256, 300, 224) == ((256, 300), (16, 38))  # unresized short side
    assert center_crop_size(375, 500, 224, 0.95) == ((235, 313), (6, 44))  # floor(235.79); 5.5 -> 6
    assert center_crop_size(233, 500, 224, 0.95) == ((235, 504), (6, 140))  # int(504.29)
    assert center_crop_size(100, 100, 225, 0.9) == ((250, 250), (12, 12))  # 12.5 rounds to even 12
    assert center_crop_size(100, 100, 227, 0.9) == ((252, 252), (12, 12))  # floor(252.2); 12.5 -> 12
    assert center_crop_size(10, 10, 227, 0.905) == ((250, 250), (12, 12))  # floor(250.8)
    assert center_crop_size(300, 400, (192, 256)) == ((219, 292), (14, 18))  # ratio min(300/219, 400/292)
    assert center_crop_size(37, 53, 224, 1.0) == ((224, 320), (0, 48))


def test_eval_transform_resolves_like_timm():
    t = eval_transform({})
    assert t == EvalTransform((224, 224), 0.875, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    cfg = dict(input_size=(3, 260, 260), crop_pct=0.89, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
               std=(0.5, 0.5, 0.5), test_input_size=(3, 288, 288), test_crop_pct=1.0, crop_mode="center")
    assert eval_transform(cfg) == EvalTransform((260, 260), 0.89, "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert eval_transform(cfg, use_test_size=True).size == (288, 288)
    assert eval_transform(cfg, use_test_size=True).crop_pct == 1.0
    model = types.SimpleNamespace(pretrained_cfg=dict(cfg, crop_pct=None))  # None: timm's default
    assert eval_transform(model).crop_pct == 0.875
    assert eval_transform(dict(input_size=(3, 192, 256))).interpolation == "bilinear"  # as timm does
    assert fastmbconv.eval_transform is eval_transform  # the lazy export


@pytest.mark.parametrize("cfg, exc, match", [
    (dict(crop_mode="squash"), ValueError, "crop_mode"),
    (dict(input_size=(1, 224, 224)), ValueError, "input_size"),
    (dict(input_size=(224, 224)), ValueError, "input_size"),
    (dict(interpolation="lanczos"), ValueError, "interpolation"),
    (dict(crop_pct=1.5), ValueError, "crop_pct"),
    (dict(std=(0.5, 0.0, 0.5)), ValueError, "std"),
    (object(), TypeError, "pretrained_cfg"),
])
def test_eval_transform_bad_config(cfg, exc, match):
    with pytest.raises(exc, match=match):
        eval_transform(cfg)


# ------------------------------------------------------------------ op against its torch twin

def _twin_case(**kw):
    """The op in fp32 within one 8-bit step of the twin; in fp16 / bf16 exactly the fp32 output
    rounded once (the twin casts its fp32 result the same way, so it is within a step and an ulp)."""
    images = [natural_image(333, 500, seed=11), natural_image(37, 53, seed=12),
              natural_image(101, 77, channels=1, seed=13), natural_image(853, 640, seed=14)]
    out, valid = prepare_images(images, **kw)
    ref, valid_ref = prepare_images_ref(images, **kw)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(valid, valid_ref)
    std = kw.get("std", IMAGENET_STD)
    assert_within_one_step(out, ref, std=std)
    for dtype in (torch.float16, torch.bfloat16):
        low, _ = prepare_images(images, dtype=dtype, **kw)
        assert low.dtype == dtype and torch.equal(low, out.to(dtype))
        assert_within_one_step(low, ref.to(dtype), std=std)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0])
def test_center_crop_matches_twin(crop_pct, interpolation):
    """Downscaling (333x500 by ~0.8, 853x640 by ~0.3) and upscaling (37x53 by ~6, 101x77 by ~3);
    fp32, fp16, bf16."""
    size = (224, 224) if crop_pct != 0.95 else (160, 208)  # and a non-square crop
    _twin_case(size=size, mode="center_crop", crop_pct=crop_pct, interpolation=interpolation)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("mode, size", [("resize", (100, 150)), ("resize", (92, 132)), ("letterbox", 120)])
def test_antialiased_resize_matches_twin(mode, size, interpolation):
    """resize / letterbox with antialias=True: factors ~0.3 and ~2.5, non-square targets."""
    _twin_case(size=size, mode=mode, interpolation=interpolation, antialias=True, mean=0.5, std=0.25)


def test_antialias_defaults():
    img = [natural_image(60, 80, seed=3)]
    crop_aa, _ = prepare_images(img, 32, mode="center_crop")  # antialiased by default
    assert torch.equal(crop_aa, prepare_images(img, 32, mode="center_crop", antialias=True)[0])
    crop_plain, _ = prepare_images(img, 32, mode="center_crop", antialias=False)  # F.interpolate, cropped
    ref, _ = prepare_images_ref(img, 32, mode="center_crop", antialias=False)
    assert (crop_plain - ref).abs().max() < 1e-5 and (crop_plain - crop_aa).abs().max() > 0.05
    resized, _ = prepare_images(img, 32)  # resize keeps its documented F.interpolate default
    assert torch.equal(resized, prepare_images(img, 32, antialias=False)[0])
    wide, valid = prepare_images(img, (20, 36))  # an (H, W) size
    assert wide.shape == (1, 3, 20, 36) and valid.tolist() == [[20, 36]]
    assert (wide - prepare_images_ref(img, (20, 36))[0]).abs().max() < 1e-5


# ------------------------------------------------------------------ inputs

def test_mixed_grayscale_rgb_list_and_numpy():
    gray, rgb = natural_image(45, 61, channels=0, seed=1), natural_image(52, 39, seed=2)
    items = [gray, torch.tensor(rgb), torch.tensor(gray)[..., None], rgb[::-1, :, :]]
    kw = dict(size=32, mode="center_crop", dtype=torch.float16)
    out, valid = prepare_images(items, **kw)
    ref, _ = prepare_images_ref(items, **kw)
    assert out.shape == (4, 3, 32, 32) and valid.tolist() == [[32, 32]] * 4
    assert_within_one_step(out, ref, min_exact=0.95)
    as_rgb = [np.repeat(gray[..., None], 3, 2), rgb, np.repeat(gray[..., None], 3, 2), rgb[::-1].copy()]
    assert torch.equal(out, prepare_images(as_rgb, **kw)[0])  # grayscale is expanded, bit for bit


def test_numpy_batches_and_single_images():
    batch = np.stack([natural_image(30, 40, seed=s) for s in range(3)])
    kw = dict(size=24, mode="center_crop", interpolation="bicubic")
    expected, _ = prepare_images(torch.from_numpy(batch), **kw)
    assert torch.equal(prepare_images(batch, **kw)[0], expected)  # NHWC array
    assert torch.equal(prepare_images(list(batch), **kw)[0], expected)  # list of arrays
    assert torch.equal(prepare_images(batch[1], **kw)[0], expected[1:2])  # one HWC array
    assert torch.equal(prepare_images(torch.from_numpy(batch[1]), **kw)[0], expected[1:2])  # one tensor
    read_only = batch[2].copy()
    read_only.setflags(write=False)  # as np.asarray(PIL image) returns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning is not passed on
        assert torch.equal(prepare_images(read_only, **kw)[0], expected[2:3])
    with pytest.raises(TypeError, match="uint8"):
        prepare_images(batch.astype(np.float32), **kw)


@pytest.mark.parametrize("images, match", [
    (torch.zeros(3, 50, 60, dtype=torch.uint8), r"looks like CHW; pass HWC"),
    (np.zeros((1, 50, 60), np.uint8), r"looks like CHW; pass HWC"),
    ([torch.zeros(8, 8, 3, dtype=torch.uint8), np.zeros((3, 224, 224), np.uint8)],
     r"images\[1\].*looks like CHW; pass HWC"),
    (torch.zeros(2, 3, 32, 30, dtype=torch.uint8), r"looks like NCHW; pass NHWC"),
])
@pytest.mark.parametrize("fn", [prepare_images, prepare_images_ref], ids=["op", "ref"])
def test_chw_input_is_refused(fn, images, match):
    with pytest.raises(ValueError, match=match):
        fn(images, 16, mode="center_crop")


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(crop_pct=0.0), ValueError, "crop_pct"),
    (dict(crop_pct=-0.5), ValueError, "crop_pct"),
    (dict(crop_pct=1.01), ValueError, "crop_pct"),
    (dict(crop_pct=True), ValueError, "crop_pct"),
    (dict(crop_pct="0.9"), ValueError, "crop_pct"),
    (dict(crop_pct=0.9, mode="resize"), ValueError, "applies to mode='center_crop' only"),
    (dict(interpolation="nearest"), ValueError, "interpolation"),
    (dict(interpolation="BICUBIC"), ValueError, "interpolation"),
    (dict(interpolation="bicubic", antialias=False), ValueError, "antialias=True"),
    (dict(interpolation="bicubic", mode="letterbox", size=16), ValueError, "antialias=True"),
    (dict(antialias="yes"), TypeError, "antialias"),
    (dict(size=(16, 16, 3)), TypeError, "size"),
])
@pytest.mark.parametrize("fn", [prepare_images, prepare_images_ref], ids=["op", "ref"])
def test_bad_eval_arguments(fn, kwargs, exc, match):
    args = dict(size=(16, 20), mode="center_crop")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fn([np.zeros((20, 30, 3), np.uint8)], **args)


# ------------------------------------------------------------------ the op itself

@pytest.mark.parametrize("filter_", [0, 1, 2])
def test_v2_fake_impl_opcheck(filter_):
    import fastmbconv.prepare as prep

    op = prep._op().default
    images, meta, f = v2_args(filter_)
    for dtype in DTYPES:
        torch.library.opcheck(op, (images, meta, f, 6, 7, dtype, [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]))
    compiled = torch.compile(lambda i, m: op(i, m, f, 6, 7, torch.float32, [0.1] * 3, [0.5] * 3) * 2,
                             backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(images, meta), op(images, meta, f, 6, 7, torch.float32, [0.1] * 3, [0.5] * 3) * 2)


def test_v2_windows_of_pillow_resizes():
    """Direct op calls: any window of any Pillow resize, including resizes that keep one axis
    (that pass is skipped, the window still offset along it), equals Image.resize + crop."""
    Image = pillow()
    arr = natural_image(41, 57, seed=21)
    img = torch.tensor(arr)
    op = torch.ops.fastmbconv.prepare_images_v2
    for f, resample in ((1, Image.BILINEAR), (2, Image.BICUBIC)):
        for sh, sw, top, left, rh, rw in [(30, 90, 3, 7, 20, 64), (41, 90, 5, 11, 30, 70),
                                          (23, 57, 4, 9, 17, 40), (41, 57, 2, 3, 30, 40)]:
            meta = torch.tensor([[0, 0, 41, 57, 3, sh, sw, top, left, rh, rw]])
            out = op([img], meta, f, rh + 1, rw + 2, torch.float32, [0.0] * 3, [1 / 255] * 3)
            pil = np.asarray(Image.fromarray(arr).resize((sw, sh), resample))[top:top + rh, left:left + rw]
            assert np.array_equal(out[0, :, :rh, :rw].permute(1, 2, 0).round().to(torch.uint8).numpy(), pil)
            assert (out[0, :, rh:] == 0).all() and (out[0, :, :, rw:] == 0).all()


@pytest.mark.parametrize("row, f, match", [
    ([0, 0, 5, 7, 3, 11, 13, 6, 3, 6, 7], 2, "lies outside its resized size"),  # top + h > resized h
    ([0, 0, 5, 7, 3, 11, 13, 0, -1, 6, 7], 1, "lies outside its resized size"),
    ([0, 0, 5, 7, 2, 5, 7, 0, 0, 5, 7], 1, "channels"),
    ([0, 0, 5, 7, 3, 5, 7, 0, 0, 5, 7], 3, "filter"),
    ([0, 100, 5, 7, 3, 5, 7, 0, 0, 5, 7], 1, "outside"),
    ([0, 0, 5, 7, 3, 2**31, 7, 0, 0, 5, 7], 2, "lies outside"),
])
def test_v2_checks_its_arguments(row, f, match):
    op = torch.ops.fastmbconv.prepare_images_v2
    with pytest.raises(RuntimeError, match=match):
        op([torch.zeros(105, dtype=torch.uint8)], torch.tensor([row]), f, 8, 8, torch.float32,
           [0.0] * 3, [1.0] * 3)
