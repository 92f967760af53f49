"""Dead-letter capture: drain each subscription's ``$DeadLetterQueue`` into Mongo ``dead_letters``.

The worker records its own dead letters before it dead-letters them (:mod:`subscriber.processing`),
but the broker dead-letters messages too — ``MaxDeliveryCountExceeded`` when a lock keeps expiring
or a worker crashes, ``TTLExpiredException`` when a message outlives its time to live — and those
leave no trace in Mongo. :func:`capture_dead_letters` receives a subscription's dead-letter
sub-queue in peek-lock mode, writes a :class:`~docbus.records.DeadLetterRecord` for each message
(filled from the envelope when the body is one, reason and description from the broker) and
completes the message only once the record is written. Records are keyed
``subscription@message_id`` and written insert-only, so a message the worker already recorded
keeps the worker's richer record, and a DLQ message delivered twice (a lock lost between the write
and the completion) never makes a second one. :func:`sync_dead_letters` does it for every
subscription of a topology (``docbus dlq sync``). Neighbours: :mod:`docbus.cli.dlq`,
:mod:`publisher.replay` (which sends the captured dead letters back).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient

from docbus.records import DeadLetterRecord
from docbus.servicebus import MessagingError
from docbus.store import Store, StoreError
from docbus.topology import Topology
from subscriber import received
from subscriber.receiver import Receiver, open_receiver

__all__ = ["Capture", "capture_dead_letters", "dead_letter_record", "sync_dead_letters"]

logger = logging.getLogger(__name__)

RECEIVE_BATCH = 100
UNKNOWN_REASON = "Unknown"


@dataclass
class Capture:
    """What one drain of one dead-letter queue did."""

    topic: str
    subscription: str
    drained: int = 0
    """Messages completed off the dead-letter queue; each has its Mongo record."""
    recorded: int = 0
    """Of those, how many this drain recorded (the others were recorded before, e.g. by the
    worker that dead-lettered them)."""


def dead_letter_record(
    message: ServiceBusReceivedMessage,
    *,
    topic: str,
    subscription: str,
    handler: str | None = None,
    now: datetime | None = None,
) -> DeadLetterRecord:
    """The Mongo record of a message received from a dead-letter queue: reason and description
    from the broker, document identity from the envelope when the body is one. Never raises,
    whatever the body (see :mod:`subscriber.received`)."""
    return received.dead_letter_record(
        message,
        topic=topic,
        subscription=subscription,
        reason=message.dead_letter_reason or UNKNOWN_REASON,
        description=message.dead_letter_error_description or "",
        handler=handler,
        now=now,
    )


async def capture_dead_letters(
    client: ServiceBusClient,
    store: Store,
    topic: str,
    subscription: str,
    *,
    handler: str | None = None,
    max_wait: float = 1.0,
) -> int:
    """Drain ``topic/subscription``'s dead-letter queue into Mongo; returns how many messages.

    Each message is completed only after its record is written; when the store fails, the
    messages in hand are abandoned (they stay in the queue) and the :class:`StoreError` is
    raised. ``handler`` names the handler of the subscription in the records it creates.
    ``max_wait`` is how long an empty queue is waited on before the drain ends.
    """
    capture = await _drain(client, store, topic, subscription, handler=handler, max_wait=max_wait)
    return capture.drained


async def _drain(
    client: ServiceBusClient,
    store: Store,
    topic: str,
    subscription: str,
    *,
    handler: str | None,
    max_wait: float,
) -> Capture:
    capture = Capture(topic, subscription)
    async with open_receiver(client, topic, subscription, dead_letters=True) as receiver:
        # A peek answers at once; a receive on an empty queue waits ``max_wait`` out.
        while await receiver.peek():
            messages = await receiver.receive(RECEIVE_BATCH, max_wait)
            if not messages:
                break  # the ones there are locked by another capture
            await _capture_messages(receiver, store, messages, capture, handler)
    if capture.drained:
        logger.info(
            "captured %d dead letters of %s (%d new records)",
            capture.drained,
            receiver.where,
            capture.recorded,
        )
    return capture


async def _capture_messages(
    receiver: Receiver,
    store: Store,
    messages: Sequence[ServiceBusReceivedMessage],
    capture: Capture,
    handler: str | None,
) -> None:
    for index, message in enumerate(messages):
        record = dead_letter_record(
            message, topic=capture.topic, subscription=capture.subscription, handler=handler
        )
        try:
            created = await received.record_dead_letter(store, record)
        except StoreError:
            # Never complete what is not recorded: give the rest back and let the caller retry.
            for unrecorded in messages[index:]:
                with contextlib.suppress(MessagingError):  # (its lock expires just the same)
                    await receiver.abandon(unrecorded)
            raise
        try:
            await receiver.complete(message)
        except MessagingError as exc:
            # The lock was lost: the message comes back, finds its record, and is completed then.
            logger.warning("could not complete dead letter %s: %s", record.id, exc)
            continue
        capture.drained += 1
        capture.recorded += int(created)


async def sync_dead_letters(
    client: ServiceBusClient,
    store: Store,
    topology: Topology,
    *,
    topic: str | None = None,
    subscription: str | None = None,
    handlers: Mapping[tuple[str, str], str] | None = None,
    max_wait: float = 1.0,
) -> list[Capture]:
    """Drain the dead-letter queue of every subscription of ``topology`` (or the one named).

    ``handlers`` maps (topic, subscription) to the handler consuming it, for the records.
    Raises :class:`~docbus.topology.TopologyError` for an unknown topic or subscription.
    """
    topics = [topology.topic(topic)] if topic is not None else list(topology.topics)
    captures = []
    for spec in topics:
        subs = (
            [spec.subscription(subscription)]
            if subscription is not None
            else list(spec.subscriptions)
        )
        for sub in subs:
            name = (handlers or {}).get((spec.name, sub.name))
            captures.append(
                await _drain(client, store, spec.name, sub.name, handler=name, max_wait=max_wait)
            )
    return captures
