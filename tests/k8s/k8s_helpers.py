"""Small helpers for the Kubernetes tests: an event recorder and a bounded wait."""

from __future__ import annotations

import random
import socket
import threading
import time


class Recorder:
    """Collects ``(event_type, key)`` from an informer callback; waits for them with a bound."""

    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []
        self._cond = threading.Condition()

    def __call__(self, event_type: str, obj: dict) -> None:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
        with self._cond:
            self.events.append((event_type, key, obj))
            self._cond.notify_all()

    def seen(self) -> list[tuple[str, str]]:
        with self._cond:
            return [(t, k) for t, k, _ in self.events]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        """The first ``count`` events; AssertionError if fewer arrive within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.events) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} events, got {self.seen_unlocked()}")
                self._cond.wait(remaining)
            return [(t, k) for t, k, _ in self.events[:count]]

    def seen_unlocked(self) -> list[tuple[str, str]]:
        return [(t, k) for t, k, _ in self.events]


def wait_until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    """A free port below the ephemeral range: polling a port in that range before anything
    listens can make the client connect to itself (TCP simultaneous open) and hang."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")
