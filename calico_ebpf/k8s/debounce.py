"""Debouncer: turn a burst of change notifications into one call.

A rolling update touches hundreds of EndpointSlices and Pods within a second;
the agent should recompute and apply the dataplane once for the burst, not
once per event, yet never sit on a change for long while events keep coming.

Example::

    apply = Debouncer(lambda: dataplane.apply(current_state()), quiet=0.1, max_delay=1.0)
    informer = Informer(api_client, "services", lambda event_type, obj: apply.trigger())
    ...
    apply.close()       # runs a pending call first, then joins the thread
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)


class Debouncer:
    """Calls ``callback()`` once ``quiet`` seconds pass without a :meth:`trigger`.

    A burst that never goes quiet is still flushed ``max_delay`` seconds after
    its first trigger. Calls run one at a time on the debouncer's own thread;
    triggers that arrive during a call start the next burst. An exception from
    the callback is logged and the debouncer carries on.
    """

    def __init__(self, callback: Callable[[], object], *, quiet: float = 0.1, max_delay: float = 1.0,
                 name: str = "debouncer"):
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"need 0 <= quiet <= max_delay, got quiet={quiet} max_delay={max_delay}")
        self._callback = callback
        self._quiet = quiet
        self._max_delay = max_delay
        self._cond = threading.Condition()
        self._first: float | None = None  # when the pending burst began; None = nothing pending
        self._last = 0.0
        self._closed = False
        self.calls = 0  # completed callback runs, for tests and metrics
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def trigger(self) -> None:
        """Note a change; the callback runs after the burst (safe from any thread)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("debouncer is closed")
            now = time.monotonic()
            if self._first is None:
                self._first = now
            self._last = now
            self._cond.notify()

    @property
    def pending(self) -> bool:
        """True while a burst waits for its callback."""
        with self._cond:
            return self._first is not None

    def close(self, *, flush: bool = True, timeout: float = 5.0) -> bool:
        """Stop the thread; with ``flush`` a pending burst gets its call first. True if the thread ended."""
        with self._cond:
            self._closed = True
            if not flush:
                self._first = None
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._first is None:
                        if self._closed:
                            return
                        self._cond.wait()
                        continue
                    due = min(self._last + self._quiet, self._first + self._max_delay)
                    wait = due - time.monotonic()
                    if wait <= 0 or self._closed:
                        break
                    self._cond.wait(wait)
                self._first = None
            try:
                self._callback()
            except Exception:
                log.exception("debounced callback failed")
            finally:
                self.calls += 1
