"""Autotuned launches from several threads (DataParallel's replicas, a server's request threads).

A Triton autotuner keeps the arguments of the call it is tuning on itself and clears them when
any of its calls ends, so a cache hit in one thread used to break another thread's tuning with
``TypeError: 'NoneType' object is not a mapping``. :func:`launch` holds a lock per autotuner.
The autotuner here is Triton's own, around a stand-in kernel whose benchmark waits."""
import threading
import time

import torch
import triton

from fastmbconv.kernels._launch import count_launches, launch


class StandInKernel:
    """What the autotuner needs of a JITFunction: its argument names and a run()."""

    arg_names = ["x", "K", "BLOCK"]

    def __init__(self):
        self.fn = lambda: None

    def run(self, *args, **kwargs):
        pass


def make_autotuner(benchmarking: threading.Event, seconds: float = 0.05):
    def slow_bench(kernel_call, quantiles):
        kernel_call()
        benchmarking.set()  # the other thread may go now
        time.sleep(seconds)
        return [1.0, 1.0, 1.0]

    return triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32, 64)], key=["K"],
                           do_bench=slow_bench)(StandInKernel())


def test_a_cache_hit_in_one_thread_does_not_break_tuning_in_another(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors are launchable (on a GPU machine too)
    benchmarking = threading.Event()
    tuned = make_autotuner(benchmarking)
    on = torch.empty(1)
    launch("probe", tuned, (1,), {"x": None, "K": 1}, {}, on)  # K=1 tuned: later calls with it are cache hits
    benchmarking.clear()
    errors = []

    def tune_k2():
        try:
            launch("probe", tuned, (1,), {"x": None, "K": 2}, {}, on)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(("K=2", repr(error)))

    def hit_k1_while_k2_tunes():
        assert benchmarking.wait(10)
        try:
            launch("probe", tuned, (1,), {"x": None, "K": 1}, {}, on)
        except Exception as error:  # noqa: BLE001
            errors.append(("K=1", repr(error)))

    with count_launches() as launches:
        threads = [threading.Thread(target=tune_k2), threading.Thread(target=hit_k1_while_k2_tunes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    assert launches["probe"] == 2 and len(tuned.cache) == 2  # both keys tuned


def test_tuning_one_autotuner_does_not_hold_up_another(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    benchmarking = threading.Event()
    slow, other = make_autotuner(benchmarking, seconds=0.3), make_autotuner(threading.Event())
    on = torch.empty(1)
    launch("probe", other, (1,), {"x": None, "K": 1}, {}, on)
    tuning = threading.Thread(target=launch, args=("probe", slow, (1,), {"x": None, "K": 1}, {}, on))
    tuning.start()
    assert benchmarking.wait(10)
    start = time.monotonic()
    launch("probe", other, (1,), {"x": None, "K": 1}, {}, on)  # a cache hit of another autotuner
    waited = time.monotonic() - start
    tuning.join(30)
    assert waited < 0.3, f"waited {waited:.2f} s for another autotuner's tuning (3 configs x 0.3 s)"
