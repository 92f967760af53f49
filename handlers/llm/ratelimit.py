"""Rate limits: keep one process's LLM traffic inside each model's requests and tokens per minute.

One :class:`RateLimiter` is held by the :class:`~handlers.llm.client.LLMClient` of a worker
process and shared by all its handlers. Per model it enforces:

- **RPM and TPM over a sliding window** (60 s by default, like the providers'). Before a call,
  :meth:`RateLimiter.acquire` reserves one request and an estimate of its tokens (prompt
  estimate plus ``max_tokens``, or a running estimate of completions) and waits until both fit;
  :meth:`RateLimiter.release` then replaces the estimate by the usage the server reported (0 for
  a refused request, which providers do not count). A reservation counts while it is in flight
  and for a full window after it *ended*, which is never earlier than the server counted it, so
  the process stays within a limit equal to the server's even with requests of unequal duration.
- **Pauses**: a 429's ``Retry-After`` / ``retry-after-ms`` / ``x-ratelimit-reset-*`` pauses the
  model (:meth:`RateLimiter.pause`); so does a success whose ``x-ratelimit-remaining-*`` says 0,
  which is how other processes' use of a shared quota becomes visible here.
- **Adaptive concurrency** (AIMD): at most ``max_concurrency`` requests in flight; a 429 halves
  the bound, each ``increase_every`` successes add one back.

Sizing across processes: limits are per process. With N worker processes sharing one
deployment's quota, give each ``tokens_per_minute`` = quota / N (and the same for requests),
or leave a margin and rely on the server's 429s and reset headers, which every process honours.
The limiter is pure bookkeeping plus ``asyncio`` waits; its clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from docbus.settings import LLMSettings, Settings

__all__ = ["ModelLimits", "RateLimiter", "Reservation"]


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Requests and tokens per window for one model (``None``: unlimited)."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        if (self.rpm is not None and self.rpm <= 0) or (self.tpm is not None and self.tpm <= 0):
            raise ValueError("rpm and tpm must be > 0 or None")


@dataclass(slots=True, eq=False)
class Reservation:
    """One request's hold on a model's limits, from :meth:`RateLimiter.acquire`."""

    model: str
    tokens: int
    started: float
    ended: float | None = None


@dataclass(slots=True, eq=False)
class _ModelState:
    limits: ModelLimits
    concurrency: int
    in_flight: set[Reservation] = field(default_factory=set)
    in_flight_tokens: int = 0
    done: deque[Reservation] = field(default_factory=deque)  # ordered by end time
    done_tokens: int = 0
    paused_until: float = 0.0
    successes: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class RateLimiter:
    """Per-model RPM/TPM windows, pauses and adaptive concurrency for one process."""

    def __init__(
        self,
        limits: Mapping[str, ModelLimits] | None = None,
        *,
        default: ModelLimits | None = None,
        window: float = 60.0,
        max_concurrency: int = 64,
        increase_every: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or max_concurrency < 1 or increase_every < 1:
            raise ValueError("window must be > 0, max_concurrency and increase_every >= 1")
        self._limits = dict(limits or {})
        self._default = default or ModelLimits()
        self.window = window
        self.max_concurrency = max_concurrency
        self.increase_every = increase_every
        self._clock = clock
        self._models: dict[str, _ModelState] = {}

    @classmethod
    def from_settings(cls, settings: Settings | LLMSettings) -> RateLimiter:
        llm = settings.llm if isinstance(settings, Settings) else settings
        return cls(
            {name: ModelLimits(limit.rpm, limit.tpm) for name, limit in llm.rate_limits.items()},
            default=ModelLimits(llm.requests_per_minute, llm.tokens_per_minute),
            window=llm.rate_window,
            max_concurrency=llm.max_concurrency,
        )

    def limits_for(self, model: str) -> ModelLimits:
        return self._limits.get(model, self._default)

    def _state(self, model: str) -> _ModelState:
        state = self._models.get(model)
        if state is None:
            state = _ModelState(self.limits_for(model), self.max_concurrency)
            self._models[model] = state
        return state

    # -- the two calls around every request ------------------------------------------------------

    async def acquire(self, model: str, tokens: int) -> Reservation:
        """Wait until one more request of ~``tokens`` tokens fits ``model``'s limits; hold it."""
        state = self._state(model)
        if state.limits.tpm is not None:
            tokens = min(tokens, state.limits.tpm)  # larger ones could never start
        tokens = max(0, tokens)
        while True:
            now = self._clock()
            wait = self._wait(state, tokens, now)
            if wait == 0.0:
                reservation = Reservation(model, tokens, now)
                state.in_flight.add(reservation)
                state.in_flight_tokens += tokens
                return reservation
            changed = state.changed
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # (a handler's timeout) landing as ``changed`` is set, and the cancelled caller
            # would take the room and send its request anyway.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(wait) else wait):
                    await changed.wait()

    def release(
        self, reservation: Reservation, *, tokens: int | None = None, rate_limited: bool = False
    ) -> None:
        """End a request: ``tokens`` is what the server counted (None: keep the estimate).

        ``rate_limited`` (a 429) halves the model's concurrency; otherwise a completed request
        counts towards regaining it. Releasing twice is harmless.
        """
        state = self._state(reservation.model)
        if reservation not in state.in_flight:
            return
        now = self._clock()
        state.in_flight.discard(reservation)
        state.in_flight_tokens -= reservation.tokens
        if tokens is not None:
            reservation.tokens = max(0, tokens)
        reservation.ended = now
        state.done.append(reservation)
        state.done_tokens += reservation.tokens
        if rate_limited:
            state.concurrency = max(1, state.concurrency // 2)
            state.successes = 0
        else:
            state.successes += 1
            if state.successes >= self.increase_every:
                state.successes = 0
                state.concurrency = min(self.max_concurrency, state.concurrency + 1)
        state.notify()

    def pause(self, model: str, seconds: float) -> None:
        """Send nothing to ``model`` for ``seconds`` (a longer pause already set wins)."""
        if seconds <= 0:
            return
        state = self._state(model)
        state.paused_until = max(state.paused_until, self._clock() + seconds)
        state.notify()

    # -- figures ---------------------------------------------------------------------------------

    def wait_time(self, model: str, tokens: int) -> float:
        """Seconds until a request of ``tokens`` could start now (``inf``: only after a release)."""
        state = self._state(model)
        if state.limits.tpm is not None:
            tokens = min(tokens, state.limits.tpm)
        return self._wait(state, max(0, tokens), self._clock())

    def concurrency(self, model: str) -> int:
        """The current bound on ``model``'s requests in flight."""
        return self._state(model).concurrency

    def usage(self, model: str) -> tuple[int, int]:
        """(requests, tokens) counted against ``model``'s window now, in flight included."""
        state = self._state(model)
        self._expire(state, self._clock())
        return len(state.in_flight) + len(state.done), state.in_flight_tokens + state.done_tokens

    # -- the decision ----------------------------------------------------------------------------

    def _expire(self, state: _ModelState, now: float) -> None:
        horizon = now - self.window
        while state.done and (state.done[0].ended or 0.0) <= horizon:
            state.done_tokens -= state.done.popleft().tokens

    def _wait(self, state: _ModelState, tokens: int, now: float) -> float:
        """Seconds until the request fits (0: now; ``inf``: until something is released)."""
        self._expire(state, now)
        waits = [max(0.0, state.paused_until - now)]
        if len(state.in_flight) >= state.concurrency:
            waits.append(math.inf)
        limits = state.limits
        if limits.rpm is not None:
            waits.append(self._window_wait(state, 1, limits.rpm, now, by_tokens=False))
        if limits.tpm is not None:
            waits.append(self._window_wait(state, tokens, limits.tpm, now, by_tokens=True))
        return max(waits)

    def _window_wait(
        self, state: _ModelState, amount: int, limit: int, now: float, *, by_tokens: bool
    ) -> float:
        in_flight = state.in_flight_tokens if by_tokens else len(state.in_flight)
        done = state.done_tokens if by_tokens else len(state.done)
        excess = in_flight + done + amount - limit
        if excess <= 0:
            return 0.0
        freed = 0
        for reservation in state.done:
            freed += reservation.tokens if by_tokens else 1
            if freed >= excess:
                return max(0.0, (reservation.ended or now) + self.window - now)
        return math.inf  # only requests still in flight can make room
