"""Backoff: exponential growth, jitter bounds, cap, reset."""

from __future__ import annotations

import random

import pytest

from calico_ebpf.k8s import Backoff


def test_delays_double_within_jitter_and_stop_at_the_cap():
    backoff = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next() for _ in range(7)]
    for delay, base in zip(delays, (1, 2, 4, 8, 8, 8, 8)):
        assert base <= delay <= base * 1.5, delays
    assert len(set(delays)) == len(delays)  # jittered: no two the same


def test_reset_starts_over():
    backoff = Backoff(initial=0.5, maximum=60.0, jitter=0.0)
    assert [backoff.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_long_outages_do_not_overflow():
    backoff = Backoff(initial=0.1, maximum=30.0, jitter=0.0)
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 30.0


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"factor": 0.5}, {"jitter": -1}])
def test_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)
