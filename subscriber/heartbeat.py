"""Heartbeat: a running worker says every few seconds who it is and how it is doing.

:func:`beat` writes a :class:`~docbus.store.WorkerHeartbeat` — host, pid, handlers,
concurrency, messages in flight, whether the circuit breaker has paused consumption — every
:data:`INTERVAL` seconds while the worker runs, and once more as ``stopped`` when it ends, so
the console's workers page (:mod:`docbus.console`) can show live workers and tell a stopped one
from one that died (silent). A heartbeat that cannot be written is skipped with a debug line:
it must never stop the work. Neighbours: :mod:`subscriber.worker` runs it beside its loops
(:meth:`~subscriber.worker.Worker.vitals` is what it reports), :mod:`docbus.store` keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from docbus.errors import DocbusError
from docbus.store import WorkerHeartbeat
from subscriber.claims import claims_of

if TYPE_CHECKING:
    from subscriber.worker import Worker

__all__ = ["INTERVAL", "Vitals", "beat"]

logger = logging.getLogger(__name__)

INTERVAL = 5.0
"""Seconds between two heartbeats."""
WRITE_TIMEOUT = 2.0
"""Seconds one heartbeat write may take before it is given up."""


class Vitals(NamedTuple):
    """Messages in flight, whether the circuit breaker paused consumption, messages taken."""

    in_flight: int
    circuit_open: bool
    taken: int


async def beat(worker: Worker, interval: float = INTERVAL) -> None:
    """Write the worker's heartbeat every ``interval`` seconds until cancelled, then once
    more as stopped."""
    started = datetime.now(UTC)
    ident = f"{socket.gethostname()}:{os.getpid()}:{started:%Y%m%dT%H%M%S.%f}"

    async def write(state: str) -> None:
        vitals = worker.vitals()
        record = WorkerHeartbeat(
            id=ident,
            host=socket.gethostname(),
            pid=os.getpid(),
            handlers=[h.spec.name for h in worker.handlers],
            claims=claims_of(worker.handlers),
            concurrency=worker.options.concurrency,
            in_flight=vitals.in_flight,
            circuit_open=vitals.circuit_open,
            taken=vitals.taken,
            state="stopped" if state == "stopped" else "running",
            started_at=started,
            interval=interval,
        )
        try:
            # Bounded: a heartbeat must never hold the worker up (an outage, a stop). Not
            # asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as the
            # write completes, and the beat (and the worker's end, which waits for it) went
            # on for ever.
            async with asyncio.timeout(WRITE_TIMEOUT):
                await worker.store.record_heartbeat(record)
        except (DocbusError, TimeoutError) as exc:  # the next beat tells
            logger.debug("heartbeat not written: %s", exc or "timed out")

    try:
        while True:
            await write("running")
            await asyncio.sleep(interval)
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(write("stopped"))
