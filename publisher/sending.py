"""Sending in batches: the one routine that puts messages on a topic, for publish and replay.

:class:`BatchSender` fills a :class:`~azure.servicebus.ServiceBusMessageBatch` on one sender link
and sends it when the next message no longer fits. A batch the broker refuses as too large is
sent again in halves (down to single messages: the broker may count a batch larger than the SDK
did); a transient failure is retried after :func:`docbus.backoff.backoff_delay` up to
:class:`SendRetry`'s attempts; an unusable topic (credentials refused, entity missing) sets the
shared :class:`SendAbort`, and every sender sharing it reports what it still holds as failed
instead of sending. Every item handed in is reported exactly once, to ``on_sent`` or
``on_failed`` with the reason: the caller keeps its own accounting (document ids for
:mod:`publisher.publish`, planned messages for :mod:`publisher.replay`). Sending the same message
twice is safe, since message ids are fixed and the topic drops duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import MessageSizeExceededError

from docbus.backoff import BackoffPolicy, backoff_delay
from docbus.servicebus import (
    MessageTooLarge,
    MessagingAuthError,
    MessagingEntityNotFound,
    MessagingError,
    translated,
)
from docbus.settings import PublisherSettings

__all__ = ["BatchSender", "MessageSender", "SendAbort", "SendRetry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class MessageSender(Protocol):
    """The part of ``azure.servicebus.aio.ServiceBusSender`` the publisher uses."""

    async def create_message_batch(
        self, max_size_in_bytes: int | None = None
    ) -> ServiceBusMessageBatch: ...

    async def send_messages(
        self,
        message: ServiceBusMessageBatch,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
    ) -> None: ...


@dataclass(frozen=True)
class SendRetry:
    """How often a transiently failed send is tried, and the backoff between tries."""

    attempts: int
    backoff: float

    @classmethod
    def of(cls, publisher: PublisherSettings) -> SendRetry:
        """The retry ``DOCBUS_PUBLISHER__SEND_ATTEMPTS`` / ``__SEND_RETRY_BACKOFF`` describe."""
        return cls(publisher.send_attempts, publisher.send_retry_backoff)

    def delay(self, attempt: int, error: MessagingError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if not error.transient or attempt >= self.attempts:
            return None
        if self.backoff <= 0:
            return 0.0
        return backoff_delay(attempt, BackoffPolicy(base=self.backoff, cap=30.0, jitter=0.2))


@dataclass
class SendAbort:
    """Set when the topic itself is unusable; every sender sharing it stops sending."""

    error: MessagingError | None = None


class BatchSender(Generic[T]):
    """Send ``(item, message)`` pairs in batches over one link; report each item once."""

    def __init__(
        self,
        sender: MessageSender,
        *,
        retry: SendRetry,
        on_sent: Callable[[list[T]], Awaitable[None]],
        on_failed: Callable[[list[T], str], Awaitable[None]],
        abort: SendAbort | None = None,
        too_large: str = "the message exceeds the size limit",
    ) -> None:
        self._sender = sender
        self._too_large = too_large
        self._retry = retry
        self._on_sent = on_sent
        self._on_failed = on_failed
        self.abort = abort if abort is not None else SendAbort()
        self._batch: ServiceBusMessageBatch | None = None
        self._items: list[tuple[T, ServiceBusMessage]] = []

    async def add(self, item: T, message: ServiceBusMessage) -> None:
        """Put ``message`` in the current batch, sending the batch first if it is full."""
        if self.abort.error is not None:
            await self._on_failed([item], f"not sent: {self.abort.error}")
            return
        if self._batch is None:
            self._batch = await self._new_batch()
            if self._batch is None:
                await self._on_failed([item], f"not sent: {self.abort.error}")
                return
        try:
            self._batch.add_message(message)
        except MessageSizeExceededError:
            if not self._items:
                await self._on_failed([item], self._too_large)
                return
            await self.flush()
            await self.add(item, message)
            return
        self._items.append((item, message))

    async def flush(self) -> None:
        """Send what the current batch holds (an empty batch is kept for the next message)."""
        if self._batch is None or not self._items:
            return
        batch, items = self._batch, self._items
        self._batch, self._items = None, []
        await self._deliver(batch, items)

    async def _new_batch(self) -> ServiceBusMessageBatch | None:
        try:
            with translated("create message batch"):
                return await self._sender.create_message_batch()
        except MessagingError as exc:
            self.abort.error = self.abort.error or exc
            return None

    async def _deliver(
        self, batch: ServiceBusMessageBatch, items: list[tuple[T, ServiceBusMessage]]
    ) -> None:
        keys = [item for item, _ in items]
        attempt = 0
        while True:
            if self.abort.error is not None:
                await self._on_failed(keys, f"not sent: {self.abort.error}")
                return
            attempt += 1
            try:
                with translated(f"send {len(keys)} messages"):
                    await self._sender.send_messages(batch)
            except (MessagingAuthError, MessagingEntityNotFound) as exc:
                self.abort.error = self.abort.error or exc  # the topic itself is unusable
                await self._on_failed(keys, str(exc))
                return
            except MessageTooLarge as exc:
                await self._split(items, exc)
                return
            except MessagingError as exc:
                delay = self._retry.delay(attempt, exc)
                if delay is None:
                    await self._on_failed(keys, str(exc))
                    return
                logger.warning(
                    "sending %d messages failed (attempt %d of %d), retrying in %.1f s: %s",
                    len(keys), attempt, self._retry.attempts, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay)
            else:
                await self._on_sent(keys)
                return

    async def _split(self, items: list[tuple[T, ServiceBusMessage]], exc: MessageTooLarge) -> None:
        """The broker counted the batch larger than the SDK did: send it in halves."""
        if len(items) == 1:
            reason = f"the broker refused the message as too large: {exc}"
            await self._on_failed([items[0][0]], reason)
            return
        logger.warning("the broker refused %d messages as too large; splitting", len(items))
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            smaller = await self._new_batch()
            if smaller is None:
                await self._on_failed([item for item, _ in part], f"not sent: {self.abort.error}")
                continue
            for _, message in part:
                smaller.add_message(message)
            await self._deliver(smaller, part)
