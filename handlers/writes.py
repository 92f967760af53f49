"""A delivery's bookkeeping writes, made while its handler goes on: audit rows and checkpoints.

After an LLM call the handler has its answer; the call's audit row (and its cost on the batch)
and, at the end of a step, the step's checkpoint still have to reach MongoDB. In the worker
they are started at once, but the handler does not wait for their acknowledgement before its
next step, and they may linger a few milliseconds to leave in one command with other
deliveries' writes (``write_linger``, :mod:`docbus.store._group`; a flush that blocks the
handler sends them at once): :class:`PendingWrites` keeps them, and the
worker waits for all of them (:meth:`PendingWrites.flush`) before it stores the result and
settles the message, so no round trip to MongoDB sits between a handler's steps. A context
made elsewhere (tests, scripts, ``run_handler``) writes synchronously, so nothing depends on
someone remembering to flush.

A step's checkpoint is written only once the writes made before it — the audit rows of the
calls that produced it — are acknowledged, so a stored checkpoint never outlives the record of
what it cost. A crash while writes are in flight loses what a crash during a synchronous write
loses: the step runs again on the next delivery. A write that fails fails the delivery (it is
retried) rather than being dropped.

A concurrent delivery of the same message is met in two ways: a synchronous step adopts the
output the other stored first; behind, the handler has gone on with its own by the time its
checkpoint is refused, so :meth:`PendingWrites.flush` raises :class:`~handlers.errors.Retry` and
the next delivery runs on the stored outputs — the result always agrees with the checkpoints.

An outage of the store delays these writes, it does not lose them: :func:`durably` hands a write
that failed transiently (:class:`~docbus.store.StoreUnavailable`) to its store's
:class:`Backlog`, one per store and process, which tries it again with backoff until it is
stored, while whoever waits for it goes on waiting (so a result is still stored only after its
delivery's audit rows). The backlog also knows the checkpoints on their way, so a redelivery in
the same process reuses a step that finished rather than running it again
(:func:`checkpoint_on_its_way`). It holds at most :data:`BACKLOG_LIMIT` writes (warning from
:data:`BACKLOG_WARNING` on); past that, a refused write fails as it would without it. A worker
drains it before it exits (:func:`drain_backlog`); what cannot be stored by then is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from docbus.store import LingerPermit, Store, StoreError, lingering, send_lingering_writes

__all__ = [
    "BACKLOG_LIMIT",
    "BACKLOG_WARNING",
    "Backlog",
    "PendingWrites",
    "WriteCancelled",
    "backlog_of",
    "checkpoint_on_its_way",
    "drain_backlog",
    "durably",
    "is_duplicate",
]

logger = logging.getLogger(__name__)

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
        self._pending: list[asyncio.Future[Any]] = []
        self._failure: BaseException | None = None
        self._permit = LingerPermit()
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
        with lingering(self._permit):
            task = asyncio.ensure_future(ordered() if after_earlier else write)
        self._pending.append(task)
        task.add_done_callback(self._settled)
        return task

    def follow(self, write: asyncio.Future[Any]) -> None:
        """Count ``write``, made by someone else (an earlier delivery whose output this one
        reuses), among this delivery's writes: :meth:`flush` waits for it too."""
        if write.done():
            if write.cancelled() or write.exception() is not None:
                self._settled(write)
            return
        follower = asyncio.ensure_future(asyncio.shield(write))
        self._pending.append(follower)
        follower.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Future[Any]) -> None:
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
            self._permit.granted = False
            send_lingering_writes()
        try:
            while self._pending:
                # (each task's _settled ran before asyncio.wait's own callback woke us)
                await asyncio.wait(list(self._pending))
        finally:
            if hurry:
                self._hurrying -= 1
                self._permit.granted = self._hurrying == 0
        if self._failure is not None:
            raise self._failure


# --- writes an outage refused ----------------------------------------------------------------

BACKLOG_WARNING = 1_000
"""Writes held for retrying past which the backlog warns (once, until it is empty again)."""
BACKLOG_LIMIT = 10_000
"""Writes held at most; a write refused beyond that fails at once (memory stays bounded)."""


def is_duplicate(error: StoreError) -> bool:
    """Whether ``error`` is a duplicate-key refusal: after an attempt whose outcome was unknown
    (a timeout), it means that attempt was stored after all."""
    return "E11000" in str(error)  # MongoDB's code for it; Atlas, Cosmos DB and SecantusDB agree


