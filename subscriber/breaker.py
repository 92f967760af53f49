"""The circuit breaker: pause a worker's receiving while the LLM endpoint fails systemically.

A delivery that ends in :class:`~handlers.errors.SystemicFailure` (the key refused, the quota
gone, the endpoint unreachable) is parked, and the worker's :class:`CircuitBreaker` opens: every
receiver waits (:meth:`CircuitBreaker.wait_closed`) while the breaker asks the endpoint every
``probe_interval`` whether it serves again (``llm.probe()``), then closes and lets the worker
resume what it parked. Without an LLM to ask, opening stops the worker instead: the parked
messages resume under a worker that has one. :attr:`CircuitBreaker.llm_works` is what the
breaker knows of the endpoint, for :func:`~subscriber.parking.may_resume`. Neighbours:
:mod:`subscriber.worker` opens it on an outcome, :mod:`subscriber.resumption` asks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["CircuitBreaker"]

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """Open while the LLM endpoint fails systemically; probes until it recovers."""

    def __init__(
        self,
        llm: Any,
        *,
        probe_interval: float,
        stopping: asyncio.Event,
        stop: Callable[[], None],
        recovered: Callable[[], Awaitable[Any]],
    ) -> None:
        self.llm = llm
        self.probe_interval = probe_interval
        self._stopping = stopping
        self._stop = stop
        self._recovered = recovered
        self._closed = asyncio.Event()
        self._closed.set()
        self.llm_works: bool | None = None
        """Whether the endpoint serves us: None while not known (no probe, no failure)."""

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def open(self) -> None:
        """A delivery failed systemically: pause and probe (or stop, without an LLM)."""
        self.llm_works = False
        if self.llm is None:
            # Nothing to probe: handlers need an LLM this worker was not given. Stop rather
            # than spin; the parked messages resume under a worker that has one.
            logger.error(
                "a handler needs an LLM but none is configured (set OPENAI_API_KEY, "
                "DOCBUS_LLM__BASE_URL or AZURE_OPENAI_ENDPOINT): stopping; parked messages "
                "resume when a worker with an LLM runs"
            )
            self._stop()
            return
        if self._closed.is_set():
            logger.error(
                "LLM endpoint failing systemically (authentication, quota or unreachable): "
                "pausing consumption and probing every %.0fs",
                self.probe_interval,
            )
            self._closed.clear()
            asyncio.get_running_loop().create_task(self._probe_until_recovered())

    def close(self) -> None:
        if not self._closed.is_set():
            logger.warning("LLM endpoint works again: resuming consumption")
        self._closed.set()

    async def wait_closed(self) -> None:
        """Return once the circuit is closed, or the worker stopping."""
        if self._closed.is_set():
            return
        waiter = asyncio.ensure_future(self._closed.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stop.cancel()

    async def probe(self) -> bool:
        """Ask the LLM endpoint whether it serves us (:meth:`handlers.llm.LLMClient.probe`)."""
        if self.llm is None:
            return False
        try:
            await self.llm.probe()  # raises while the systemic cause persists
        except Exception as exc:
            logger.warning("LLM endpoint still failing: %s", exc)
            self.llm_works = False
            return False
        self.llm_works = True
        return True

    async def _probe_until_recovered(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.probe_interval)
            if self._stopping.is_set() or not self.is_open:
                return  # (an idle check found it working first)
            if await self.probe():
                self.close()
                await self._recovered()
                return
