"""Environment variables set for a block and restored after it: the fused path reads its choices
(``FASTMBCONV_*``) per call, so the benchmarks' variants and the kernel report force one this way."""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Optional


@contextlib.contextmanager
def environment(pairs: Iterable[tuple[str, Optional[str]]]):
    """Set each (name, value) of ``pairs`` in ``os.environ`` (``None``: unset it) for the block,
    then restore what was there."""
    pairs = tuple(pairs)
    saved = {k: os.environ.get(k) for k, _ in pairs}

    def put(values):
        for k, v in values:
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    put(pairs)
    try:
        yield
    finally:
        put(saved.items())