class Backlog:
    """The writes to one store that an outage refused, each tried again until it is stored.

    ``base`` and ``cap`` bound the pause between two tries of a write (doubling from ``base``).
    """

    def __init__(self, *, base: float = 0.25, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self._retrying: set[asyncio.Task[Any]] = set()
        self._checkpoints: dict[tuple[str, str, str], dict[str, tuple[Any, asyncio.Future[Any]]]]
        self._checkpoints = {}
        self._warned = False
        self._since: float | None = None  # when the backlog last went from empty to not
        self._held = 0  # writes held since then

    def __len__(self) -> int:
        return len(self._retrying)

    async def retry(self, make: Callable[[], Awaitable[T]], what: str, error: StoreError) -> T:
        """Try ``make()`` again until it is stored; ``error`` is what refused it first."""
        if len(self._retrying) >= BACKLOG_LIMIT:
            raise error
        if not self._retrying:
            self._since, self._held = time.monotonic(), 0
            logger.warning(
                "MongoDB refused writes (%s): holding them, retrying until stored", error
            )
        self._held += 1
        task = asyncio.get_running_loop().create_task(self._until_stored(make, what))
        self._retrying.add(task)
        task.add_done_callback(self._done)
        if len(self._retrying) >= BACKLOG_WARNING and not self._warned:
            self._warned = True
            logger.warning(
                "%d writes held while MongoDB is unavailable (at most %d are held; past that "
                "they fail)", len(self._retrying), BACKLOG_LIMIT,
            )  # fmt: skip
        # The write goes on if the one waiting for it stops waiting (a cancelled delivery).
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._retrying.discard(task)
        if task.cancelled():
            return  # given up (drain says how many)
        task.exception()  # retrieved: its waiter, if any, has its own copy
        if not self._retrying and self._since is not None:
            logger.info(
                "MongoDB is back: stored the %d writes held for %.1fs",
                self._held, time.monotonic() - self._since,
            )  # fmt: skip
            self._since, self._warned = None, False

    async def _until_stored(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        pause = self.base
        while True:
            await asyncio.sleep(pause)
            try:
                return await make()
            except StoreError as exc:
                if not exc.transient:
                    logger.error("a held write failed for good (%s): %s", what, exc)
                    raise
                logger.debug("%s: still refused: %s", what, exc)
            pause = min(self.cap, pause * 2)

    def on_its_way(
        self, owner: tuple[str, str, str], key_id: str, output: Any, stored: asyncio.Future[Any]
    ) -> None:
        """Remember a checkpoint of ``owner`` (document, handler, version) sent behind its
        handler, until ``stored`` says it is stored (or never will be)."""
        pending = self._checkpoints.setdefault(owner, {})
        pending[key_id] = (output, stored)

        def forget(_: asyncio.Future[Any]) -> None:
            if pending.get(key_id, (None, None))[1] is stored:
                del pending[key_id]
            if not pending and self._checkpoints.get(owner) is pending:
                del self._checkpoints[owner]

        stored.add_done_callback(forget)

    def checkpoint(
        self, owner: tuple[str, str, str], key_id: str
    ) -> tuple[Any, asyncio.Future[Any]] | None:
        """A checkpoint of ``owner`` on its way to the store: its output and the write."""
        return self._checkpoints.get(owner, {}).get(key_id)

    async def drain(self, within: float) -> int:
        """Wait up to ``within`` seconds for the held writes; give up the rest (their waiters
        see :class:`WriteCancelled`) and return how many were given up."""
        if self._retrying:
            await asyncio.wait(set(self._retrying), timeout=within)
        left = list(self._retrying)
        for task in left:
            task.cancel()
        if left:
            logger.error(
                "%d audit rows or checkpoints could not be stored before exit (MongoDB "
                "unavailable): they are lost; their steps run again on the next delivery",
                len(left),
            )
            await asyncio.gather(*left, return_exceptions=True)
        return len(left)


_BACKLOGS: weakref.WeakKeyDictionary[Store, Backlog] = weakref.WeakKeyDictionary()


def backlog_of(store: Store) -> Backlog:
    """The backlog of ``store`` (one per store object, so one per worker process)."""
    backlog = _BACKLOGS.get(store)
    if backlog is None:
        backlog = _BACKLOGS[store] = Backlog()
    return backlog


async def durably(store: Store, make: Callable[[], Awaitable[T]], what: str) -> T:
    """``await make()``; if the store refuses it transiently, hold it in the store's
    :class:`Backlog` and wait until it is stored. ``make`` is called again for every try, so
    it must be safe to repeat (an insert with its own id, an upsert, an increment whose double
    count after an unknown outcome is acceptable)."""
    try:
        return await make()
    except StoreError as exc:
        if not exc.transient:
            raise
        return await backlog_of(store).retry(make, what, exc)


def checkpoint_on_its_way(
    store: Store, owner: tuple[str, str, str], key_id: str, output: Any, stored: asyncio.Future[Any]
) -> None:
    """See :meth:`Backlog.on_its_way`."""
    backlog_of(store).on_its_way(owner, key_id, output, stored)


async def drain_backlog(store: Store, within: float) -> int:
    """Store what ``store``'s backlog holds, waiting up to ``within`` seconds; returns how
    many writes were given up."""
    backlog = _BACKLOGS.get(store)
    return 0 if backlog is None else await backlog.drain(within)
