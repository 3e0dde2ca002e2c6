"""Test utilities for the kernels, shipped so that users' own kernels and tests can use them
(like ``torch.testing``): the project's tolerance rule, and fences that catch out-of-bounds
reads and writes on a CPU, where no memory checker runs."""
from __future__ import annotations

import torch

#: Per-dtype slack for fp16/bf16 results: an absolute floor and one ulp of the stored format
#: (Triton's interpreter truncates fp32 -> bf16 instead of rounding).
LOWP_ATOL = {torch.float16: 1e-3, torch.bfloat16: 1e-2}
LOWP_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
FP32_TOL = 1e-4


def assert_close_to_ref(out: torch.Tensor, ref: torch.Tensor, torch_lowp: torch.Tensor | None = None,
                        what: str = "output") -> None:
    """The project's pass rule. fp32: ``max|out - ref| <= 1e-4 * max(1, max|ref|)``.
    fp16/bf16: ``|out - ref| <= 2 |torch_lowp - ref| + atol + ulp * |ref|`` elementwise, where
    ``ref`` is computed in fp32/fp64 and ``torch_lowp`` is torch at the output's precision. An fp32
    ``ref`` from cuDNN needs ``torch.backends.cudnn.allow_tf32 = False`` on a GPU: its TF32
    default keeps 10 mantissa bits, too few for the fp32 rule."""
    if out.shape != ref.shape:
        raise AssertionError(f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    o, r = out.detach().cpu().double(), ref.detach().cpu().double()
    if not torch.isfinite(o).all():
        raise AssertionError(f"{what}: non-finite values in the output")
    err = (o - r).abs()
    if out.dtype in LOWP_ATOL:
        if torch_lowp is None:
            raise ValueError("fp16/bf16 outputs need the torch result at the same precision")
        bound = 2 * (torch_lowp.detach().cpu().double() - r).abs() + LOWP_ATOL[out.dtype] + LOWP_ULP[out.dtype] * r.abs()
    else:
        bound = torch.full_like(r, FP32_TOL * max(1.0, r.abs().max().item() if r.numel() else 1.0))
    bad = err > bound
    if bad.any():
        idx = int((err - bound).flatten().argmax())
        raise AssertionError(
            f"{what} ({out.dtype}): {int(bad.sum())}/{bad.numel()} elements out of tolerance; worst "
            f"|err|={err.flatten()[idx]:.3g} > bound {bound.flatten()[idx]:.3g} (ref {r.flatten()[idx]:.4g}); "
            f"max |err| {err.max():.3g}"
        )


def nan_fenced(x: torch.Tensor, margin: int = 2) -> torch.Tensor:
    """``x`` copied into the middle of a NaN-filled NHWC buffer: any read past its edges (the
    padding, the channel tail of a block, the next image) pulls a NaN into the output."""
    N, C, H, W = x.shape
    buf = torch.full((N + 1, C + 2 * margin, H + 2 * margin, W + 2 * margin), float("nan"),
                     dtype=x.dtype, device=x.device).contiguous(memory_format=torch.channels_last)
    inner = buf[:N, margin:margin + C, margin:margin + H, margin:margin + W]
    inner.copy_(x)
    return inner


def nan_fenced_dense(t: torch.Tensor, margin: int = 64) -> torch.Tensor:
    """``t`` copied, contiguous, into the middle of a NaN-filled flat buffer: a read before its
    first element or past its last (a weight row past the last channel) pulls a NaN in."""
    buf = torch.full((t.numel() + 2 * margin,), float("nan"), dtype=t.dtype, device=t.device)
    inner = buf[margin:margin + t.numel()].view(t.shape)
    inner.copy_(t)
    return inner


class FencedOutputs:
    """Stands in for a launcher's ``empty_like_format``: each output is the middle of a larger
    buffer filled with a sentinel, so a store past any edge of the output shows up as a changed
    sentinel (the write-side twin of :func:`nan_fenced`)."""

    SENTINEL = -12345.0

    def __init__(self, margin: int = 2):
        self.margin, self.buffers = margin, []

    def __call__(self, x, shape, dtype=None):
        m = self.margin
        N, C, H, W = shape
        buf = torch.full((N + 1, C + 2 * m, H + 2 * m, W + 2 * m), self.SENTINEL, dtype=dtype or x.dtype,
                         device=x.device).contiguous(memory_format=torch.channels_last)
        inner = buf[:N, m:m + C, m:m + H, m:m + W]
        self.buffers.append((buf, inner))
        return inner

    def assert_untouched(self):
        assert self.buffers
        for buf, inner in self.buffers:
            outside = torch.ones(buf.shape, dtype=torch.bool, device=buf.device)
            m = self.margin
            outside[: inner.shape[0], m:m + inner.shape[1], m:m + inner.shape[2], m:m + inner.shape[3]] = False
            assert (buf[outside] == self.SENTINEL).all(), "a kernel stored outside its output"
