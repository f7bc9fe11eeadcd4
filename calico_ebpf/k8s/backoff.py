"""Jittered exponential backoff for retrying API calls.

Example::

    backoff = Backoff(initial=0.5, maximum=30.0)
    delay = backoff.next()      # 0.5 .. 0.75 s, then 1 .. 1.5 s, ... capped at 30 s
    backoff.reset()             # after a success
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that grow by ``factor`` per failure up to ``maximum``.

    Each delay is stretched by a random fraction of up to ``jitter`` (like
    client-go's ``wait.Jitter``), so many agents that lost the API server at
    the same moment do not all come back in lockstep. The stretch may take a
    delay above ``maximum`` by at most that fraction.
    """

    initial: float = 0.8
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _failures: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1 or self.jitter < 0:
            raise ValueError(f"invalid backoff: {self!r}")

    def next(self) -> float:
        """The delay to wait before the next attempt; counts one more failure."""
        base = min(self.initial * self.factor ** self._failures, self.maximum)
        if base < self.maximum:
            self._failures += 1  # stop counting once capped: no overflow on long outages
        return base * (1.0 + self.jitter * self.rng.random())

    def reset(self) -> None:
        """Forget past failures: the next delay is ``initial`` again."""
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failures counted since the last reset (stops growing once the cap is reached)."""
        return self._failures
