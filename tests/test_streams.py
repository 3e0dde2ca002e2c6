"""Cached tensors read from several CUDA streams (:mod:`fastmbconv.streams`), on a CPU.

The CUDA side is patched in: CPU tensors count as CUDA ones, streams and events are stand-ins
that log what a real one would be asked. The GPU tests at the end race two real streams."""
import pytest
import torch

import fastmbconv as fm
from fastmbconv import fused, geometry, streams
from fastmbconv.fused.fold import fold_tensors

from .helpers import randomize_bn


class FakeEvent:
    def __init__(self):
        self.recorded_on = None

    def record(self, stream):
        self.recorded_on = stream


class FakeStream:
    def __init__(self, name):
        self.name, self.waited, self.waited_streams = name, [], []

    def wait_event(self, event):
        self.waited.append(event)

    def wait_stream(self, stream):
        self.waited_streams.append(stream)

    def __repr__(self):
        return f"FakeStream({self.name})"


@pytest.fixture
def cuda(monkeypatch):
    """Every tensor is a CUDA one; ``cuda.current`` is the current stream, ``cuda.recorded``
    the (tensor, stream) pairs given to ``record_stream``, ``cuda.capturing`` a capture."""
    class State:
        a, b = FakeStream("a"), FakeStream("b")
        current = a
        capturing = False
        recorded: list = []
    state = State()
    monkeypatch.setattr(streams, "_is_cuda", lambda t: True)
    monkeypatch.setattr(streams, "_current_stream", lambda device: state.current)
    monkeypatch.setattr(streams, "_new_event", FakeEvent)
    monkeypatch.setattr(streams, "_record_stream", lambda t, s: state.recorded.append((t, s)))
    monkeypatch.setattr(streams, "capturing", lambda device: state.capturing)
    return state


def test_another_stream_waits_for_the_writes_once(cuda):
    tensors = [torch.zeros(3), None, torch.ones(2)]
    shared = streams.StreamShared(tensors)
    assert shared.event.recorded_on is cuda.a
    shared.use()  # the making stream: already ordered
    assert cuda.a.waited == [] and cuda.recorded == []
    cuda.current = cuda.b
    shared.use()
    shared.use()
    assert cuda.b.waited == [shared.event]
    assert [(id(t), s) for t, s in cuda.recorded] == [(id(tensors[0]), cuda.b), (id(tensors[2]), cuda.b)]


def test_nothing_is_asked_of_cuda_during_a_capture_or_for_cpu_tensors(cuda, monkeypatch):
    cuda.capturing = True
    inside = streams.StreamShared([torch.zeros(3)])
    assert inside.event is None
    cuda.capturing = False
    shared = streams.StreamShared([torch.zeros(3)])
    cuda.current, cuda.capturing = cuda.b, True
    shared.use()
    assert cuda.b.waited == [] and cuda.recorded == []
    monkeypatch.setattr(streams, "_is_cuda", lambda t: False)
    assert streams.StreamShared([torch.zeros(3)]).event is None


@pytest.fixture
def fresh_views(monkeypatch):
    monkeypatch.setattr(geometry, "_device_views", type(geometry._device_views)())
    monkeypatch.setattr(geometry, "_captured_views", set())


def test_a_ragged_size_upload_is_waited_for_by_other_streams(cuda, fresh_views):
    view = geometry.device_view(((5, 7), (3, 4)), torch.int32, "cpu")
    assert geometry.device_view(((5, 7), (3, 4)), torch.int32, "cpu") is view
    assert cuda.a.waited == []
    cuda.current = cuda.b
    assert geometry.device_view(((5, 7), (3, 4)), torch.int32, "cpu") is view
    assert len(cuda.b.waited) == 1 and cuda.b.waited[0].recorded_on is cuda.a
    assert [(t is view, s) for t, s in cuda.recorded] == [(True, cuda.b)]


