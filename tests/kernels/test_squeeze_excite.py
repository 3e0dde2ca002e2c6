"""squeeze_excite_gate against its pure-torch twin; one launch for the whole batch, adding up the
depthwise kernel's per-tile sums in a fixed order."""
import pytest
import torch

from fastmbconv.kernels import squeeze_excite as module
from fastmbconv.kernels._launch import count_launches, record_launches
from fastmbconv.kernels.squeeze_excite import squeeze_excite_gate, squeeze_excite_gate_ref
from fastmbconv.kernels.testing import assert_close_to_ref, nan_fenced_dense

from ..helpers import DEVICE, interpreter_memcheck

pytestmark = pytest.mark.interpreter


def make(N, C, R, wdtype=torch.float32, seed=0, tiles=1):
    g = torch.Generator().manual_seed(seed)
    sums = (torch.randn(N, tiles, C, generator=g) * 30).to(DEVICE)
    sums = sums[:, 0] if tiles == 1 else sums  # (N, C) plain sums are accepted too
    w_r = (torch.randn(R, C, 1, 1, generator=g) / C**0.5).to(DEVICE, wdtype)
    b_r = (torch.randn(R, generator=g) * 0.1).to(DEVICE, wdtype)
    w_e = (torch.randn(C, R, 1, 1, generator=g) / R**0.5).to(DEVICE, wdtype)
    b_e = (torch.randn(C, generator=g) * 0.1).to(DEVICE, wdtype)
    return sums, w_r, b_r, w_e, b_e


def assert_gate_close(gate, args, wdtype, hw, count=None):
    """fp32 weights: the fp32 rule against float64. fp16/bf16 weights: both FCs run at the weights'
    precision (as the reference modules compute them), so the bound is 3x the reference's own
    error at that precision, plus 2e-3."""
    ref = squeeze_excite_gate_ref(*args, count=count, hw=hw, compute_dtype=torch.float64)
    if wdtype == torch.float32:
        assert_close_to_ref(gate, ref, what="gate")
    else:
        lowp = squeeze_excite_gate_ref(*args, count=count, hw=hw, compute_dtype=wdtype).float()
        torch.testing.assert_close(gate, ref.float(), atol=3 * (lowp - ref.float()).abs().max().item() + 2e-3, rtol=0)


def check(args, wdtype, hw, count=None):
    """One launch for the batch, an fp32 (N, C) gate, close to the twin by assert_gate_close."""
    N, C = args[0].shape[0], args[0].shape[-1]
    with count_launches() as launches:
        gate = squeeze_excite_gate(*args, count=count, hw=hw)
    assert launches["squeeze_excite_gate"] == 1, launches
    assert gate.dtype == torch.float32 and gate.shape == (N, C)
    assert_gate_close(gate, args, wdtype, hw, count)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("N,C,R", [(1, 24, 1), (3, 40, 10), (2, 1152, 48), (5, 96, 4)])
def test_matches_ref(N, C, R, wdtype):
    check(make(N, C, R, wdtype), wdtype, hw=49)


@pytest.mark.parametrize("N,T", [(1, 7), (21, 3), (40, 1)])
def test_tile_sums_are_added_up(N, T):
    """(N, T, C) partial sums over several image blocks (16 images per program) and groups."""
    args = make(N, 72, 6, tiles=T, seed=N)
    with count_launches() as launches:
        gate = squeeze_excite_gate(*args, hw=30)
    assert launches["squeeze_excite_gate"] == 1
    assert_close_to_ref(gate, squeeze_excite_gate_ref(*args, hw=30, compute_dtype=torch.float64), what="gate")


def test_per_sample_count():
    args = make(3, 40, 10)
    count = torch.tensor([49, 20, 1], dtype=torch.int32, device=DEVICE)
    gate = squeeze_excite_gate(*args, count=count)
    ref = squeeze_excite_gate_ref(*args, count=count, compute_dtype=torch.float64)
    assert_close_to_ref(gate, ref, what="gate")
    # and the count really is used: a different count gives a different gate
    assert not torch.allclose(gate, squeeze_excite_gate(*args, hw=49))


def test_a_zero_count_divides_by_one():
    """An image with no valid pixel (a count of 0, which nothing checks on CUDA) takes the
    mean as its sums over 1, as the reference clamps it: never a division by zero."""
    args = make(3, 40, 10)
    count = torch.tensor([49, 0, 1], dtype=torch.int32, device=DEVICE)
    gate = squeeze_excite_gate(*args, count=count)
    assert torch.isfinite(gate).all()
    assert_close_to_ref(gate, squeeze_excite_gate_ref(*args, count=count, compute_dtype=torch.float64), what="gate")


