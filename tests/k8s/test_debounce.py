"""Debouncer: bursts become one call, bounded by max_delay."""

from __future__ import annotations

import threading
import time

import pytest
from k8s_helpers import wait_until

from calico_ebpf.k8s import Debouncer

pytestmark = pytest.mark.timeout(20)


class Calls:
    def __init__(self):
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.times.append(time.monotonic())

    def count(self) -> int:
        with self.lock:
            return len(self.times)


def test_a_burst_of_100_triggers_makes_one_call():
    calls = Calls()
    with Debouncer(calls, quiet=0.1, max_delay=2.0) as debouncer:
        for _ in range(100):
            debouncer.trigger()
        last_trigger = time.monotonic()
        wait_until(lambda: calls.count() == 1, what="debounced call")
        time.sleep(0.3)  # well past another quiet period: no second call may follow
        assert calls.count() == 1
        assert calls.times[0] - last_trigger >= 0.1 * 0.95
        assert not debouncer.pending


def test_triggers_from_many_threads_coalesce():
    calls = Calls()
    with Debouncer(calls, quiet=0.2, max_delay=2.0) as debouncer:
        threads = [threading.Thread(target=lambda: [debouncer.trigger() for _ in range(25)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        wait_until(lambda: calls.count() == 1, what="debounced call")
        time.sleep(0.3)
        assert calls.count() == 1


def test_max_delay_bounds_a_burst_that_never_goes_quiet():
    calls = Calls()
    with Debouncer(calls, quiet=0.1, max_delay=0.3) as debouncer:
        first = time.monotonic()
        # Trigger every 20 ms for 0.8 s: never quiet for 0.1 s.
        while time.monotonic() - first < 0.8:
            debouncer.trigger()
            time.sleep(0.02)
        assert 2 <= calls.count() <= 3, calls.times  # one call per 0.3 s, not zero, not one per trigger
        assert 0.3 * 0.95 <= calls.times[0] - first < 0.3 + 0.15


def test_separate_bursts_make_separate_calls():
    calls = Calls()
    with Debouncer(calls, quiet=0.05, max_delay=1.0) as debouncer:
        debouncer.trigger()
        wait_until(lambda: calls.count() == 1, what="first call")
        debouncer.trigger()
        wait_until(lambda: calls.count() == 2, what="second call")


def test_close_flushes_a_pending_burst_or_drops_it():
    calls = Calls()
    debouncer = Debouncer(calls, quiet=10, max_delay=10)
    debouncer.trigger()
    assert debouncer.close(timeout=2)
    assert calls.count() == 1

    dropped = Calls()
    debouncer = Debouncer(dropped, quiet=10, max_delay=10)
    debouncer.trigger()
    assert debouncer.close(flush=False, timeout=2)
    assert dropped.count() == 0
    with pytest.raises(RuntimeError):
        debouncer.trigger()


def test_a_failing_callback_does_not_stop_the_debouncer():
    outcomes = []

    def flaky():
        outcomes.append(len(outcomes))
        if len(outcomes) == 1:
            raise RuntimeError("apply failed")

    with Debouncer(flaky, quiet=0.02, max_delay=1.0) as debouncer:
        debouncer.trigger()
        wait_until(lambda: debouncer.calls == 1, what="first call")
        debouncer.trigger()
        wait_until(lambda: debouncer.calls == 2, what="second call")
    assert outcomes == [0, 1]


def test_rejects_inconsistent_delays():
    with pytest.raises(ValueError):
        Debouncer(lambda: None, quiet=1.0, max_delay=0.5)
