"""prepare_images on CUDA (skipped without a GPU): the bilinear kernel against its reference
and the CPU op, one launch for a CPU list, a list already on the GPU read in place, batches,
grayscale, both op versions' opchecks, the Pillow paths equal to the CPU loop exactly, and the
ops' device checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastmbconv import _ext
from fastmbconv.prepare import prepare_images, prepare_images_ref

from . import prepare_device_cases as device_cases
from .prepare_inputs import (
    DTYPES,
    MODES,
    SIZES,
    assert_within_one_ulp,
    natural_image,
    needs_cuda,
    uint8_images,
    v2_args,
)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_reference(mode, dtype):
    if not _ext.has_cuda_kernels():
        pytest.fail("fastmbconv._C was built without CUDA kernels on a CUDA machine")
    images = uint8_images()
    kw = dict(size=45, mode=mode, dtype=dtype, align=16)
    out, valid = prepare_images([im.cuda() for im in images], **kw)
    ref, valid_ref = prepare_images_ref(images, **kw)
    assert out.is_cuda and valid.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
    assert_within_one_ulp(out.cpu(), ref)
    assert torch.equal(valid.cpu(), valid_ref)
    cpu, _ = prepare_images(images, **kw)  # same arithmetic (prepare_math.h, no FMA contraction)
    assert_within_one_ulp(out.cpu(), cpu)


@needs_cuda
@pytest.mark.gpu
def test_cuda_from_cpu_list_is_one_launch():
    images = uint8_images()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        out, _ = prepare_images(images, 64, mode="letterbox", dtype=torch.float16, device="cuda")
        torch.cuda.synchronize()
    assert out.is_cuda
    kernels = [e.name for e in prof.events() if "prepare_images_kernel" in e.name]
    assert len(kernels) == 1, kernels


@needs_cuda
@pytest.mark.gpu
def test_cuda_list_on_the_gpu_is_read_in_place():
    images = [im.cuda() for im in uint8_images()]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out, _ = prepare_images(images, 64, mode="letterbox", dtype=torch.float16, device="cuda")
    names = [e.name for e in prof.events()]
    assert out.is_cuda and "aten::cat" not in names, names


@needs_cuda
@pytest.mark.gpu
def test_cuda_batch_grayscale_and_opcheck():
    if not _ext.has_cuda_kernels():
        pytest.fail("fastmbconv._C was built without CUDA kernels on a CUDA machine")
    g = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 256, (3, 37, 53, 1), generator=g, dtype=torch.uint8)
    for mode in MODES:
        out, valid = prepare_images(batch, 40, mode=mode, dtype=torch.bfloat16, device="cuda")
        ref, valid_ref = prepare_images_ref(batch, 40, mode=mode, dtype=torch.bfloat16)
        assert out.is_cuda
        assert_within_one_ulp(out.cpu(), ref)
        assert torch.equal(valid.cpu(), valid_ref)
    images = [im.cuda() for im in uint8_images(SIZES[:2])]
    meta = torch.tensor([[0, 0, 37, 53, 20, 30], [1, 0, 64, 48, 32, 24]])
    torch.library.opcheck(torch.ops.fastmbconv.prepare_images.default,
                          (images, meta, 3, 32, 32, torch.float16, [0.5] * 3, [0.25] * 3))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_cuda_center_crop_equals_cpu(interpolation, dtype):
    """The Pillow paths are integer arithmetic on the same host-built coefficients: the CUDA
    kernel must give the CPU loop's values exactly, for lists, batches and grayscale."""
    if not _ext.has_cuda_kernels():
        pytest.fail("fastmbconv._C was built without CUDA kernels on a CUDA machine")
    images = [natural_image(333, 500, seed=1), natural_image(37, 53, channels=0, seed=2),
              natural_image(853, 640, seed=3), natural_image(101, 77, channels=1, seed=4)]
    for size in (224, (160, 208)):
        kw = dict(size=size, mode="center_crop", dtype=dtype, interpolation=interpolation)
        cpu, valid = prepare_images(images, **kw)
        on_gpu, valid_gpu = prepare_images([torch.tensor(i).cuda() for i in images], **kw)
        packed, _ = prepare_images(images, device="cuda", **kw)  # CPU list, one upload
        assert torch.equal(on_gpu.cpu(), cpu) and torch.equal(packed.cpu(), cpu)
        assert torch.equal(valid_gpu.cpu(), valid)
    batch = np.stack([natural_image(45, 67, seed=s) for s in range(3)])
    kw = dict(size=(40, 40), mode="resize", dtype=dtype, interpolation=interpolation, antialias=True)
    assert torch.equal(prepare_images(batch, device="cuda", **kw)[0].cpu(), prepare_images(batch, **kw)[0])
    images, meta, f = v2_args(2)
    torch.library.opcheck(torch.ops.fastmbconv.prepare_images_v2.default,
                          ([images[0].cuda()], meta, f, 6, 7, dtype, [0.5] * 3, [0.25] * 3))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.subprocess
@pytest.mark.parametrize("filter_, first", [(0, ()), (1, ()), (2, ()), (0, ("triton-kernel",))],
                         ids=["filter0", "filter1", "filter2", "filter0-after-triton"])
def test_cuda_op_checks_devices(filter_, first):
    """The checks only a CUDA build reaches (on a CPU-only build these inputs never get past the
    dispatcher): the table must stay on the host, where both ops read it, and every image must be
    on the first image's device, since the kernel reads them all through one table of addresses.
    Each call runs in a child process (tests.prepare_device_cases): on an H100 a call here
    crashed its pytest worker with a segfault, so a crash now names its case, and the CPU
    kernel's own error and one of torch's beside them tell a crash of these checks from one of every
    C++ error (tests.prepare_device_cases.CASES). The last case runs them all again in children
    that launch a Triton kernel first, as the crashed workers had."""
    if not _ext.has_cuda_kernels():
        pytest.fail("fastmbconv._C was built without CUDA kernels on a CUDA machine")
    outcomes = device_cases.run(["cpu-control", "cuda-binding-control", *device_cases.CUDA_CASES], filter_,
                                first=first, trace=filter_ == 0)  # gdb's frames once for each way
    assert not device_cases.failures(outcomes), "\n".join(device_cases.failures(outcomes))
