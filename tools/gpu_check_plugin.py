"""pytest plugin of the GPU check stages (loaded with ``-p gpu_check_plugin``; ``tools/`` on
``PYTHONPATH``).

``--gc-sample N`` keeps at most N of the tests that survived ``-m``/``-k``, taken round-robin
across test modules (the first test of each module, then the second, ...), modules with the most
selected tests first (heavily parametrised unit tests tend to be cheap each; a module of a few
whole-model tests comes last), so a dry run on a CPU exercises a few tests of several modules in
seconds, whatever the files are called. The rest are reported as deselected.

``--gc-seconds S`` skips every test that would start more than S seconds after collection
(reason "gpu-check: dry time budget spent"), so a dry run stays short whichever tests the sample
picked; a skip, unlike stopping the session, keeps the exit status 0.

``--gc-stop-at T`` skips every test that would start after the wall-clock time T (seconds
since the epoch, set by the stage from the step's timeout), so pytest ends by itself before the
step is interrupted, and compute-sanitizer around it still prints its summary.

``--gc-interleave`` runs the tests round-robin across modules (largest first, as the sample
takes them), so a step stopped by its time has run some of every module rather than all of the
first few.

``--gc-gpu-first`` runs the tests written for a GPU (marked ``gpu`` themselves, not only the
interpreter tests that tests/conftest.py marks ``gpu`` there) before the rest, so a step cut
short by its cap has run the checks only a GPU can make. ``--gc-last A,B`` runs the tests whose id
holds A after the others, and those holding B after those (the benchmarks: the fused path's
variants, the host-time cases, then ``compile_fused``, so that their cold compiles cannot
crowd out the rows the speed targets read). Both keep the order otherwise.

A benchmark interrupted before its first round (a step stopped by its timeout) is dropped
before pytest-benchmark finishes the session: its empty statistics would raise there, and the
session's JSON and JUnit XML, finished rows included, would be lost.
"""
from __future__ import annotations

import time

import pytest

_START = time.monotonic()


def pytest_addoption(parser):
    parser.addoption("--gc-sample", type=int, default=0, metavar="N",
                     help="gpu-check: keep at most N selected tests, round-robin across modules (0: all)")
    parser.addoption("--gc-seconds", type=float, default=0.0, metavar="S",
                     help="gpu-check: skip tests that would start more than S seconds into the session (0: never)")
    parser.addoption("--gc-stop-at", type=float, default=0.0, metavar="T",
                     help="gpu-check: skip tests that would start after wall-clock time T (epoch seconds; 0: never)")
    parser.addoption("--gc-interleave", action="store_true",
                     help="gpu-check: run the tests round-robin across modules, largest first")
    parser.addoption("--gc-gpu-first", action="store_true",
                     help="gpu-check: run the tests marked gpu by themselves before the others")
    parser.addoption("--gc-last", default="", metavar="A,B",
                     help="gpu-check: run the tests whose id contains A after the others, then those with B")


def written_for_gpu(item) -> bool:
    """Marked ``gpu`` by the test itself, not only by tests/conftest.py for being an interpreter
    test (which marks those ``gpu(interpreter=True)`` on a GPU machine)."""
    return any(not mark.kwargs.get("interpreter") for mark in item.iter_markers("gpu"))


def pytest_collection_finish(session):  # the clock starts at the first test, not at collection
    global _START
    _START = time.monotonic()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    limit = item.config.getoption("gc_seconds")
    if limit and time.monotonic() - _START > limit:
        pytest.skip(f"gpu-check: dry time budget spent ({limit:.0f} s)")
    stop_at = item.config.getoption("gc_stop_at")
    if stop_at and time.time() > stop_at:
        pytest.skip("gpu-check: the step's time is up")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # before pytest-benchmark's own wrapper finishes
def pytest_sessionfinish(session, exitstatus):
    bench = getattr(session.config, "_benchmarksession", None)
    if bench is not None:
        bench.benchmarks[:] = [b for b in bench.benchmarks if getattr(getattr(b, "stats", None), "data", None)]
    yield


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(config, items):
    if config.getoption("gc_gpu_first"):
        items.sort(key=lambda it: not written_for_gpu(it))  # stable
    last = [p for p in config.getoption("gc_last").split(",") if p]
    if last:
        items.sort(key=lambda it: next((i + 1 for i, p in enumerate(last) if p in it.nodeid), 0))
    n = config.getoption("gc_sample")
    if config.getoption("gc_interleave"):
        items[:] = round_robin(items)
    if not n or len(items) <= n:
        return
    keep = {id(it) for it in round_robin(items)[:n]}
    deselected = [it for it in items if id(it) not in keep]
    items[:] = [it for it in items if id(it) in keep]
    config.hook.pytest_deselected(items=deselected)


def round_robin(items: list) -> list:
    """The first test of each module, then the second, ...; modules with the most tests first
    (stable: ties keep collection order)."""
    queues: dict[str, list] = {}
    for item in items:
        queues.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ordered = sorted(queues.values(), key=len, reverse=True)
    return [queue[i] for i in range(max(map(len, ordered), default=0)) for queue in ordered if i < len(queue)]
