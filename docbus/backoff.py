"""Backoff: how long to wait before the next attempt of something that failed.

One policy for every retry docbus makes: the worker's retries of a failed delivery
(:mod:`subscriber.settlement`), the LLM client's quick retries inside one call
(:mod:`handlers.llm.client`) and the publisher's resends. A plain function over a small frozen
policy, with no I/O, so callers and their tests agree on every delay. Exponential in the
attempt number, capped, with multiplicative jitter so that work that failed together does not
retry together; a server's ``Retry-After`` wins when it asks for longer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["BackoffPolicy", "backoff_delay"]


@dataclass(frozen=True)
class BackoffPolicy:
    """Delays in seconds: ``base * 2**(attempt-1)``, at most ``cap``, varied by ±``jitter``."""

    base: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError("backoff base and cap must be positive seconds")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter is a fraction between 0 and 1")


def backoff_delay(
    attempt: int,
    policy: BackoffPolicy,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempt``-th failed attempt (1 for the first failure).

    ``retry_after`` (a server's or the handler's own ``Retry(after=...)``) is honoured as a
    floor: we never come back sooner than asked, and never later than the cap unless asked.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    exponential = policy.base * 2.0 ** min(attempt - 1, 62)
    delay = min(policy.cap, exponential)
    if policy.jitter:
        spread = (rng or random).uniform(-policy.jitter, policy.jitter)
        delay = min(policy.cap, delay * (1.0 + spread))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(0.0, delay)
