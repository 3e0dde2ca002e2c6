"""prepare_images' CUDA decisions, checked on a CPU with the CUDA state patched in: which GPU
``device="cuda"`` means, and a CUDA-graph capture refused before anything is uploaded."""
import pytest
import torch

from fastmbconv.prepare import IMAGENET_MEAN, IMAGENET_STD, prepare_images


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8) for h, w in ((5, 7), (9, 4))]


def test_cuda_without_an_index_is_the_current_gpu(monkeypatch):
    """device="cuda" means the current GPU: the plan names it, so CUDA images already there
    compare equal to it and are read in place (``cuda`` != ``cuda:0`` as torch devices)."""
    from fastmbconv._prepare_plan import make_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    plan = make_plan(_images(), 32, "letterbox", torch.float32, IMAGENET_MEAN, IMAGENET_STD, 8, "cuda", "bilinear",
                     True, None)
    assert plan.device == torch.device("cuda", 1)


def test_a_cuda_graph_capture_is_refused_with_the_fix(monkeypatch):
    """The op's table (image addresses, built on the host) cannot be replayed: inside a capture
    the call must say so before any upload. A capture is patched in; no GPU is touched."""
    from fastmbconv import streams

    monkeypatch.setattr(streams, "capturing", lambda device: device.type == "cuda")
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph.*outside the capture"):
        prepare_images(_images(), 32, device="cuda")
    prepare_images(_images(), 32)  # the CPU is never capturing