def test_a_fold_is_waited_for_by_other_streams_and_again_after_a_refold(cuda):
    torch.manual_seed(0)
    model = randomize_bn(fm.efficientnet_b0(num_classes=10)).eval()
    fold = fused.folded(model)
    assert cuda.a.waited == []
    cuda.current = cuda.b
    assert fused.folded(model) is fold
    assert fused.folded(model) is fold
    assert len(cuda.b.waited) == 1 and cuda.b.waited[0].recorded_on is cuda.a
    made = [t for t in fold_tensors(fold) if t is not None]
    assert len(made) > 100
    assert {id(t) for t, s in cuda.recorded if s is cuda.b} == {id(t) for t in made}
    # a refold on stream b: stream a must now wait for it
    with torch.no_grad():
        model.bn1.bias.add_(1.0)
    refold = fused.folded(model)
    assert refold is not fold and cuda.b.waited[1:] == []
    cuda.current = cuda.a
    assert fused.folded(model) is refold
    assert len(cuda.a.waited) == 1 and cuda.a.waited[0].recorded_on is cuda.b


def test_a_refill_of_a_captured_fold_waits_for_its_readers_and_is_waited_for_again(cuda, monkeypatch):
    from fastmbconv.kernels import _utils

    monkeypatch.setattr(_utils, "cuda_capturing", lambda: cuda.capturing)
    torch.manual_seed(0)
    model = randomize_bn(fm.efficientnet_b0(num_classes=10)).eval()
    fused.folded(model)
    cuda.capturing = True
    seen = fused.folded(model)
    cuda.capturing = False
    cuda.current = cuda.b
    fused.folded(model)
    with torch.no_grad():
        model.bn1.bias.add_(1.0)
    cuda.current = cuda.a
    assert fused.folded(model) is seen  # refilled on stream a, once b's queued forwards have read it
    assert cuda.a.waited_streams == [cuda.b]
    cuda.current = cuda.b
    assert fused.folded(model) is seen
    assert len(cuda.b.waited) == 2 and cuda.b.waited[1].recorded_on is cuda.a


def b0_fp16():
    torch.manual_seed(0)
    return randomize_bn(fm.efficientnet_b0(num_classes=10)).eval().to("cuda", torch.float16)


@pytest.mark.gpu
def test_a_forward_on_a_second_stream_waits_for_the_first_streams_fold():
    """A model's first forward (its fold) on stream a, queued behind a long sleep; at once a
    forward on stream b. Without the wait, b reads the fold before a has written it: memory
    that held NaN just before. (Dense only: a ragged forward's pageable upload may wait for the
    sleep on its own, which would hide the race.)"""
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)
    first, model = b0_fp16(), b0_fp16()  # not in inference mode: an inference tensor's fold is never cached
    with torch.inference_mode(), fm.use_backend("fused"):
        expected = first(x)  # compiles and tunes every kernel: nothing synchronises in the race
        assert fused.folded(first) is fused.folded(first)
        a, b = torch.cuda.Stream(), torch.cuda.Stream()
        torch.cuda.synchronize()
        with torch.cuda.stream(a):
            # blocks of the fold's sizes, freed on stream a: the new fold's tensors reuse them
            poison = [torch.full_like(t, float("nan")) for t in fold_tensors(fused.folded(first)) if t is not None]
            del poison
            torch.cuda._sleep(500_000_000)  # a quarter of a second or more
            model(x)
        with torch.cuda.stream(b):
            out = model(x)
        torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)


def test_a_write_from_another_stream_waits_for_the_making_stream_even_with_no_other_reader(cuda):
    """wait_for_readers orders the writing stream after every stream that touched the tensors,
    the making one included, and never after itself; an empty or CPU-only set asks nothing."""
    shared = streams.StreamShared([torch.zeros(3)])  # made on a, read nowhere else
    cuda.current = cuda.b
    shared.wait_for_readers()
    assert cuda.b.waited_streams == [cuda.a]
    cuda.current = cuda.a
    shared.wait_for_readers()
    assert cuda.a.waited_streams == []
    streams.StreamShared([None]).wait_for_readers()
    assert cuda.a.waited_streams == [] and cuda.b.waited_streams == [cuda.a]
