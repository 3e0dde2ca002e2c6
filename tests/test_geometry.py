"""Padding in both conventions, output sizes, and the host-side sizes of a ragged batch."""
import math

import pytest
import torch

from fastmbconv.geometry import RaggedSizes, ceil_div, conv_padding, out_size, same_padding


@pytest.mark.parametrize(
    "size, k, s, expected",
    [(224, 3, 2, (0, 1)), (225, 3, 2, (1, 1)), (7, 5, 2, (2, 2)), (8, 5, 2, (1, 2)), (1, 3, 2, (1, 1)),
     (1, 5, 1, (2, 2)), (10, 3, 1, (1, 1))],
)
def test_same_padding(size, k, s, expected):
    assert same_padding(size, k, s) == expected


def test_same_padding_matches_tf_formula_on_odd_sizes():
    # TF: pad_total = max((ceil(i/s) - 1) * s + k - i, 0); top = total // 2.
    for i in range(1, 40):
        for k in (3, 5):
            for s in (1, 2):
                total = max((math.ceil(i / s) - 1) * s + k - i, 0)
                assert same_padding(i, k, s) == (total // 2, total - total // 2)


def test_out_size_is_the_padded_conv_arithmetic():
    for size in range(1, 30):
        for k in (3, 5):
            for s in (1, 2):
                for mode in ("symmetric", "same"):
                    top, bottom, _, _ = conv_padding(size, size, k, s, mode)
                    assert (size + top + bottom - k) // s + 1 == out_size(size, s) == ceil_div(size, s)


def test_unknown_pad_mode():
    with pytest.raises(ValueError, match="pad_mode"):
        conv_padding(8, 8, 3, 1, "reflect")


def test_ragged_sizes_after_a_stride_and_per_image_offsets():
    sizes = RaggedSizes(torch.tensor([[8, 8], [9, 9], [7, 1]]))
    assert sizes.after(5, 1) is sizes  # stride 1 keeps the object and its cached device tensors
    assert sizes.after(3, 2).sizes.tolist() == [[4, 4], [5, 5], [4, 1]]
    assert sizes.padding(3, 2, "same") == [(0, 0), (1, 1), (1, 1)]
    assert sizes.padding(5, 2, "same") == [(1, 1), (2, 2), (2, 2)]
    assert sizes.padding(5, 2, "symmetric") == [(2, 2)] * 3


def test_ragged_device_views_are_cached_and_typed():
    sizes = RaggedSizes(torch.tensor([[3, 2], [1, 4]]))
    on = sizes.on("cpu")
    assert on.dtype == torch.int32 and on.tolist() == [[3, 2], [1, 4]] and sizes.on("cpu") is on
    assert sizes.on("cpu", "counts").tolist() == [6.0, 4.0]
    assert sizes.on("cpu", "padding", 3, 1, "symmetric").tolist() == [[1, 1], [1, 1]]
    mask = sizes.mask(3, 4, "cpu")
    assert mask.shape == (2, 1, 3, 4) and mask.sum().item() == 10
    assert mask[1, 0, 0].tolist() == [True] * 4 and not mask[1, 0, 1:].any()


@pytest.mark.parametrize(
    "valid, err, match",
    [
        ([[64, 48], [0, 10]], ValueError, "positive"),
        ([[65, 48], [10, 10]], ValueError, "exceed"),
        ([[64, 48]], ValueError, "rows"),
        ([[64, 48, 1], [1, 1, 1]], ValueError, r"\(N, 2\)"),
        (torch.tensor([[64.0, 48.0], [1.0, 1.0]]), TypeError, "integer"),
        # bools and complex numbers are no sizes, though True would pass as 1
        ([[64, True], [1, 1]], TypeError, "integers"),
        (torch.ones(2, 2, dtype=torch.bool), TypeError, "integer tensor"),
        (torch.ones(2, 2, dtype=torch.complex64), TypeError, "integer tensor"),
    ],
)
def test_ragged_sizes_from_user_rejects(valid, err, match):
    with pytest.raises(err, match=match):
        RaggedSizes.from_user(valid, (2, 3, 64, 48))


def test_ragged_sizes_from_user_keeps_them_on_the_host():
    sizes = RaggedSizes.from_user(torch.tensor([[64, 48], [7, 1]], dtype=torch.int32), (2, 3, 64, 48))
    assert sizes.sizes.device.type == "cpu" and sizes.sizes.dtype == torch.int64 and len(sizes) == 2


def test_masked_mean_of_a_large_fp16_map_stays_finite():
    """fp16 at 300x300 with activations near 5: the sum (~450000) and the pixel count (90000)
    both pass fp16's 65504, the mean does not."""
    sizes = RaggedSizes(torch.tensor([[300, 300], [200, 150]]))
    x = torch.full((2, 3, 300, 300), 5.0, dtype=torch.float16)
    x[1, :, 200:] = float("nan")  # padding outside image 1's valid corner counts as nothing
    mean = sizes.masked_mean(x)
    assert mean.dtype == torch.float16 and mean.shape == (2, 3, 1, 1)
    assert torch.equal(mean, torch.full_like(mean, 5.0))
