"""Received messages read safely: body, envelope, properties and dead-letter record of any message.

Whatever a sender puts on a subscription — an AMQP value or sequence body instead of data, bytes
that are not UTF-8, JSON nested 50,000 deep, application properties of AMQP types that BSON
cannot hold (a ulong over 2**63, a UUID, a map with integer keys) — must end as one dead letter
with a reason and one Mongo record, never as an exception. :func:`read_envelope` raises only
:class:`~docbus.envelope.InvalidEnvelope`; :func:`stored_body` and :func:`message_properties`
never raise and return what BSON stores; :func:`dead_letter_record` builds the one
:class:`~docbus.records.DeadLetterRecord` shape that the worker (:mod:`subscriber.processing`)
and the dead-letter capture (:mod:`subscriber.dlq`) both write, through
:func:`record_dead_letter`, which stores a plainer record when the store refuses the full one.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.amqp import AmqpMessageBodyType

from docbus.envelope import Envelope, InvalidEnvelope
from docbus.records import DeadLetterRecord
from docbus.store import Store, StoreError

__all__ = [
    "dead_letter_record",
    "message_properties",
    "read_envelope",
    "record_dead_letter",
    "record_message_id",
    "storable",
    "storable_text",
    "stored_body",
]

logger = logging.getLogger(__name__)

MAX_TRACEBACK = 4000
MAX_ERROR_MESSAGE = 2000
MAX_NESTING = 32
"""Levels of lists and maps kept in a stored property value; deeper ones are kept as text."""
INT64 = range(-(2**63), 2**63)


def message_body(message: ServiceBusReceivedMessage) -> bytes:
    """The bytes of a data-section body (what docbus publishers send); raises
    :class:`InvalidEnvelope` for an AMQP value or sequence body, which holds no envelope."""
    kind = message.body_type
    if kind == AmqpMessageBodyType.VALUE:
        raise InvalidEnvelope(
            f"message body is an AMQP value ({type(message.body).__name__}), not data: a docbus "
            "message's body is its JSON envelope as bytes"
        )
    if kind == AmqpMessageBodyType.SEQUENCE:
        raise InvalidEnvelope(
            "message body is an AMQP sequence, not data: a docbus message's body is its JSON "
            "envelope as bytes"
        )
    body = message.body
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return b"".join(bytes(part) for part in body)


def read_envelope(message: ServiceBusReceivedMessage) -> Envelope:
    """The message's envelope, or :class:`InvalidEnvelope` saying why there is none."""
    return Envelope.from_bytes(message_body(message))


def stored_body(message: ServiceBusReceivedMessage) -> bytes:
    """The body as a dead-letter record keeps it: a data body byte for byte, a value or sequence
    body as its readable text (there are no bytes to keep). Never raises."""
    try:
        return message_body(message)
    except InvalidEnvelope:
        pass
    except Exception as exc:  # a body the SDK cannot even hand over: say so instead
        return f"<unreadable body: {exc!r}>".encode("utf-8", "backslashreplace")
    try:
        body = message.body
        if message.body_type == AmqpMessageBodyType.SEQUENCE:
            body = list(body)
        if isinstance(body, bytes | bytearray):
            return bytes(body)
        text = body if isinstance(body, str) else repr(body)
    except Exception as exc:  # RecursionError on a deeply nested value, among others
        text = f"<unreadable {message.body_type} body: {type(exc).__name__}>"
    return text.encode("utf-8", "backslashreplace")


def storable_text(text: str) -> str:
    """``text`` with what UTF-8 (so BSON) cannot hold — lone surrogates — escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _key(key: object) -> str:
    if isinstance(key, bytes | bytearray):
        key = bytes(key).decode("utf-8", "backslashreplace")
    # BSON keys are C strings; a NUL would end them early.
    return storable_text(str(key)).replace("\x00", "\\x00")


def storable(value: object, depth: int = 0) -> Any:
    """``value`` as BSON can store it: numbers, strings, bytes, dates, lists and maps as they
    are where BSON has them; integers beyond 64 bits, UUIDs, decimals and anything else as their
    text; map keys as text. Never raises."""
    if value is None or isinstance(value, bool | float | datetime):
        return value
    if isinstance(value, int):
        return value if value in INT64 else str(value)
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")  # the SDK hands AMQP strings over as bytes at times
        except UnicodeDecodeError:
            return raw
    if depth < MAX_NESTING:
        if isinstance(value, Mapping):
            return {_key(k): storable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [storable(v, depth + 1) for v in value]
    try:
        return storable_text(str(value))
    except Exception:  # RecursionError from a deeply nested repr
        return f"<{type(value).__name__}>"


def message_properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """The message's application properties as BSON can store them (see :func:`storable`)."""
    try:
        props = message.application_properties or {}
        return {_key(k): storable(v, 1) for k, v in props.items()}
    except Exception as exc:
        return {"<unreadable>": f"{type(exc).__name__}: {exc}"}


