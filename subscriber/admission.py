"""Admission: how many messages a worker holds, runs and finishes at once.

Three counts bound a :class:`~subscriber.worker.Worker`, all kept by one :class:`Admission`:

``credits`` (``concurrency + ahead``)
    messages received and not yet through their handler: those running and those waiting for a
    slot. A receive asks for as many as are free (:meth:`Admission.take_credits`), up to all of
    them. By default ``ahead`` follows the handlers' pace (:class:`Pace`): messages received
    ahead cover about :data:`AHEAD_SECONDS` of their work, between the least ``ahead`` and
    ``most_ahead`` — a slow (LLM-bound) handler keeps a few waiting, which other workers can
    still take, a fast one gets receives as large as a plain SDK loop's, and so fewer of them.
``slots`` (``concurrency``)
    handlers running. A received message waits for one, first come first served
    (:meth:`Admission.wait_for_slot`); ``stop()`` gives the waiting ones back at once
    (:meth:`Admission.give_back_waiting`).
``completing`` (``2 * (concurrency + most_ahead)``)
    messages whose handler has returned while their writes are acknowledged, their result
    stored and their completion confirmed: bookkeeping that needs no handler slot, so the slot
    and the credit are handed on as the handler returns (:meth:`Ticket.handler_returned`). Two
    receives' worth: the results of a receive's worth of fast handlers are written in one
    grouped write and completed together while the next receive's worth arrives and runs. With
    room for one receive's worth only, the next receive waited for that write and asked for
    about a third of what it could (36 messages against 116 in ``bench/overhead.py``).

Each message holds a :class:`Ticket` from its receive to its settlement, which says what it holds
and gives all of it back once (:meth:`Ticket.release`). No I/O here: the worker passes in what
to do with a message that is given back. Neighbours: :mod:`subscriber.worker` (receives and
starts messages), :mod:`subscriber.processing` (calls ``handler_returned``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

__all__ = ["AHEAD_SECONDS", "Admission", "Pace", "Ticket"]

AHEAD_SECONDS = 0.1
"""How much of the handlers' work, in seconds at their recent pace, is received ahead."""


PACE_WINDOW = 0.1
"""Seconds of handler returns a pace is measured over: short, so a worker on a backlog of fast
handlers receives ahead at full size within a tenth of a second (a 4,000-message run of no-op
handlers is over in two; with 0.5 s, a quarter of it went in receives of ``concurrency + 2``)."""


