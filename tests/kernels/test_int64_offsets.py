"""64-bit offsets, checked on the CPU through Triton's interpreter.

B7 at 600 px with batch 256 has activations of more than 2^31 elements, so every offset a kernel
computes must be 64-bit. Allocating such a tensor for real takes a GPU (see the CUDA tests), but
the offsets only depend on the *strides*: a small tensor viewed with ``as_strided`` over a
2^31-element storage that is allocated and never touched (the OS maps only the pages written)
puts its images, channels or rows 2^30+ elements apart, so ``index * stride`` passes 2^31 at
index 2 (each storage is about 4 GiB of address space, of which a few MiB are touched). A kernel computing that product in 32 bits reads a wrapped, wild address: wrong output
or a segfault, which is why the checks run in a subprocess.

Outputs are allocated densely by the launchers, so an output over 2^31 elements needs a really
large one (the CUDA tests); the expand_dwconv check below swaps the allocation for a sparse view.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.subprocess

SCRIPT = textwrap.dedent(
    """
    import torch
    import fastmbconv.kernels.dwconv_bn_act as dwconv_module
    import fastmbconv.kernels.expand_dwconv as expand_dwconv_module
    from fastmbconv.kernels.testing import assert_close_to_ref
    from fastmbconv.kernels.affine_act_pool import affine_act_pool, affine_act_pool_ref
    from fastmbconv.kernels.dwconv_bn_act import dwconv_bn_act, dwconv_bn_act_ref, taps_diag
    from fastmbconv.kernels.expand_dwconv import expand_dwconv, expand_dwconv_ref
    from fastmbconv.kernels.pointwise_gated import pointwise_gated, pointwise_gated_ref
    from fastmbconv.kernels.stem_conv_bn_act import stem_conv_bn_act, stem_conv_bn_act_ref

    G = torch.Generator().manual_seed(0)
    FAR = 2**30 + 17  # fits in int32; 2 * FAR does not

    def sparse_view(shape, strides, past=2**31):
        # a (N, C, H, W) view whose elements lie far apart in one huge, mostly unmapped storage
        extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides))
        assert extent > past
        try:
            storage = torch.empty(extent, dtype=torch.float16)
        except RuntimeError as e:  # strict overcommit (vm.overcommit_memory=2) refuses it
            print("NO ADDRESS SPACE:", str(e).splitlines()[0], flush=True)
            raise SystemExit(0)
        view = storage.as_strided(shape, strides)
        view.copy_(torch.randn(shape, generator=G))
        return view

    def expand_block(c_in, c_mid):
        # an expand + depthwise block's folded parameters: expand weight, bias, 3x3 taps, scale, shift
        return ((torch.randn(c_mid, c_in, generator=G) / c_in**0.5).half(), torch.randn(c_mid, generator=G) * 0.1,
                torch.randn(9, c_mid, generator=G) * 0.3, torch.rand(c_mid, generator=G) + 0.5,
                torch.randn(c_mid, generator=G) * 0.1)

    def check_expand(x, block, padding, what):
        # expand_dwconv against its float64 and fp16 references, the taps as fp32 (k*k, C) and as
        # tensor-core (k*k, C, 16); returns the outputs, whose strides the caller checks
        dense, outs = x.contiguous(), []
        for taps, rounded in ((block[2], None), (taps_diag(block[2], torch.float16), torch.float16)):
            args = (*block[:2], taps, *block[3:])
            out = expand_dwconv(x, *args, padding, 1)[0]
            ref = expand_dwconv_ref(dense, *args, padding, 1, compute_dtype=torch.float64, expanded_dtype=rounded)[0]
            lowp = expand_dwconv_ref(dense, *args, padding, 1, compute_dtype=torch.float16)[0]
            assert_close_to_ref(out, ref, lowp, what=f"expand_dwconv ({taps.ndim}-D taps), {what}")
            outs.append(out)
        return outs

    N, C, H, W = 3, 24, 7, 9
    cases = {
        "batch stride": ((N, C, H, W), (FAR, 1, W * C, C)),  # NHWC images 2^30 apart
        "channel stride": ((1, 3, H, W), (3 * FAR, FAR, W, 1)),  # NCHW planes 2^30 apart
        "row stride": ((1, C, 3, W), (3 * FAR, 1, FAR, C)),  # rows 2^30 apart
    }
    for name, (shape, strides) in cases.items():
        x = sparse_view(shape, strides)
        n, c, h, w = shape
        dense = x.contiguous()
        wd = torch.randn(c, 1, 3, 3, generator=G) * 0.3
        scale, shift = torch.rand(c, generator=G) + 0.5, torch.randn(c, generator=G) * 0.1
        for stride in (1, 2):
            out, partials = dwconv_bn_act(x, wd, scale, shift, (1, 1, 1, 1), stride, with_pool=True)
            ref, ref_pool = dwconv_bn_act_ref(dense, wd, scale, shift, (1, 1, 1, 1), stride, with_pool=True,
                                              compute_dtype=torch.float64)
            lowp = dwconv_bn_act_ref(dense, wd.half(), scale, shift, (1, 1, 1, 1), stride,
                                     compute_dtype=torch.float16)
            assert_close_to_ref(out, ref, lowp, what=f"dwconv, {name}, stride {stride}")
            assert_close_to_ref(partials.sum(1), ref_pool, what=f"dwconv pool, {name}, stride {stride}")
            wm = taps_diag(wd, torch.float16)  # the tensor-core variant
            out, partials = dwconv_bn_act(x, wm, scale, shift, (1, 1, 1, 1), stride, with_pool=True)
            ref, ref_pool = dwconv_bn_act_ref(dense, wm, scale, shift, (1, 1, 1, 1), stride, with_pool=True,
                                              compute_dtype=torch.float64)
            lowp = dwconv_bn_act_ref(dense, wm, scale, shift, (1, 1, 1, 1), stride, compute_dtype=torch.float16)
            assert_close_to_ref(out, ref, lowp, what=f"dwconv (tensor cores), {name}, stride {stride}")
            assert_close_to_ref(partials.sum(1), ref_pool, what=f"dwconv (tensor cores) pool, {name}, stride {stride}")

        fused = expand_block(c, 40)
        # FMA taps from fp32 taps-major weights, tensor-core taps from taps_diag (the fused model's)
        for taps, rounded in ((fused[2], None), (taps_diag(fused[2], torch.float16), torch.float16)):
            args = (*fused[:2], taps, *fused[3:])
            for stride in (1, 2):
                out, partials = expand_dwconv(x, *args, (1, 1, 1, 1), stride)
                ref, ref_pool = expand_dwconv_ref(dense, *args, (1, 1, 1, 1), stride, compute_dtype=torch.float64,
                                                  expanded_dtype=rounded)
                lowp = expand_dwconv_ref(dense, *args, (1, 1, 1, 1), stride, compute_dtype=torch.float16)[0]
                what = f"expand_dwconv ({taps.ndim}-D taps), {name}, stride {stride}"
                assert_close_to_ref(out, ref, lowp, what=what)
                assert_close_to_ref(partials.sum(1), ref_pool, what=f"{what}, pool")

        wp = (torch.randn(40, c, generator=G) / c**0.5).half()
        bias, gate = torch.randn(40, generator=G) * 0.1, torch.rand(n, c, generator=G)
        if n > 1:  # NHWC residual images 2^30 apart
            res = sparse_view((n, 40, h, w), (FAR, 1, w * 40, 40))
        else:  # NCHW residual planes 2^31 / 38 apart: plane 39 is past 2^31
            plane = 2**31 // 38
            res = sparse_view((n, 40, h, w), (40 * plane, plane, w, 1))
        out = pointwise_gated(x, wp, bias, gate=gate, residual=res)
        ref = pointwise_gated_ref(dense, wp, bias, gate=gate, residual=res.contiguous(), compute_dtype=torch.float64)
        lowp = pointwise_gated_ref(dense, wp, bias, gate=gate, residual=res.contiguous(), compute_dtype=torch.float16)
        assert_close_to_ref(out, ref, lowp, what=f"pointwise, {name}")
        pooled = pointwise_gated(x, wp, bias, act="silu", pool_only=True)
        ref = pointwise_gated_ref(dense, wp, bias, act="silu", pool_only=True, compute_dtype=torch.float64)
        assert_close_to_ref(pooled, ref, ref.to(torch.float16), what=f"pointwise pool, {name}")
        image, image_w = x[:, :3], torch.randn(8, 3, 3, 3, generator=G) * 0.3  # an image's 3 channels
        image_b = torch.randn(8, generator=G) * 0.1
        out = stem_conv_bn_act(image, image_w, image_b, (1, 1, 1, 1), 2, out_dtype=torch.float32)
        ref = stem_conv_bn_act_ref(dense[:, :3], image_w, image_b, (1, 1, 1, 1), 2, compute_dtype=torch.float64)
        assert_close_to_ref(out, ref, what=f"stem, {name}")
        # the cuDNN route's BN + SiLU + pool pass, in place on the view (its last use here)
        ref, ref_pool = affine_act_pool_ref(dense, scale, shift, "silu", with_pool=True, compute_dtype=torch.float64)
        lowp = affine_act_pool_ref(dense, scale, shift, "silu", compute_dtype=torch.float16)
        out, partials = affine_act_pool(x, scale, shift, "silu", with_pool=True)
        assert_close_to_ref(out, ref, lowp, what=f"affine_act_pool, {name}")
        assert_close_to_ref(partials.sum(1), ref_pool, what=f"affine_act_pool sums, {name}")
        print("ok", name, flush=True)

    # maps of two rows (columns) 2^30 apart: every pixel's offset fits in 32 bits, but a 5x5
    # window's first tap two rows (columns) above (left of) the map does not, nor does the fused
    # kernel's offset of a halo row (column) below (right of) a 3x3 window's top (left) padding
    edges = {
        "rows near 2^31": ((1, 24, 2, 9), (2 * FAR, 1, FAR, 24)),
        "columns near 2^31": ((1, 24, 9, 2), (2 * FAR, 1, 24, FAR)),
    }
    for name, (shape, strides) in edges.items():
        x = sparse_view(shape, strides, past=2**30)
        dense = x.contiguous()
        c = shape[1]
        wd = torch.randn(c, 1, 5, 5, generator=G) * 0.3
        scale, shift = torch.rand(c, generator=G) + 0.5, torch.randn(c, generator=G) * 0.1
        for weight in (wd, taps_diag(wd, torch.float16)):
            out = dwconv_bn_act(x, weight, scale, shift, (2, 2, 2, 2), 1)
            ref = dwconv_bn_act_ref(dense, weight, scale, shift, (2, 2, 2, 2), 1, compute_dtype=torch.float64)
            lowp = dwconv_bn_act_ref(dense, weight.half(), scale, shift, (2, 2, 2, 2), 1, compute_dtype=torch.float16)
            assert_close_to_ref(out, ref, lowp, what=f"dwconv 5x5 ({weight.ndim}-D taps), {name}")
        check_expand(x, expand_block(c, 16), (1, 1, 1, 1), name)
        image_w, image_b = torch.randn(8, 3, 7, 7, generator=G) * 0.1, torch.randn(8, generator=G) * 0.1
        out = stem_conv_bn_act(x[:, :3], image_w, image_b, (3, 3, 3, 3), 1, out_dtype=torch.float32)
        ref = stem_conv_bn_act_ref(dense[:, :3], image_w, image_b, (3, 3, 3, 3), 1, compute_dtype=torch.float64)
        assert_close_to_ref(out, ref, what=f"stem 7x7, {name}")
        print("ok", name, flush=True)

    # expand_dwconv over tiles of one row, as a GPU tiles a huge map (the interpreter's one tile
    # starts at row 0): the last tile's first input row lies 2 * FAR elements into the image,
    # an offset that fits in 64 bits only
    whole_map = expand_dwconv_module.blocks_for
    expand_dwconv_module.blocks_for = lambda h, w, c_in, c, k, s, dtype: (1, w, 16, 16)
    x = sparse_view((1, 24, 3, 9), (3 * FAR, 1, FAR, 24))
    block = expand_block(24, 16)
    check_expand(x, block, (0, 2, 1, 1), "one-row tiles")  # no top padding: tile 2 starts at row 2
    expand_dwconv_module.blocks_for = whole_map
    print("ok one-row tiles", flush=True)

    # rows evenly spaced over two images (the 1x1 conv's DENSE_ROWS: a row's offset is row *
    # pixel stride), pixels 2^30 apart: each image spans under 2^31 elements, the batch does not,
    # so rows 2 and 3 (image 1) are reached only through 64-bit row offsets
    x = sparse_view((2, 24, 1, 2), (2 * FAR, 1, 2 * FAR, FAR))
    dense = x.contiguous()
    wp, bias = (torch.randn(40, 24, generator=G) / 24**0.5).half(), torch.randn(40, generator=G) * 0.1
    pooled = pointwise_gated(x, wp, bias, act="silu", pool_only=True)
    ref = pointwise_gated_ref(dense, wp, bias, act="silu", pool_only=True, compute_dtype=torch.float64)
    assert_close_to_ref(pooled, ref, ref.to(torch.float16), what="pointwise pool, a batch past 2^31")
    print("ok batch past 2^31", flush=True)

    # outputs of three images 2^30 apart (a sparse view for the dense allocation): no offset inside
    # an image passes 2^31, image 2's base does, so only its 64-bit base offset reaches it
    def far_images(like, shape, dtype=None):
        n, c, h, w = shape
        storage = torch.empty((n - 1) * FAR + h * w * c, dtype=dtype or like.dtype)
        return storage.as_strided(shape, (FAR, 1, w * c, c))

    dense_alloc = dwconv_module.empty_like_format
    dwconv_module.empty_like_format = expand_dwconv_module.empty_like_format = far_images
    x = torch.randn(3, 24, 5, 6, generator=G).half().contiguous(memory_format=torch.channels_last)
    wd = torch.randn(24, 1, 3, 3, generator=G) * 0.3
    scale, shift = torch.rand(24, generator=G) + 0.5, torch.randn(24, generator=G) * 0.1
    for weight in (wd, taps_diag(wd, torch.float16)):
        out = dwconv_bn_act(x, weight, scale, shift, (1, 1, 1, 1), 1)
        ref = dwconv_bn_act_ref(x, weight, scale, shift, (1, 1, 1, 1), 1, compute_dtype=torch.float64)
        lowp = dwconv_bn_act_ref(x, weight.half(), scale, shift, (1, 1, 1, 1), 1, compute_dtype=torch.float16)
        assert out.stride(0) == FAR
        assert_close_to_ref(out, ref, lowp, what=f"dwconv ({weight.ndim}-D taps), output images 2^30 apart")
    outs = check_expand(x, block, (1, 1, 1, 1), "output images 2^30 apart")
    assert all(out.stride(0) == FAR for out in outs)
    del out, outs
    dwconv_module.empty_like_format = expand_dwconv_module.empty_like_format = dense_alloc
    print("ok output images 2^30 apart", flush=True)

    # an expand_dwconv output whose channel planes lie 2^30 apart (NCHW): the kernel allocates
    # outputs densely, so the allocation is swapped for a sparse view; the offset of channel 2
    # passes 2^31 only if c * SOC is 64-bit
    def sparse_output(like, shape):
        n, c, h, w = shape
        strides = (c * FAR, FAR, w, 1)
        storage = torch.empty(1 + sum((d - 1) * st for d, st in zip(shape, strides)), dtype=like.dtype)
        return storage.as_strided(shape, strides)

    expand_dwconv_module.empty_like_format = sparse_output
    x = torch.randn(1, 8, 5, 6, generator=G).half()
    outs = check_expand(x, expand_block(8, 4), (1, 1, 1, 1), "output channel stride")
    assert all(out.stride(1) == FAR for out in outs)
    print("ok output channel stride", flush=True)
    print("all ok")
    """
)


def test_offsets_past_2_31_through_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    try:
        result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the 64-bit offset checks took over 5 minutes")
    if result.returncode < 0:
        pytest.fail(f"the kernel process died with signal {-result.returncode} (a wild address from a "
                    f"32-bit offset?) after: {result.stdout.strip()!r}")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    if "NO ADDRESS SPACE" in result.stdout:
        pytest.skip("this machine would not reserve ~4 GiB of (untouched) address space: "
                    + result.stdout.strip().splitlines()[-1])
    assert result.stdout.strip().endswith("all ok")
