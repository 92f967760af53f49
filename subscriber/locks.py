"""Lock renewal: keep a message's (or a session's) peek-lock alive while its handler runs.

LLM calls outlast lock durations, so every message in flight has its lock renewed when half of
the remaining lock time has passed, until the message is settled, the renewal budget
(``max_duration``) is spent, or a renewal fails (the lock is then lost and Service Bus
redelivers the message; the handler's result write stays idempotent). A message gets a timer
when it is registered and a task only once its first renewal is due: most messages are settled
long before, and a task per message (started, put to sleep, cancelled) was 14 µs of the
worker's CPU per message, a timer is about 2. The SDK's
``AutoLockRenewer`` polls once a second and renews only in the last 75 % of whole seconds, which
loses locks shorter than about three seconds; this renewer has no such floor.
:func:`keep_session_lock` does the same for the session an ordered handler's receiver holds.
Renewals go through :class:`~subscriber.receiver.Receiver`. Neighbour: :mod:`subscriber.worker`
registers messages as they arrive (received, or fetched back from deferral), before they wait
for a handler slot.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from azure.servicebus import ServiceBusReceivedMessage

from docbus.servicebus import MessagingError
from subscriber.receiver import Receiver

logger = logging.getLogger(__name__)

_MIN_PAUSE = 0.05


class LockRenewer:
    """Renews locks of registered messages; ``close()`` stops every renewal."""

    def __init__(self, max_duration: float = 3600.0) -> None:
        self.max_duration = max_duration
        self._timers: dict[int, asyncio.TimerHandle] = {}
        """Messages whose first renewal is not due yet, by ``id``."""
        self._tasks: dict[int, asyncio.Task[None]] = {}
        """Messages being renewed, by ``id``."""

    def register(self, receiver: Receiver, message: ServiceBusReceivedMessage) -> None:
        key = id(message)
        if key in self._timers or key in self._tasks:
            return
        locked_until = message.locked_until_utc
        if locked_until is None:
            return  # receive-and-delete or session message: nothing to renew here
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_duration
        delay = _pause(locked_until)
        self._timers[key] = loop.call_later(delay, self._due, receiver, message, deadline)

    def _due(self, receiver: Receiver, message: ServiceBusReceivedMessage, deadline: float) -> None:
        """The first renewal of ``message`` is due: from here on a task keeps its lock."""
        key = id(message)
        if self._timers.pop(key, None) is None:
            return
        task = asyncio.create_task(self._keep(receiver, message, deadline))
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    def release(self, message: ServiceBusReceivedMessage) -> None:
        """Stop renewing (the message was settled)."""
        key = id(message)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def stopped(self, message: ServiceBusReceivedMessage) -> None:
        """Wait until the renewals of ``message`` have ended (settled, released or lost)."""
        timer = self._timers.get(id(message))
        if timer is not None:
            if Receiver.settled(message):  # its renewal would find it settled and end
                self.release(message)
                return
            await asyncio.sleep(max(0.0, timer.when() - asyncio.get_running_loop().time()))
            await asyncio.sleep(0)  # (the timer's callback starts the renewal task)
        task = self._tasks.get(id(message))
        if task is not None:
            await asyncio.wait({task})

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(
        self, receiver: Receiver, message: ServiceBusReceivedMessage, deadline: float
    ) -> None:
        """Renew ``message``'s lock now, then whenever half of what is left has passed."""
        loop = asyncio.get_running_loop()
        while True:
            if receiver.settled(message):
                return  # settled since: its lock is no longer ours to keep
            if loop.time() >= deadline:
                logger.warning(
                    "stopped renewing the lock of %s after %.0fs", message.message_id,
                    self.max_duration,
                )  # fmt: skip
                return
            try:
                await receiver.renew_lock(message)
            except MessagingError as exc:
                if receiver.settled(message):
                    return  # settled while the renewal was on the wire: nothing was lost
                logger.warning("lost the lock of %s: %s", message.message_id, exc)
                return
            locked_until = message.locked_until_utc
            if locked_until is None:
                return
            await asyncio.sleep(_pause(locked_until))


def _pause(locked_until: datetime) -> float:
    """Seconds until half of the lock time left before ``locked_until`` has passed."""
    remaining = (locked_until - datetime.now(UTC)).total_seconds()
    return max(_MIN_PAUSE, remaining / 2)


async def keep_session_lock(receiver: Receiver) -> None:
    """Renew the lock of the session ``receiver`` holds when half of it has passed, until
    cancelled or a renewal fails (the session then goes to whichever receiver locks it next)."""
    while True:
        locked_until = receiver.session_locked_until
        remaining = (locked_until - datetime.now(UTC)).total_seconds() if locked_until else 10.0
        await asyncio.sleep(max(_MIN_PAUSE, remaining / 2))
        try:
            await receiver.renew_session_lock()
        except MessagingError as exc:
            logger.warning("lost the lock of session %s: %s", receiver.session_id, exc)
            return