class Pace:
    """How many handlers return per second, over the last window of at least ``window`` s."""

    def __init__(
        self, window: float = PACE_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self.per_second = 0.0
        self._since = clock()
        self._count = 0

    def returned(self) -> None:
        self._count += 1
        now = self.clock()
        elapsed = now - self._since
        if elapsed >= self.window:
            self.per_second = self._count / elapsed
            self._since, self._count = now, 0


class Ticket:
    """One message's hold on the admission: a credit from its receive, then a slot, then a
    place among the completing."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.credit = True
        self.slot = False
        self.completing = False

    async def handler_returned(self) -> None:
        """The handler returned: hand its slot and credit on, once a completing place is free."""
        admission = self._admission
        await admission._completing.acquire()
        admission.pace.returned()
        admission.completing += 1
        self.completing = True
        self.slot = self.credit = False
        admission._slots.release()
        admission.release_credits(1)

    def release(self) -> None:
        """Give back whatever the message still holds (at its settlement, or as it is dropped)."""
        admission = self._admission
        if self.slot:
            admission._slots.release()
        if self.credit:
            admission.release_credits(1)
        if self.completing:
            admission._completing.release()
            admission.completing -= 1
        self.slot = self.credit = self.completing = False


class Admission:
    """The credits, slots and completing places of one worker (see the module docstring)."""

    def __init__(
        self,
        concurrency: int,
        ahead: int,
        stopping: asyncio.Event,
        *,
        most_ahead: int | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.least_ahead = ahead
        self.most_ahead = max(ahead, most_ahead if most_ahead is not None else ahead)
        self.pace = pace or Pace()
        self._stopping = stopping
        self._slots = asyncio.Semaphore(concurrency)
        self._held = 0
        self._freed = asyncio.Event()
        self._line: list[asyncio.Event] = []
        self.receivers = 1
        """Receive loops sharing the credits: one receive takes at most its share of them."""
        self._completing = asyncio.Semaphore(2 * (concurrency + self.most_ahead))
        self.completing = 0
        """Messages whose handler has returned and that are not settled yet: settlements
        about to want the link."""
        self._waiting: set[asyncio.Task[None]] = set()
        self._stop_cancelled: set[asyncio.Task[None]] = set()
        self._giving_back = False

    # --- credits --------------------------------------------------------------------------
    @property
    def ahead(self) -> int:
        """Messages received beyond the slots now: ``least_ahead``, or more at a fast pace."""
        if self.most_ahead == self.least_ahead:
            return self.least_ahead
        paced = math.ceil(self.pace.per_second * AHEAD_SECONDS)
        return min(self.most_ahead, max(self.least_ahead, paced))

    @property
    def free_credits(self) -> int:
        return max(0, self.concurrency + self.ahead - self._held)

    async def take_credits(self, most: int | None = None, *, first: bool = False) -> int:
        """Block until one more message may be received, then take every credit free now, at
        most ``most`` (default: this receiver's share of all credits, see ``receivers``); 0
        once ``stopping`` is set first. Receivers waiting for credits are served in turn;
        ``first`` goes ahead of them (parked messages fetched back, holding their locks, must
        not wait behind receives of an empty subscription that hold every credit in turn)."""
        # Always yield once first: settlements woken as the last receive ended take their turn
        # on the link before the next receive claims it (subscriber.receiver.Turns).
        await asyncio.sleep(0)
        mine = asyncio.Event()
        if first:
            self._line.insert(0, mine)
        else:
            self._line.append(mine)
        try:
            while not self._stopping.is_set():
                if self._line[0] is not mine:
                    await self._until(mine)
                    continue
                self._freed.clear()  # (before looking: a release from here on wakes the wait)
                free = self.free_credits
                if free:
                    share = math.ceil((self.concurrency + self.ahead) / max(1, self.receivers))
                    granted = min(free, share if most is None else most)
                    self._held += granted
                    return granted
                await self._until(self._freed)
            return 0
        finally:
            self._line.remove(mine)
            if self._line:
                self._line[0].set()  # the next receiver's turn

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event``, or for stopping."""
        waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def release_credits(self, count: int) -> None:
        """Give back credits: a message's, or those taken for messages a receive did not
        bring."""
        if count:
            self._held -= count
            self._freed.set()

    def ticket(self) -> Ticket:
        """The hold of a message received with one of the credits taken."""
        return Ticket(self)

    # --- slots ----------------------------------------------------------------------------
    async def wait_for_slot(self, ticket: Ticket, give_back: Callable[[], Awaitable[None]]) -> bool:
        """Take a handler slot for ``ticket``'s message, first come first served. False if
        :meth:`give_back_waiting` came first: the message, which no handler has seen, was then
        handed to ``give_back`` (for any worker to take, without counting a delivery)."""
        if self._giving_back:
            await give_back()
            return False
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: nothing to wait for or cancel
            ticket.slot = True
            return True
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await self._slots.acquire()
            ticket.slot = True
            return True
        except asyncio.CancelledError:
            await asyncio.shield(give_back())
            if task in self._stop_cancelled:
                self._stop_cancelled.discard(task)
                if task.uncancel() == 0:
                    return False  # give_back_waiting()'s cancellation, and nobody else's
            raise
        finally:
            self._waiting.discard(task)

    def give_back_waiting(self) -> None:
        """From now on, a message waiting for a slot (or arriving to wait) is given back."""
        self._giving_back = True
        for task in self._waiting - self._stop_cancelled:
            self._stop_cancelled.add(task)
            task.cancel()
