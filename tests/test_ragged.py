"""Ragged batches on the reference path: each image must come out as if run alone."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import streams

from .helpers import DEVICE, randomize_bn

SIZES = [(64, 48), (80, 80), (33, 57), (7, 1)]


def _ragged_batch(sizes, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    # Garbage (including NaN) in the padded area must not leak into valid outputs.
    batch = torch.full((len(sizes), channels, H, W), float("nan"))
    images = []
    for i, (h, w) in enumerate(sizes):
        img = torch.randn(channels, h, w, generator=g)
        batch[i, :, :h, :w] = img
        images.append(img)
    return batch, images, torch.tensor(sizes, dtype=torch.int32)


@pytest.mark.parametrize("pad_mode", ["symmetric", "same"])
def test_ragged_matches_each_image_alone(pad_mode):
    model = randomize_bn(fm.efficientnet_b0(pad_mode=pad_mode), size=80).eval()  # the batch's extent
    batch, images, valid = _ragged_batch(SIZES)
    with torch.no_grad():
        out = model(batch, valid)
        alone = torch.cat([model(img[None]) for img in images])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, alone, rtol=0, atol=1e-4)


def test_ragged_under_autocast_matches_each_image_alone():
    """Autocast lowers the convs' dtype below the input's: each image as if run alone, at the
    autocast dtype (bf16 allows for rounding differences between batch and single image)."""
    model = randomize_bn(fm.efficientnet_b0(pad_mode="same", num_classes=10), size=80).eval()
    batch, images, valid = _ragged_batch(SIZES)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch, valid)
        alone = torch.cat([model(img[None]) for img in images])
    assert out.dtype == alone.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), alone.float(), rtol=0.05, atol=0.05)


def test_ragged_channels_last_and_features():
    model = randomize_bn(fm.efficientnet_b0(pad_mode="same"), size=80).eval().to(memory_format=torch.channels_last)
    batch, images, valid = _ragged_batch(SIZES[:3])
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fmap = model.forward_features(batch, valid)
        for i, img in enumerate(images):
            alone = model.forward_features(img[None])
            h, w = alone.shape[-2:]
            torch.testing.assert_close(fmap[i : i + 1, :, :h, :w], alone, rtol=0, atol=1e-4)
            assert (fmap[i, :, h:, :] == 0).all() and (fmap[i, :, :, w:] == 0).all()


def test_ragged_features_only_maps():
    model = randomize_bn(fm.efficientnet_b0(features_only=True, out_indices=(1, 2, 4), pad_mode="same"),
                         size=(40, 33)).eval()
    batch, images, valid = _ragged_batch([(40, 24), (17, 33)])
    with torch.no_grad():
        maps = model(batch, valid)
        for i, img in enumerate(images):
            for fmap, alone in zip(maps, model(img[None])):
                h, w = alone.shape[-2:]
                torch.testing.assert_close(fmap[i : i + 1, :, :h, :w], alone, rtol=0, atol=1e-4)


def test_full_size_valid_equals_plain_batch():
    model = randomize_bn(fm.efficientnet_b0(), size=(37, 41)).eval()
    x = torch.randn(2, 3, 37, 41)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([[37, 41], [37, 41]])), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "valid, err, match",
    [
        ([[64, 48], [0, 10]], ValueError, "positive"),
        ([[64, 48], [-3, 10]], ValueError, "positive"),
        ([[65, 48], [10, 10]], ValueError, "exceed"),
        ([[64, 48]], ValueError, "rows"),
        ([], ValueError, "0 rows"),
        ([[64, 48, 1], [1, 1, 1]], ValueError, r"\(N, 2\)"),
        (torch.tensor([[64.0, 48.0], [1.0, 1.0]]), TypeError, "integer"),
    ],
)
def test_bad_valid_sizes(valid, err, match):
    model = fm.efficientnet_b0().eval()
    with pytest.raises(err, match=match):
        model(torch.zeros(2, 3, 64, 48), valid)


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_an_empty_ragged_batch(backend):
    """No images, sizes as an empty list or a (0, 2) tensor: empty outputs of the usual shapes."""
    model = fm.efficientnet_b0(num_classes=7, pad_mode="same").eval().to(DEVICE)
    features = fm.efficientnet_b0(features_only=True).eval().to(DEVICE)
    x = torch.zeros(0, 3, 32, 32, device=DEVICE)
    with torch.no_grad(), fm.use_backend(backend):
        assert model(x, []).shape == (0, 7)
        assert model.forward_features(x, torch.zeros(0, 2, dtype=torch.int64)).shape == (0, 1280, 1, 1)
        assert [m.shape[1:] for m in features(x, [])] == [(16, 16, 16), (24, 8, 8), (40, 4, 4), (112, 2, 2), (320, 1, 1)]


def test_ragged_refused_in_training():
    model = fm.efficientnet_b0()
    with pytest.raises(RuntimeError, match="inference-only"):
        model(torch.zeros(2, 3, 32, 32), torch.tensor([[32, 32], [16, 16]]))


# ---------------------------------------------------------------------- no host syncs
# A forward that reads a device tensor's values on the host (.tolist(), .item(), a blocking
# copy) stalls the CPU until the GPU queue drains. On the meta device any such read raises, so
# running the whole forward on meta tensors (ragged with the sizes given on the host, or not
# ragged) proves both paths read only host metadata. For the fused path that is also what CUDA
# graph capture needs (the capture itself is tested on a GPU in tests/fused/test_compile.py).
META_SIZES = [[64, 48], [33, 47], [7, 1]]


@pytest.mark.parametrize("features_only", [False, True])
def test_reference_ragged_forward_reads_no_device_values(features_only):
    model = fm.efficientnet_b0(pad_mode="same", features_only=features_only).eval().to("meta")
    x = torch.empty(3, 3, 64, 48, device="meta")
    with torch.no_grad(), fm.use_backend("reference"):
        out = model(x, valid_sizes=META_SIZES)
    shapes = [o.shape for o in out] if features_only else [out.shape]
    assert shapes[-1] == ((3, 320, 2, 2) if features_only else (3, 1000))


@pytest.mark.parametrize("is_ragged", [True, False], ids=["ragged", "dense"])
@pytest.mark.parametrize("features_only", [False, True])
def test_fused_forward_reads_no_device_values(features_only, is_ragged):
    """The fused path on meta runs the ops' fake implementations: every host-side step of the
    fused forward (fold, ragged bookkeeping, launch arguments) runs with no device read."""
    pytest.importorskip("triton")
    from fastmbconv.kernels._launch import count_launches

    model = fm.efficientnet_b0(pad_mode="same", features_only=features_only).eval().to("meta")
    x = torch.empty(3, 3, 64, 48, device="meta")
    with torch.no_grad(), fm.use_backend("fused"), count_launches() as launches:
        out = model(x, valid_sizes=META_SIZES if is_ragged else None)
    assert not launches  # fake implementations only: nothing was launched
    shapes = [o.shape for o in out] if features_only else [out.shape]
    assert shapes[-1] == ((3, 320, 2, 2) if features_only else (3, 1000))


def _count_uploads(monkeypatch):
    """A list that receives the shape of every host-to-device copy (``Tensor.to``) made."""
    uploads = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type != "cpu":
            uploads.append(tuple(self.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    return uploads


@pytest.fixture
def fresh_views(monkeypatch):
    """An empty cache of device views (:func:`fastmbconv.geometry.device_view`) for one test."""
    from fastmbconv import geometry

    monkeypatch.setattr(geometry, "_device_views", type(geometry._device_views)())
    monkeypatch.setattr(geometry, "_captured_views", set())
    return geometry


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_a_repeated_ragged_forward_uploads_nothing(monkeypatch, fresh_views, backend):
    """A CUDA graph cannot capture a host-to-device copy (nor replay one from a host buffer
    freed since), so the second forward with the same sizes, the one a user would capture,
    must find every device view of its sizes already uploaded."""
    if backend == "fused":
        pytest.importorskip("triton")
    model = fm.efficientnet_b0(pad_mode="same").eval().to("meta")
    x = torch.empty(3, 3, 64, 48, device="meta")
    with torch.no_grad(), fm.use_backend(backend):
        model(x, valid_sizes=META_SIZES)
        uploads = _count_uploads(monkeypatch)
        model(x, valid_sizes=[list(r) for r in META_SIZES])
        assert uploads == []
        model(x, valid_sizes=[[64, 48], [33, 47], [9, 1]])  # new sizes: uploaded again
    assert (3, 2) in uploads and (3,) in uploads


def test_sizes_first_uploaded_under_inference_mode_serve_a_later_autograd_forward(fresh_views):
    """A warm-up under inference_mode caches the sizes' device views; a later forward that
    autograd records (an input gradient, Grad-CAM) saves them for backward, which an inference
    tensor cannot be."""
    model = fm.efficientnet(0.25, 0.5, num_classes=10).eval()
    batch, _, valid = _ragged_batch(SIZES[:3])
    batch = batch.nan_to_num(0.0)
    with torch.inference_mode():
        model(batch, valid)
    assert not any(view.is_inference() for view, _ in fresh_views._device_views.values())
    batch.requires_grad_()
    model(batch, valid).square().sum().backward()
    assert torch.isfinite(batch.grad).all() and batch.grad.abs().sum() > 0


def test_capture_of_sizes_never_uploaded_names_the_fix(monkeypatch, fresh_views):
    geometry = fresh_views
    monkeypatch.setattr(streams, "capturing", lambda device: True)
    with pytest.raises(RuntimeError, match="once with the same valid_sizes.*outside capture"):
        geometry.RaggedSizes([(5, 3), (2, 2)]).on("meta", "padding", 3, 2, "same")


def test_gpu_valid_sizes_inside_a_capture_name_the_fix(monkeypatch, fresh_views):
    """prepare_images returns the sizes on the GPU; reading them (.tolist()) inside a capture
    would synchronise. A meta tensor stands in for the CUDA one (it cannot be read either)."""
    geometry = fresh_views
    monkeypatch.setattr(streams, "capturing", lambda device: True)
    with pytest.raises(RuntimeError, match="list or a CPU tensor"):
        geometry.RaggedSizes.from_user(torch.ones(2, 2, dtype=torch.int32, device="meta"), (2, 3, 4, 4))
    sizes = geometry.RaggedSizes.from_user(torch.tensor([[4, 4], [3, 2]]), (2, 3, 4, 4))  # CPU: read as before
    assert sizes.sizes.tolist() == [[4, 4], [3, 2]]


def test_device_views_read_in_a_capture_are_never_evicted(monkeypatch, fresh_views):
    geometry = fresh_views
    monkeypatch.setattr(geometry, "DEVICE_VIEWS_MAX", 4)
    captured = geometry.device_view(((1, 2),), torch.int32, "meta")
    monkeypatch.setattr(streams, "capturing", lambda device: True)
    assert geometry.device_view(((1, 2),), torch.int32, "meta") is captured
    monkeypatch.setattr(streams, "capturing", lambda device: False)
    others = [geometry.device_view((i,), torch.float32, "meta") for i in range(10)]
    assert geometry.device_view(((1, 2),), torch.int32, "meta") is captured  # kept past the limit
    assert len(geometry._device_views) == 4
    assert geometry.device_view((9,), torch.float32, "meta") is others[9]  # the newest stay
    assert geometry.device_view((0,), torch.float32, "meta") is not others[0]  # the oldest went


def test_a_racing_upload_of_the_same_sizes_keeps_the_first_view(monkeypatch, fresh_views):
    """Two threads that miss the cache for the same sizes both upload them. Between the first
    one's insert and the second's, a capture may read the first tensor; the second must not
    replace it (dropping the only reference to what the graph replays). The race is played in
    one thread: the second upload's copy runs the first forward's whole lookup."""
    geometry = fresh_views
    values, inner = ((4, 6), (2, 3)), []
    to = torch.Tensor.to

    def upload_while_another_thread_inserts(self, *args, **kwargs):
        if not inner:
            inner.append(None)  # the nested lookup's own upload goes straight through
            inner[0] = geometry.device_view(values, torch.int32, "meta")
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", upload_while_another_thread_inserts)
    late = geometry.device_view(values, torch.int32, "meta")
    assert late is inner[0]
    assert [view for view, _ in geometry._device_views.values()] == [inner[0]]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_cuda_ragged_forward_makes_no_host_sync(backend):
    model = randomize_bn(fm.efficientnet_b0(pad_mode="same"), size=(64, 48)).eval().to("cuda", torch.float16)
    batch, _, _ = _ragged_batch([(64, 48), (33, 47), (7, 1)])
    x = batch.nan_to_num(0.0).to("cuda", torch.float16)
    with torch.inference_mode(), fm.use_backend(backend):
        model(x, valid_sizes=META_SIZES)  # warm-up: compiles, autotunes and folds
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x, valid_sizes=META_SIZES)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("channels_last", [False, True])
def test_ragged_conv2d_zeroes_outside_each_images_strided_extent_and_keeps_the_memory_format(channels_last):
    """ragged.conv2d on its own: its output is zero outside each image's valid extent after the
    stride (ceil(h / s)), exactly, and comes back in the input's memory format."""
    from fastmbconv import ragged
    from fastmbconv.geometry import RaggedSizes

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 8, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(4, 1, 3, 3, generator=g), torch.full((4,), 0.5)
    sizes = RaggedSizes(torch.tensor([[9, 8], [5, 3]]))
    out = ragged.conv2d(x, weight, bias, 2, 4, "same", sizes)
    assert out.shape == (2, 4, 5, 4)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert (out[1, :, 3:, :] == 0).all() and (out[1, :, :, 2:] == 0).all()  # ceil(5 / 2), ceil(3 / 2)
    assert (out[1, :, :3, :2] != 0).all() and (out[0] != 0).all()
