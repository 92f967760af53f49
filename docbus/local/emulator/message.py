"""The message as the emulator's broker holds it.

A :class:`BrokeredMessage` keeps the sender's bare message (properties, application-properties,
body and footer sections) as the encoded bytes that arrived, so what a receiver gets back is
byte-for-byte what was sent; the few facts the broker routes and filters on are decoded beside
them. The broker (:mod:`docbus.local.emulator.broker`) assigns sequence numbers, locks and delivery
counts; the AMQP layer (:mod:`docbus.local.emulator.wire`) builds these objects from transfers and
encodes them back, adding the header and the ``x-opt-*`` message annotations.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any


class MessageState(enum.IntEnum):
    """``x-opt-message-state`` values, as the SDK's ``ServiceBusMessageState`` reads them."""

    ACTIVE = 0
    DEFERRED = 1
    SCHEDULED = 2


class ReceiveMode(enum.IntEnum):
    PEEK_LOCK = 0
    RECEIVE_AND_DELETE = 1


@dataclass(slots=True)
class BrokeredMessage:
    """One message in one entity (a topic fan-out makes one copy per subscription)."""

    # Encoded sections exactly as the sender wrote them (each with its descriptor), or b"".
    properties_section: bytes = b""
    application_properties_section: bytes = b""
    body_sections: bytes = b""
    footer_section: bytes = b""
    # The sender's message annotations, decoded (keys are plain str); re-encoded on delivery.
    sender_annotations: dict[str, Any] = field(default_factory=dict)

    # Decoded facts the broker routes, filters and de-duplicates on.
    message_id: str | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    to: str | None = None
    reply_to: str | None = None
    reply_to_session_id: str | None = None
    content_type: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)
    ttl: float | None = None  # seconds, from the header; None means the entity default
    scheduled_enqueue_time: float | None = None  # epoch seconds
    partition_key: str | None = None
    size: int = 0  # encoded size in bytes, as counted against size limits

    # Assigned by the broker.
    sequence_number: int = 0
    enqueued_time: float = 0.0  # epoch seconds
    expires_at: float | None = None  # epoch seconds
    delivery_count: int = 0
    state: MessageState = MessageState.ACTIVE
    lock_token: uuid.UUID | None = None
    locked_until: float | None = None  # epoch seconds
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    dead_letter_source: str | None = None

    def copy(self) -> BrokeredMessage:
        """A fresh copy for another entity: same content, no broker state shared by reference."""
        clone = BrokeredMessage(
            properties_section=self.properties_section,
            application_properties_section=self.application_properties_section,
            body_sections=self.body_sections,
            footer_section=self.footer_section,
            sender_annotations=dict(self.sender_annotations),
            message_id=self.message_id,
            session_id=self.session_id,
            correlation_id=self.correlation_id,
            subject=self.subject,
            to=self.to,
            reply_to=self.reply_to,
            reply_to_session_id=self.reply_to_session_id,
            content_type=self.content_type,
            application_properties=dict(self.application_properties),
            ttl=self.ttl,
            scheduled_enqueue_time=self.scheduled_enqueue_time,
            partition_key=self.partition_key,
            size=self.size,
        )
        return clone
