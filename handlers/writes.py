"""A delivery's bookkeeping writes, made while its handler goes on: audit rows and checkpoints.

After an LLM call the handler has its answer; the call's audit row (and its cost on the batch)
and, at the end of a step, the step's checkpoint still have to reach MongoDB. In the worker
they are sent at once — exactly when they were sent before — but the handler no longer waits
for their acknowledgement before its next step: :class:`PendingWrites` keeps them, and the
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
import inspect
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["PendingWrites"]

T = TypeVar("T")


class PendingWrites:
    """The writes a delivery has started and not yet seen acknowledged."""

    def __init__(self, *, behind: bool = False) -> None:
        self.behind = behind
        """True: writes are acknowledged later, at :meth:`flush`; False: as they are made."""
        self._tasks: list[asyncio.Task[Any]] = []

    def __len__(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    async def write(self, write: Awaitable[Any]) -> None:
        """Make ``write``: behind (see :meth:`start`) or now, as this delivery writes."""
        if self.behind:
            self.start(write)
        else:
            await write

    def start(self, write: Awaitable[T], *, after_earlier: bool = False) -> asyncio.Task[T]:
        """Send ``write`` now (as a task) and keep it for :meth:`flush`; with
        ``after_earlier``, only once every write started before it is acknowledged (and not at
        all if one of them failed)."""
        earlier = list(self._tasks) if after_earlier else []

        async def ordered() -> T:
            try:
                await asyncio.gather(*earlier)
            except BaseException:
                if inspect.iscoroutine(write):
                    write.close()  # never to be sent: say so, rather than leave it pending
                raise
            return await write

        task = asyncio.ensure_future(ordered() if earlier else write)
        self._tasks.append(task)
        return task

    async def flush(self) -> None:
        """Wait until every write started so far is acknowledged; if any failed, raise the
        first failure once all have finished."""
        failures: list[BaseException] = []
        while self._tasks:
            tasks, self._tasks = self._tasks, []
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            failures += [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]
