"""count_launches: the counters the tests use to prove kernels ran. They may nest (a test's
counter around a helper that opens its own) and overlap across threads; each must go on
counting until its own block ends, whatever the others hold."""
import threading

import pytest

from fastmbconv.kernels._launch import _active, count_launches, record_launch


def test_an_outer_counter_keeps_counting_after_an_inner_one_with_the_same_counts_closes():
    with count_launches() as outer:
        with count_launches() as inner:
            record_launch("probe")
        assert inner == outer  # equal, but not the same counter: the inner one must leave, not the outer
        record_launch("after")
    assert outer == {"probe": 1, "after": 1} and inner == {"probe": 1}
    assert not any(c is outer or c is inner for c in _active)


def test_a_counter_closed_by_an_exception_leaves():
    with count_launches() as outer:
        with pytest.raises(RuntimeError), count_launches() as inner:
            record_launch("probe")
            raise RuntimeError("the block failed")
        record_launch("after")
    assert outer == {"probe": 1, "after": 1} and inner == {"probe": 1}
    assert not any(c is outer or c is inner for c in _active)


def test_counters_of_two_threads_that_close_out_of_order():
    """Thread B opens its counter, then A; both see A's launch, then A closes first (its counter
    equal to B's) while B goes on counting."""
    b_open, a_closed = threading.Event(), threading.Event()
    seen, errors = {}, []

    def thread_a():
        assert b_open.wait(10)
        with count_launches() as mine:
            record_launch("both")
        seen["a"] = mine
        a_closed.set()

    def thread_b():
        try:
            with count_launches() as mine:
                b_open.set()
                assert a_closed.wait(10)
                record_launch("b only")
            seen["b"] = mine
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=thread_b), threading.Thread(target=thread_a)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert seen["a"] == {"both": 1} and seen["b"] == {"both": 1, "b only": 1}
