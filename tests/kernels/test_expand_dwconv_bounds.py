"""expand_dwconv's memory bounds, on the GPU-like tiling (see test_expand_dwconv): reads and
writes NaN-fenced, its scratch fenced, every load and store checked under the interpreter's
memcheck, and valid sizes the host does not check (CUDA) clamped into the map."""
import pytest
import torch

from fastmbconv.geometry import conv_padding
from fastmbconv.kernels import expand_dwconv as module
from fastmbconv.kernels.expand_dwconv import expand_dwconv
from fastmbconv.kernels.testing import FencedOutputs, nan_fenced, nan_fenced_dense

from ..helpers import DEVICE, assert_unchecked_sizes_clamped, interpreter_memcheck
from .test_expand_dwconv import FencedScratch, check, gpu_like, make  # noqa: F401 (gpu_like: a fixture)

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("k,stride,dtype", [(3, 1, torch.float32), (5, 2, torch.float32), (3, 2, torch.float16)],
                         ids=str)
def test_reads_stay_inside_the_input(gpu_like, k, stride, dtype):
    """NaN around the input and past the taps' rows (a read past either turns an output NaN)."""
    x, params = make(2, 13, 20, 7, 9, k, dtype)
    params = (*params[:2], nan_fenced_dense(params[2]), *params[3:])
    check(nan_fenced(x), params, conv_padding(7, 9, k, stride, "same"), stride)


@pytest.mark.parametrize("k,stride,dtype", [(3, 1, torch.float32), (5, 2, torch.float32), (5, 1, torch.bfloat16)],
                         ids=str)
def test_writes_stay_inside_the_output(gpu_like, k, stride, dtype, monkeypatch):
    fence = FencedOutputs()
    monkeypatch.setattr(module, "empty_like_format", fence)
    x, params = make(2, 13, 20, 7, 9, k, dtype)
    check(x, params, conv_padding(7, 9, k, stride, "same"), stride)
    fence.assert_untouched()


@pytest.mark.parametrize("k,stride,pad_mode,dtype", [
    (3, 1, "symmetric", torch.float32), (5, 2, "same", torch.float32), (3, 1, "same", torch.float16),
    (5, 2, "symmetric", torch.bfloat16)], ids=str)
def test_scratch_is_written_before_it_is_read_and_never_overrun(gpu_like, k, stride, pad_mode, dtype, monkeypatch):
    scratch = FencedScratch()
    monkeypatch.setattr(module, "alloc_scratch", scratch)
    x, params = make(2, 12, 20, 7, 9, k, dtype)
    check(x, params, conv_padding(7, 9, k, stride, pad_mode), stride)
    scratch.assert_fences_untouched()


@pytest.mark.parametrize("k,dtype", [(3, torch.float32), (5, torch.float16)], ids=str)
def test_every_access_stays_inside_its_tensors(gpu_like, k, dtype):
    """Every load and store checked against the launch's tensors under the interpreter (a no-op
    on a GPU), the scratch included: the slot past a 15-pixel tile reads its tile's last row,
    never the rows below its halo, which for a program's second slot lie past the scratch (the
    last program here takes four items, so it uses both of its slots)."""
    x, params = make(2, 12, 20, 7, 9, k, dtype)
    with interpreter_memcheck():
        check(x, params, conv_padding(7, 9, k, 1, "same"), 1)


def test_unchecked_valid_sizes_are_clamped_into_the_map(gpu_like, monkeypatch):
    """As in dwconv_bn_act: with the host check off (as for CUDA tensors), a size past the map
    computes as the whole map and a negative one as an empty image, reading nothing outside the
    input (NaN-fenced, every load checked under the interpreter)."""
    monkeypatch.setattr(module, "check_valid_sizes", lambda *args: None)
    x, params = make(2, 8, 20, 7, 9, 3)
    x = nan_fenced(x)
    pad_tl = torch.ones(2, 2, dtype=torch.int32, device=DEVICE)

    def run(sizes):
        with interpreter_memcheck():
            return expand_dwconv(x, *params, (1, 1, 1, 1), 1, pad_tl=pad_tl,
                                 valid_hw=torch.tensor(sizes, dtype=torch.int32, device=DEVICE))

    assert_unchecked_sizes_clamped(run, 7, 9)


def test_columns_past_the_halo_width_read_nothing(monkeypatch):
    """A 13-pixel-wide tile's halo (15 pixels) is stored in rows of 16 slots: the 16th column,
    which no tap reads, takes a row past any image so that no bounds test passes it. Here the
    first tile's halo starts in the top padding (row -1) and the map is taller than the halo's
    48 slots: a smaller row mark (the halo's length, say) would pass the row test while that
    column's load still goes to row -1, before the input (under the interpreter's memcheck)."""
    monkeypatch.setattr(module, "blocks_for", lambda h, w, c_in, c, k, s, dtype: (1, 13, 16, 16))
    x, params = make(1, 8, 16, 48, 15, 3)
    with interpreter_memcheck():
        check(x, params, (1, 1, 1, 1), 1)