def record_message_id(message: ServiceBusReceivedMessage) -> str:
    """The message id a record is keyed on; the sequence number when a sender set none."""
    if message.message_id is not None:
        return storable_text(str(message.message_id))
    return f"seq:{message.sequence_number}"


def dead_letter_record(  # noqa: PLR0913 - keyword-only fields of the dead-letter record it builds
    message: ServiceBusReceivedMessage,
    *,
    topic: str,
    subscription: str,
    reason: str,
    description: str = "",
    handler: str | None = None,
    handler_version: str | None = None,
    envelope: Envelope | None = None,
    error: BaseException | None = None,
    with_traceback: bool = False,
    step: str | None = None,
    delivery_count: int | None = None,
    now: datetime | None = None,
) -> DeadLetterRecord:
    """The Mongo record of a dead-lettered ``message``; every text in it is storable.

    ``envelope`` is read from the body when not given (None if the body holds none).
    """
    if envelope is None:
        try:
            envelope = read_envelope(message)
        except InvalidEnvelope:
            envelope = None
    trace = None
    if error is not None and with_traceback:
        trace = "".join(traceback.format_exception(error))[-MAX_TRACEBACK:]
    enqueued = message.enqueued_time_utc
    return DeadLetterRecord(
        message_id=record_message_id(message),
        subscription=subscription,
        topic=topic,
        reason=storable_text(reason),
        description=storable_text(description),
        error_type=type(error).__name__ if error is not None else None,
        error_message=storable_text(str(error)[:MAX_ERROR_MESSAGE]) if error is not None else None,
        traceback=storable_text(trace) if trace is not None else None,
        handler=handler,
        handler_version=handler_version,
        step=step,
        delivery_count=message.delivery_count if delivery_count is None else delivery_count,
        batch_id=envelope.batch_id if envelope else None,
        doc_id=envelope.doc_id if envelope else None,
        generation=envelope.generation if envelope else None,
        body=stored_body(message),
        properties=message_properties(message),
        enqueued_at=enqueued.astimezone(UTC) if isinstance(enqueued, datetime) else None,
        dead_lettered_at=now or datetime.now(UTC),
    )


async def record_dead_letter(store: Store, record: DeadLetterRecord) -> bool:
    """Store ``record`` (see :meth:`~docbus.store.Store.record_dead_letter`); when the store
    refuses it as it is (a document over 16 MB, a value BSON cannot encode), store it without
    its properties, then also without its body, saying so in its description: a dead letter is
    never left without a record. Raises :class:`StoreError` only when the store is unreachable
    or refuses even the plainest record."""
    plainer: list[tuple[str, dict[str, Any]]] = [
        (f"{len(record.properties)} properties", {"properties": {}}),
        (f"the {len(record.body)}-byte body", {"body": b""}),
    ]
    dropped: list[str] = []
    description = record.description
    while True:
        try:
            return await store.record_dead_letter(record)
        except StoreError as exc:
            if exc.transient or not plainer:
                raise
            refused: BaseException = exc
        except (OverflowError, ValueError, TypeError) as exc:  # refused before reaching pymongo
            if not plainer:
                raise StoreError(f"record dead letter {record.id}: {exc}") from exc
            refused = exc
        what, update = plainer.pop(0)
        dropped.append(what)
        logger.warning("dead letter %s is stored without %s: %s", record.id, what, refused)
        note = f"[not stored: {' and '.join(dropped)}; {type(refused).__name__}: {refused}]"
        update["description"] = storable_text(f"{description} {note}".strip())
        record = record.model_copy(update=update)
