"""Turns on one receiver: a receive never overlaps the settlements of messages received earlier.

The azure-servicebus SDK (pyamqp) has no task reading its connection: every call that waits
for an answer reads frames itself, one at a time, with a 0.1 s socket timeout. A settlement waits
for its outcome that way, and so does ``receive_messages`` for its transfers, then for 0.2 s
more after the first one arrives. When both run at once on one receiver they read each other's
frames: the receive finds its messages taken off the wire by a settlement's read and sits out
its own timeouts; settlements queue behind it. In ``bench/llm_bound.py`` (64 handlers) that made
receives of p90 200 ms instead of 5 ms and completions of p90 300 ms, leaving handler slots idle.

:class:`Turns` is a readers-writer lock with the receive as the writer: settlements share a
turn (they do not disturb each other), a receive waits for them to finish and has the link
alone, and settlements arriving meanwhile wait for it — at most the receive's wait, by then
their handler slot is free and the lock renewer still holds their lock. A waiting receive blocks
new settlements, so a stream of them cannot starve it. Lock renewals and deferred fetches go
over the management link and are rare: they do not take turns, so a renewal is never late.
:class:`TakingTurns` puts a receiver's methods behind its turns, so the code that settles
(:mod:`subscriber.processing`, :mod:`subscriber.parking`) need not know. Only the worker's
receive loop uses it: session receivers already run one message at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusReceiver

__all__ = ["TakingTurns", "Turns"]


class Turns:
    """Exclusive turns for receives, shared turns for everything else on the same link."""

    def __init__(self) -> None:
        self._sharing = 0
        self._receiving = False
        self._receive_waiting = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def receiving(self) -> AsyncIterator[None]:
        async with self._changed:
            self._receive_waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._receiving and self._sharing == 0)
            finally:
                self._receive_waiting -= 1
            self._receiving = True
        try:
            yield
        finally:
            async with self._changed:
                self._receiving = False
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def sharing(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._receiving and self._receive_waiting == 0)
            self._sharing += 1
        try:
            yield
        finally:
            async with self._changed:
                self._sharing -= 1
                if self._sharing == 0:
                    self._changed.notify_all()


class TakingTurns:
    """A receiver whose receives and settlements take :class:`Turns`; anything else passes
    through unchanged."""

    def __init__(self, receiver: ServiceBusReceiver, turns: Turns | None = None) -> None:
        self._receiver = receiver
        self.turns = turns or Turns()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._receiver, name)

    async def receive_messages(self, **kwargs: Any) -> list[ServiceBusReceivedMessage]:
        async with self.turns.receiving():
            return await self._receiver.receive_messages(**kwargs)

    async def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        async with self.turns.sharing():
            await self._receiver.complete_message(message)

    async def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        async with self.turns.sharing():
            await self._receiver.abandon_message(message)

    async def defer_message(self, message: ServiceBusReceivedMessage) -> None:
        async with self.turns.sharing():
            await self._receiver.defer_message(message)

    async def dead_letter_message(
        self,
        message: ServiceBusReceivedMessage,
        reason: str | None = None,
        error_description: str | None = None,
    ) -> None:
        async with self.turns.sharing():
            await self._receiver.dead_letter_message(
                message, reason=reason, error_description=error_description
            )
