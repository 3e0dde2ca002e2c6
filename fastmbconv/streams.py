"""Cached CUDA tensors that forwards on several streams share.

Two caches hand the same tensors to every forward: the ragged sizes' device copies
(:func:`fastmbconv.geometry.device_view`) and the folded weights (:mod:`fastmbconv.fused.fold`).
Their writes are queued on the stream that made them. A forward on another stream (a server
with a stream per request thread) must not read them before those writes have run, and the
caching allocator must not hand their memory to a new tensor while that stream may still read
them. :class:`StreamShared` does both, once per reading stream: a wait on an event recorded
after the writes, and ``record_stream``. On the making stream and on a stream already ordered,
a use costs a lookup of the current stream.

Nothing happens during a CUDA-graph capture: ``torch.cuda.graph`` synchronises the device before
capturing, and an event recorded outside a capture cannot be waited on inside it.
"""
from __future__ import annotations

import threading
from typing import Iterable, Optional

import torch


def capturing(device: torch.device) -> bool:
    """Whether a CUDA-graph capture is under way on the current CUDA stream, the one a capture of
    work on ``device`` records (``torch.cuda.graph`` and ``torch.cuda.stream`` make the capturing
    stream's device current). Never for a device other than CUDA, which then imports no kernels:
    fastmbconv imports without triton."""
    if device.type != "cuda":
        return False
    from .kernels._utils import cuda_capturing

    return cuda_capturing()


def _is_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def _current_stream(device: torch.device):
    return torch.cuda.current_stream(device)


def _new_event():
    return torch.cuda.Event()


def _record_stream(t: torch.Tensor, stream) -> None:
    t.record_stream(stream)


class StreamShared:
    """The CUDA tensors among ``tensors``, made by work just queued on the current stream, made
    safe to read from any stream: call :meth:`use` before each read."""

    __slots__ = ("tensors", "event", "streams", "_lock")

    def __init__(self, tensors: Iterable[Optional[torch.Tensor]]):
        self.tensors = [t for t in tensors if t is not None and _is_cuda(t)]
        self.event = None
        self.streams: set = set()
        self._lock = threading.Lock()
        if self.tensors and not capturing(self.tensors[0].device):
            stream = _current_stream(self.tensors[0].device)
            self.event = _new_event()
            self.event.record(stream)
            self.streams.add(stream)

    def use(self) -> None:
        """Order the current stream after the tensors' writes, the first time it reads them."""
        if self.event is None or capturing(self.tensors[0].device):
            return
        stream = _current_stream(self.tensors[0].device)
        if stream in self.streams:
            return
        with self._lock:
            if stream in self.streams:
                return
            stream.wait_event(self.event)
            for t in self.tensors:
                _record_stream(t, stream)
            self.streams.add(stream)

    def wait_for_readers(self) -> None:
        """Order the current stream after the work queued so far on every stream that read the
        tensors, before it writes into them (a refold into a fold that a CUDA graph captured)."""
        if self.event is None:
            return
        current = _current_stream(self.tensors[0].device)
        for stream in list(self.streams):
            if stream != current:
                current.wait_stream(stream)
