"""The one send-in-batches routine: every item reported once, through splits, retries, aborts."""

from __future__ import annotations

from typing import Any

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusConnectionError,
)

from publisher.sending import BatchSender, SendAbort, SendRetry


class Batch(ServiceBusMessageBatch):
    def __init__(self, limit: int) -> None:
        super().__init__(max_size_in_bytes=limit)
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.added.append(message)


class Sender:
    """The SDK's sender seam: batches of ``limit`` bytes; ``fail`` decides each send's fate."""

    def __init__(self, limit: int = 4096, fail: Any = None) -> None:
        self.limit, self.fail = limit, fail
        self.sent: list[list[str]] = []

    async def create_message_batch(self, max_size_in_bytes: int | None = None) -> Batch:
        return Batch(self.limit)

    async def send_messages(self, message: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        ids = [str(m.message_id) for m in message.added]
        if self.fail is not None:
            self.fail(ids)
        self.sent.append(ids)


class Outcomes:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failed: dict[str, str] = {}

    async def on_sent(self, items: list[str]) -> None:
        self.sent.extend(items)

    async def on_failed(self, items: list[str], reason: str) -> None:
        for item in items:
            assert item not in self.failed, f"{item} reported twice"
            self.failed[item] = reason


def message(key: str, size: int = 600) -> ServiceBusMessage:
    return ServiceBusMessage("x" * size, message_id=key)


RETRY = SendRetry(attempts=3, backoff=0.001)


async def send_all(sender: Sender, keys: list[str], **kwargs: Any) -> Outcomes:
    outcomes = Outcomes()
    batches: BatchSender[str] = BatchSender(
        sender, retry=RETRY, on_sent=outcomes.on_sent, on_failed=outcomes.on_failed, **kwargs
    )
    for key in keys:
        await batches.add(key, message(key, 5000 if key == "huge" else 600))
    await batches.flush()
    return outcomes


async def test_items_fill_batches_and_each_is_reported_once() -> None:
    sender = Sender()
    keys = [f"d{i}" for i in range(20)]
    outcomes = await send_all(sender, [*keys[:10], "huge", *keys[10:]])
    assert len(sender.sent) > 1  # filled to the limit, then the next batch
    assert sorted(outcomes.sent) == sorted(keys)
    assert list(outcomes.failed) == ["huge"] and "size limit" in outcomes.failed["huge"]


async def test_a_transient_failure_is_retried_then_given_up() -> None:
    calls: list[list[str]] = []

    def flaky(ids: list[str]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise ServiceBusConnectionError(message="connection reset")

    outcomes = await send_all(Sender(fail=flaky), ["a", "b"])
    assert outcomes.sent == ["a", "b"] and len(calls) == 2

    def always(ids: list[str]) -> None:
        raise ServiceBusConnectionError(message="connection reset")

    outcomes = await send_all(Sender(fail=always), ["a", "b"])
    assert sorted(outcomes.failed) == ["a", "b"] and not outcomes.sent


async def test_a_batch_refused_as_too_large_is_sent_in_halves() -> None:
    def stricter(ids: list[str]) -> None:
        if len(ids) > 2:
            raise MessageSizeExceededError(message="too large for the broker")

    sender = Sender(fail=stricter)
    keys = [f"d{i}" for i in range(6)]
    outcomes = await send_all(sender, keys)
    assert sorted(outcomes.sent) == keys and not outcomes.failed
    assert all(len(ids) <= 2 for ids in sender.sent)


async def test_an_unusable_topic_stops_every_sender_sharing_the_abort() -> None:
    def missing(ids: list[str]) -> None:
        raise MessagingEntityNotFoundError(message="topic not found")

    abort = SendAbort()
    first = await send_all(Sender(fail=missing), ["a", "b"], abort=abort)
    assert abort.error is not None and sorted(first.failed) == ["a", "b"]
    healthy = Sender()
    second = await send_all(healthy, ["c"], abort=abort)
    assert healthy.sent == [] and list(second.failed) == ["c"]
    assert "not sent" in second.failed["c"]
