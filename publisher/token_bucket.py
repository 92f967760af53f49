"""The token bucket: how ``docbus replay --rate N`` keeps to N messages per second.

A :class:`TokenBucket` allows bursts of up to a bucket's worth and ``rate`` tokens per second on
average; :mod:`publisher.replay` takes one token per message before each chunk it sends. Pure
bookkeeping plus an ``asyncio`` wait, with an injectable clock for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """At most ``rate`` tokens per second on average, in bursts of up to ``capacity``.

    A take waits until the bucket holds what it asks for (at most a full bucket); a take larger
    than the bucket borrows the rest, and the next taker waits the debt off, so the average rate
    holds. ``clock`` and ``sleep`` are injectable.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._updated = clock()

    def delay(self, tokens: float = 1) -> float:
        """Seconds to wait before ``tokens`` may be taken (0: at once)."""
        self._refill()
        needed = min(tokens, self.capacity)
        return (needed - self._tokens) / self.rate if self._tokens < needed else 0.0

    async def take(self, tokens: float = 1) -> None:
        """Wait until the bucket allows ``tokens`` more, then take them."""
        wait = self.delay(tokens)
        if wait > 0:
            await self._sleep(wait)
            self._refill()
        self._tokens -= tokens

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
