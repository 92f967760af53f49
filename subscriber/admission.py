"""Admission: how many messages a worker holds, runs and finishes at once.

Three counts bound a :class:`~subscriber.worker.Worker`, all kept by one :class:`Admission`:

``credits`` (``concurrency + receive_ahead``)
    messages received and not yet through their handler: those running and those waiting for a
    slot. A receive asks for as many as are free (:meth:`Admission.take_credits`).
``slots`` (``concurrency``)
    handlers running. A received message waits for one, first come first served
    (:meth:`Admission.wait_for_slot`); ``stop()`` gives the waiting ones back at once
    (:meth:`Admission.give_back_waiting`).
``completing`` (``concurrency``)
    messages whose handler has returned while their writes are acknowledged, their result
    stored and their completion confirmed: bookkeeping that needs no handler slot, so the slot
    and the credit are handed on as the handler returns (:meth:`Ticket.handler_returned`).

Each message holds a :class:`Ticket` from its receive to its settlement, which says what it holds
and gives all of it back once (:meth:`Ticket.release`). No I/O here: the worker passes in what
to do with a message that is given back. Neighbours: :mod:`subscriber.worker` (receives and
starts messages), :mod:`subscriber.processing` (calls ``handler_returned``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["Admission", "Ticket"]


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
        self.completing = True
        self.slot = self.credit = False
        admission._slots.release()
        admission._credits.release()

    def release(self) -> None:
        """Give back whatever the message still holds (at its settlement, or as it is dropped)."""
        admission = self._admission
        if self.slot:
            admission._slots.release()
        if self.credit:
            admission._credits.release()
        if self.completing:
            admission._completing.release()
        self.slot = self.credit = self.completing = False


class Admission:
    """The credits, slots and completing places of one worker (see the module docstring)."""

    def __init__(self, concurrency: int, ahead: int, stopping: asyncio.Event) -> None:
        self.concurrency = concurrency
        self._stopping = stopping
        self._slots = asyncio.Semaphore(concurrency)
        self._credits = asyncio.Semaphore(concurrency + ahead)
        self._completing = asyncio.Semaphore(concurrency)
        self._waiting: set[asyncio.Task[None]] = set()
        self._stop_cancelled: set[asyncio.Task[None]] = set()
        self._giving_back = False

    # --- credits --------------------------------------------------------------------------
    async def take_credits(self, most: int | None = None) -> int:
        """Block until one more message may be received, then take whatever else is free now,
        at most ``most`` (default: ``concurrency``); 0 once ``stopping`` is set first."""
        acquire = asyncio.ensure_future(self._credits.acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if acquire not in done:
            acquire.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquire
            if acquire.done() and not acquire.cancelled():
                self._credits.release()
            return 0
        granted = 1
        limit = self.concurrency if most is None else most
        while granted < limit and not self._credits.locked():
            await self._credits.acquire()
            granted += 1
        return granted

    def release_credits(self, count: int) -> None:
        """Give back credits taken for messages a receive did not bring."""
        for _ in range(count):
            self._credits.release()

    def ticket(self) -> Ticket:
        """The hold of a message received with one of the credits taken."""
        return Ticket(self)

    # --- slots ----------------------------------------------------------------------------
    async def wait_for_slot(self, ticket: Ticket, give_back: Callable[[], Awaitable[None]]) -> bool:
        """Take a handler slot for ``ticket``'s message, first come first served. False if
        :meth:`give_back_waiting` came first: the message, which no handler has seen, was then
        handed to ``give_back`` (for any worker to take; as a lock left to expire would, that
        counts a delivery)."""
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