@pytest.mark.parametrize("wdtype,N,T,C,R", [
    (torch.float32, 3, 5, 200, 8),  # 128-channel blocks: the reduce FC over two, the gate's 4 over 4 programs
    (torch.float16, 17, 3, 200, 48),  # two blocks of 16 images, fp16 dots
    (torch.float32, 2, 2, 72, 160),  # fp32 past 128 reduced channels: 16-channel steps and gate blocks
], ids=str)
def test_gpu_blocks(monkeypatch, wdtype, N, T, C, R):
    """The GPU's blocks (under the interpreter one block covers every channel): the reduce FC
    summed over several channel blocks, the gate's channel blocks shared among several programs
    (the grid's second axis), tiles summed several a step with a partial last step."""
    monkeypatch.setattr(module, "interpreting", lambda: False)
    args = make(N, C, R, wdtype, tiles=T, seed=C + R)
    with record_launches() as planned:
        squeeze_excite_gate(*args, hw=30)
    (launch,) = planned
    assert launch.constexprs["BLOCK_C"] < C and launch.grid[1] > 1
    assert_gate_close(squeeze_excite_gate(*args, hw=30), args, wdtype, hw=30)


def test_empty_batch():
    args = make(0, 40, 10)
    with count_launches() as launches:
        gate = squeeze_excite_gate(*args, hw=4)
    assert gate.shape == (0, 40) and sum(launches.values()) == 0


@pytest.mark.parametrize("case,exc,words", [
    ("fp16 sums", TypeError, "partials"),
    ("wrong reduce width", ValueError, "w_reduce"),
    ("wrong expand shape", ValueError, "w_expand"),
    ("short bias", ValueError, "b_expand"),
    ("count length", ValueError, "count"),
    ("short count", ValueError, "count"),
    ("zero hw", ValueError, "hw"),
    ("reduced width past the limit", ValueError, "reduced width 513 is larger than this kernel supports"),
])
def test_bad_input(case, exc, words):
    sums, w_r, b_r, w_e, b_e = make(2, 40, 10)
    kw = {"hw": 4}
    if case == "fp16 sums":
        sums = sums.half()
    elif case == "wrong reduce width":
        w_r = w_r[:, :20]
    elif case == "wrong expand shape":
        w_e = w_e[:, :5]
    elif case == "short bias":
        b_e = b_e[:3]
    elif case == "count length":
        kw["count"] = torch.ones(5, device=DEVICE)
    elif case == "short count":  # the kernel would read a count past its end for the last image
        kw["count"] = torch.ones(1, device=DEVICE)
    elif case == "zero hw":
        kw["hw"] = 0
    elif case == "reduced width past the limit":  # its block would not fit a GPU program's shared memory
        w_r, b_r, w_e = w_r.new_zeros(513, 40), b_r.new_zeros(513), w_e.new_zeros(40, 513)
    with pytest.raises(exc, match=words):
        squeeze_excite_gate(sums, w_r, b_r, w_e, b_e, **kw)


@pytest.mark.parametrize("with_count", [False, True])
def test_fp16_weights_on_large_maps_stay_finite(monkeypatch, with_count):
    """The GPU's variant (its block sizes, the dot in the weights' fp16): a 300x300 map's channel
    sums pass fp16's 65504, so they must become means before the dot."""
    from fastmbconv.kernels import squeeze_excite as module

    monkeypatch.setattr(module, "interpreting", lambda: False)
    g = torch.Generator().manual_seed(0)
    N, T, C, R, hw = 2, 4, 32, 8, 300 * 300
    mean = torch.rand(N, C, generator=g) + 0.5
    partials = (mean * hw / T)[:, None, :].expand(N, T, C).contiguous().to(DEVICE)
    w_reduce, w_expand = (torch.randn(R, C, generator=g) * 0.3).half(), (torch.randn(C, R, generator=g) * 0.3).half()
    b_reduce, b_expand = torch.zeros(R), torch.zeros(C)
    args = [t.to(DEVICE) for t in (w_reduce, b_reduce, w_expand, b_expand)]
    kw = dict(count=torch.full((N,), hw, dtype=torch.int32, device=DEVICE)) if with_count else dict(hw=hw)
    got = squeeze_excite_gate(partials, *args, **kw)
    ref = squeeze_excite_gate_ref(partials.double(), *[a.double() for a in args], **kw, compute_dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-2)  # means rounded to fp16 for the dot


def test_every_access_stays_inside_its_tensors():
    """Every input in a NaN-filled buffer and every load and store checked under the
    interpreter's memcheck, with lanes past the N images, T tiles, C channels and R reduced
    channels in every block. A read of a masked lane shows in no gate (a weight row past R
    meets a hidden column set to 0, a bias past C a gate column never stored), so only the
    memcheck sees one; on a GPU it reads past the end of a weight or bias."""
    N, T, C, R = 3, 5, 20, 6
    sums, w_r, b_r, w_e, b_e = make(N, C, R, tiles=T)
    count = torch.tensor([12.0, 7.0, 30.0], device=DEVICE)
    args = (sums, w_r, b_r, w_e, b_e, count)
    with interpreter_memcheck():
        gate = squeeze_excite_gate(*[nan_fenced_dense(t) for t in args])
    assert_close_to_ref(gate, squeeze_excite_gate_ref(*args, compute_dtype=torch.float64), what="gate")
