"""Test helpers for the broker engine: a fake receiving link and message/wait helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from docbus.local.emulator.entity import MessageEntity
from docbus.local.emulator.message import BrokeredMessage, ReceiveMode


class FakeConsumer:
    """A receiving link as the wire layer implements it: credit, deliver, session_lost."""

    def __init__(
        self,
        credit: int = 0,
        mode: ReceiveMode = ReceiveMode.PEEK_LOCK,
        *,
        session_id: str | None = None,
        on_deliver: Callable[[BrokeredMessage], None] | None = None,
    ) -> None:
        self.receive_mode = mode
        self.session_id = session_id
        self._credit = credit
        self.received: list[BrokeredMessage] = []
        self.lost = 0
        self.on_deliver = on_deliver

    @property
    def credit(self) -> int:
        return self._credit

    def deliver(self, message: BrokeredMessage) -> None:
        assert self._credit > 0, "delivered without credit"
        self._credit -= 1
        self.received.append(message)
        if self.on_deliver is not None:
            self.on_deliver(message)

    def session_lost(self) -> None:
        self.lost += 1

    def grant(self, entity: MessageEntity, n: int) -> None:
        self._credit += n
        entity.credit_available(self)

    def take(self) -> list[BrokeredMessage]:
        """What was delivered since the last take."""
        got, self.received = self.received, []
        return got


def msg(
    body: bytes = b"x",
    *,
    message_id: str | None = None,
    session_id: str | None = None,
    ttl: float | None = None,
    scheduled: float | None = None,
    size: int = 100,
    **facts: object,
) -> BrokeredMessage:
    message = BrokeredMessage(
        body_sections=body,
        message_id=message_id,
        session_id=session_id,
        ttl=ttl,
        scheduled_enqueue_time=scheduled,
        size=size,
    )
    for key, value in facts.items():
        setattr(message, key, value)
    return message


async def wait_until(predicate: Callable[[], object], within: float = 5.0) -> None:
    """Poll until the predicate holds; fail after the deadline."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the deadline")
        await asyncio.sleep(0.01)


class FakeClock:
    """A settable clock for tests that must not wait."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
