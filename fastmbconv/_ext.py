"""Lazy loader of the compiled extension ``fastmbconv._C``.

``import fastmbconv`` never loads the extension; the first call that needs one of its ops does,
through :func:`ops`. When the extension is missing (not built, or built against another torch),
that call raises :class:`ExtensionNotBuiltError`, which names the build command.

Loading also registers the fake (meta) implementations of the ops, so ``torch.compile`` and
``FakeTensorMode`` can trace them.
"""
from __future__ import annotations

import sys
import threading

import torch

BUILD_COMMAND = "pip install -e . --no-build-isolation"

_lock = threading.Lock()
_module = None
_fakes_registered = False


class ExtensionNotBuiltError(ImportError):
    """The compiled extension ``fastmbconv._C`` cannot be imported."""


def load():
    """Import ``fastmbconv._C`` once (registering its ops and their fake implementations) and
    return the module; raise :class:`ExtensionNotBuiltError` with the build command if it is
    missing."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            try:
                from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
            except ImportError as exc:
                raise ExtensionNotBuiltError(
                    "fastmbconv's compiled extension fastmbconv._C is not available "
                    f"({type(exc).__name__}: {exc}). Build it from the repository root with "
                    f"`{BUILD_COMMAND}` (torch must be installed first; a CUDA torch plus nvcc "
                    "also builds the CUDA kernels)."
                ) from exc
            _register_fakes()
            _module = _C
    return _module


def ops():
    """``torch.ops.fastmbconv`` with the extension's ops loaded."""
    load()
    return torch.ops.fastmbconv


def has_cuda_kernels() -> bool:
    """Whether the loaded extension was built with its CUDA kernels."""
    load()
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastmbconv::prepare_images", "CUDA")


def prepare_images_fake(meta_cols: int, mode: str, modes: tuple):
    """The fake (meta) implementation of a prepare_images op: its (N, ``meta_cols``) table, and
    ``mode`` (the op's fourth argument) one of ``modes``. Both ops share it; each registers it
    from the module its C++ definition names."""

    def fake(images, meta, mode_value, out_h, out_w, dtype, mean, std):
        torch._check(len(images) > 0, lambda: "images is an empty list")
        torch._check(all(t.dtype == torch.uint8 for t in images), lambda: "images must be uint8")
        torch._check(all(t.device == images[0].device for t in images),
                     lambda: "all images must be on one device")
        torch._check(meta.dim() == 2 and meta.shape[1] == meta_cols,
                     lambda: f"meta must be (N, {meta_cols})")
        torch._check(mode_value in modes,
                     lambda: f"{mode} must be {' or '.join(map(str, modes))}, got {mode_value}")
        torch._check(dtype in (torch.float32, torch.float16, torch.bfloat16),
                     lambda: f"dtype must be float32, float16 or bfloat16, got {dtype}")
        return torch.empty((meta.shape[0], 3, out_h, out_w), dtype=dtype, device=images[0].device,
                           memory_format=torch.channels_last)

    return fake


def _register_fakes() -> None:
    global _fakes_registered
    if _fakes_registered:
        return

    torch.library.register_fake("fastmbconv::prepare_images")(
        prepare_images_fake(meta_cols=6, mode="channels", modes=(1, 3)))

    _fakes_registered = True


# The extension was imported directly (`import fastmbconv._C`): importing this module (which
# torch's error for a missing fake impl names, see csrc/prepare.cpp) registers the fakes.
if sys.modules.get("fastmbconv._C") is not None:
    _register_fakes()
