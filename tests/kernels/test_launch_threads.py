"""Autotuned launches from several threads (DataParallel's replicas, a server's request threads).

A Triton autotuner keeps the arguments of the call it is tuning on itself and clears them when
any of its calls ends, so a cache hit in one thread used to break another thread's tuning with
``TypeError: 'NoneType' object is not a mapping``. :func:`launch` serialises autotuned launches.
The autotuner here is Triton's own, around a stand-in kernel whose benchmark sleeps."""
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
        self.runs = 0

    def run(self, *args, **kwargs):
        self.runs += 1


def slow_bench(kernel_call, quantiles):
    kernel_call()
    time.sleep(0.05)
    return [1.0, 1.0, 1.0]


def test_a_cache_hit_in_one_thread_does_not_break_tuning_in_another():
    stand_in = StandInKernel()
    tuned = triton.autotune(configs=[triton.Config({"BLOCK": b}) for b in (16, 32, 64)], key=["K"],
                            do_bench=slow_bench)(stand_in)
    on = torch.empty(1)  # a CPU tensor: launchable under the interpreter the tests run with

    def go(K, wait):
        time.sleep(wait)
        launch("probe", tuned, (1,), {"x": None, "K": K}, {}, on)

    go(1, 0)  # K=1 tuned: later calls with it are cache hits
    errors = []

    def thread(K, wait):
        try:
            go(K, wait)
        except Exception as error:  # noqa: BLE001 - reported below, with the thread's key
            errors.append((K, repr(error)))

    with count_launches() as launches:
        threads = [threading.Thread(target=thread, args=(2, 0)), threading.Thread(target=thread, args=(1, 0.02))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert launches["probe"] == 2
    assert len(tuned.cache) == 2  # both keys tuned
