"""Rate limiting for the offline LLM server: requests and tokens per sliding window.

:class:`QuotaEnforcer` (the server's side of a quota; the worker's client paces itself with
:class:`handlers.llm.RateLimiter`) admits a request only if the requests (RPM) and tokens (TPM)
counted in the last ``window`` seconds, plus this one, stay within the
:class:`~docbus.local.llm_server.config.Limits`; otherwise it says exactly how long until the
request would fit, which the server sends as ``Retry-After``. It also renders OpenAI's
``x-ratelimit-*`` headers. Pure and clock-injected: the server
(:mod:`docbus.local.llm_server.server`) calls it under its lock, unit tests drive it with a fake
clock. Rejected requests are not counted, as with OpenAI.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from docbus.local.llm_server.config import Limits


class SlidingWindow:
    """Amounts recorded in the last ``window`` seconds (an amount leaves ``window`` s after)."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def used(self, now: float, window: float) -> int:
        while self._events and self._events[0][0] <= now - window:
            self._total -= self._events.popleft()[1]
        return self._total

    def add(self, now: float, amount: int) -> None:
        self._events.append((now, amount))
        self._total += amount

    def wait_for(self, amount: int, limit: int, now: float, window: float) -> float:
        """Seconds until ``amount`` more fits under ``limit`` (0 now, ``inf`` never)."""
        if amount > limit:
            return math.inf
        used = self.used(now, window)
        if used + amount <= limit:
            return 0.0
        freed = 0
        for at, size in self._events:
            freed += size
            if used - freed + amount <= limit:
                return max(0.0, at + window - now)
        return math.inf  # pragma: no cover - unreachable when amount <= limit

    def reset_in(self, now: float, window: float) -> float:
        """Seconds until everything counted now has left the window."""
        self.used(now, window)
        return max(0.0, self._events[-1][0] + window - now) if self._events else 0.0


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer: admitted, or which limit refused and for how long."""

    admitted: bool
    limit: str = ""  # "requests" or "tokens" when refused
    retry_after: float = 0.0  # seconds; inf when the request can never fit
    used: int = 0
    limit_value: int = 0


class QuotaEnforcer:
    """RPM and TPM over a sliding window, enforced (a refusal becomes a 429); also remembers
    the peak usage any window saw."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests = SlidingWindow()
        self._tokens = SlidingWindow()
        self.peak_requests = 0
        self.peak_tokens = 0

    def admit(self, tokens: int, limits: Limits) -> Admission:
        """Count a request of ``tokens`` tokens if it fits both limits, else say why not."""
        now = self._clock()
        refusals = []
        if limits.rpm is not None:
            wait = self._requests.wait_for(1, limits.rpm, now, limits.window)
            if wait > 0:
                used = self._requests.used(now, limits.window)
                refusals.append(Admission(False, "requests", wait, used, limits.rpm))
        if limits.tpm is not None:
            wait = self._tokens.wait_for(tokens, limits.tpm, now, limits.window)
            if wait > 0:
                used = self._tokens.used(now, limits.window)
                refusals.append(Admission(False, "tokens", wait, used, limits.tpm))
        if refusals:
            return max(refusals, key=lambda a: a.retry_after)
        self._requests.add(now, 1)
        self._tokens.add(now, tokens)
        self.peak_requests = max(self.peak_requests, self._requests.used(now, limits.window))
        self.peak_tokens = max(self.peak_tokens, self._tokens.used(now, limits.window))
        return Admission(True)

    def usage(self, limits: Limits) -> tuple[int, int]:
        """(requests, tokens) counted in the current window."""
        now = self._clock()
        return self._requests.used(now, limits.window), self._tokens.used(now, limits.window)

    def headers(self, limits: Limits) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the limits that are set."""
        now = self._clock()
        headers: dict[str, str] = {}
        for kind, window, limit in (
            ("requests", self._requests, limits.rpm),
            ("tokens", self._tokens, limits.tpm),
        ):
            if limit is None:
                continue
            used = window.used(now, limits.window)
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(
                window.reset_in(now, limits.window)
            )
        return headers


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it: ``"20ms"``, ``"6.5s"``, ``"1m0s"``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds, 3), 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up, as HTTP wants) and the precise ``-ms`` form."""
    return {
        "retry-after": str(max(0, math.ceil(seconds))),
        "retry-after-ms": str(max(0, math.ceil(seconds * 1000))),
    }
