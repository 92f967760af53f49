"""A delivery's bookkeeping writes, made while its handler goes on: audit rows and checkpoints.

After an LLM call the handler has its answer; the call's audit row (and its cost on the batch)
and, at the end of a step, the step's checkpoint still have to reach MongoDB. In the worker
they are started at once, but the handler no longer waits for their acknowledgement before its
next step, and they may linger a few milliseconds to leave in one command with other
deliveries' writes (``write_linger``, :mod:`docbus.store._group`; a flush that blocks the
handler sends them at once): :class:`PendingWrites` keeps them, and the
worker waits for all of them (:meth:`PendingWrites.flush`) before it stores the result and
settles the message. Under load that takes two round trips per step off every document's path
(``bench/llm_bound.py``). A context made elsewhere (tests, scripts, ``run_handler``) writes
synchronously, so nothing depends on someone remembering to flush.

What a crash can tell stays as it was. A step's checkpoint is written only once the writes made
before it — the audit rows of the calls that produced it — are acknowledged, so a stored
checkpoint never outlives the record of what it cost. A crash while writes are in flight loses
what a crash during a synchronous write lost: the step runs again on the next delivery. A write
that fails fails the delivery (it is retried) rather than being dropped.

One thing changes behind the handler: a synchronous step adopts the output a concurrent delivery
of the same message stored first; behind, the handler has gone on with its own by the time its
checkpoint is refused, so :meth:`PendingWrites.flush` raises :class:`~handlers.errors.Retry` and
the next delivery runs on the stored outputs — the result always agrees with the checkpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable
from typing import Any, TypeVar

from docbus.store import Patience, hurry_writes, patiently

__all__ = ["PendingWrites", "WriteCancelled"]

T = TypeVar("T")


class WriteCancelled(Exception):
    """A pending write was cancelled before it was acknowledged (the loop shutting down)."""


class PendingWrites:
    """The writes a delivery has started and not yet seen acknowledged.

    A failure is kept: every later :meth:`flush` raises it again, so a handler that catches
    the error of an LLM call whose audit row could not be written still cannot store its
    result. Waiting in :meth:`flush` never cancels a write, and several flushes may wait at
    once (a per-document budget check flushes in the middle of a handler).
    """

    def __init__(self, *, behind: bool = False) -> None:
        self.behind = behind
        """True: writes are acknowledged later, at :meth:`flush`; False: as they are made."""
        self._pending: list[asyncio.Task[Any]] = []
        self._failure: BaseException | None = None
        self._patience = Patience()
        self._hurrying = 0  # flushes waiting with hurry=True

    def __len__(self) -> int:
        return len(self._pending)

    async def write(self, write: Awaitable[Any]) -> None:
        """Make ``write``: behind (see :meth:`start`) or now, as this delivery writes."""
        if self.behind:
            self.start(write)
        else:
            await write

    def start(self, write: Awaitable[T], *, after_earlier: bool = False) -> asyncio.Task[T]:
        """Send ``write`` now (as a task) and keep it for :meth:`flush`; with
        ``after_earlier``, only once every write started before it is acknowledged (and not at
        all if one of them, or any write of this delivery so far, failed)."""
        earlier = list(self._pending) if after_earlier else []

        async def ordered() -> T:
            try:
                if earlier:
                    await asyncio.wait(earlier)
                if self._failure is not None:
                    raise self._failure
            except BaseException:
                if inspect.iscoroutine(write):
                    write.close()  # never to be sent: say so, rather than leave it pending
                raise
            return await write

        # nobody waits for it yet: it may wait for company (docbus.store), until a flush does
        with patiently(self._patience):
            task = asyncio.ensure_future(ordered() if after_earlier else write)
        self._pending.append(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._pending.remove(task)
        if task.cancelled():
            failure: BaseException | None = WriteCancelled("a write was cancelled unacknowledged")
        else:
            failure = task.exception()
        if failure is not None and self._failure is None:
            self._failure = failure

    async def flush(self, *, hurry: bool = False) -> None:
        """Wait until every write started so far is acknowledged; raise the delivery's first
        failed write, if any (again on every call). ``hurry``: a handler is waiting, so the
        writes leave now rather than after lingering for company."""
        if hurry:
            # what is on its way leaves now, and what follows it (a checkpoint waiting for the
            # audit rows before it) leaves as it comes
            self._hurrying += 1
            self._patience.patient = False
            hurry_writes()
        try:
            while self._pending:
                # (each task's _settled ran before asyncio.wait's own callback woke us)
                await asyncio.wait(list(self._pending))
        finally:
            if hurry:
                self._hurrying -= 1
                self._patience.patient = self._hurrying == 0
        if self._failure is not None:
            raise self._failure
