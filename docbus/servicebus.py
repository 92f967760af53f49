"""Service Bus: the client factory, the envelope-to-message mapping, and azure error translation.

:func:`servicebus_client` builds an ``azure.servicebus.aio.ServiceBusClient`` from
:class:`~docbus.settings.Settings` — a connection string (Azure, or an emulator with
``UseDevelopmentEmulator=true``) or a fully qualified namespace with ``DefaultAzureCredential``.
:func:`build_message` turns an :class:`~docbus.envelope.Envelope` into the ``ServiceBusMessage``
every sender (the publisher, replays) sends, and :func:`fits_in_message` asks the SDK's own size
accounting whether it fits a limit (the claim-check decision). Azure exceptions become
:class:`MessagingError` subclasses in one place, :func:`translate_error` (also usable as the
context manager :func:`translated`): the SDK's own ``ServiceBusError`` tree, and the two
``ValueError`` s it raises for a broker-side condition — a link it has shut down (after a
connection loss) and a message settled already; its other ``ValueError`` s are argument mistakes
and pass through. Neighbours: :mod:`publisher.publish` sends, :mod:`subscriber.receiver` (the
worker's one adapter onto a receiver) receives and settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
    SessionLockLostError,
)

from docbus import _amqp_decimal
from docbus.envelope import Envelope, application_properties
from docbus.errors import ConfigurationError, DocbusError
from docbus.settings import ServiceBusSettings, Settings

__all__ = [
    "MessageLockLost",
    "MessageNotFound",
    "MessageTooLarge",
    "MessagingAuthError",
    "MessagingEntityNotFound",
    "MessagingError",
    "MessagingUnavailable",
    "build_message",
    "fits_in_message",
    "probe_endpoint",
    "servicebus_client",
    "servicebus_endpoint",
    "sized_message",
    "topic_senders",
    "translate_error",
    "translated",
]

logger = logging.getLogger(__name__)

# The SDK drops every received message with a decimal property (see docbus._amqp_decimal).
_amqp_decimal.install()

CONTENT_TYPE = "application/json"


class MessagingError(DocbusError):
    """A Service Bus operation failed; ``transient`` says whether trying again may help."""

    transient = False


class MessagingUnavailable(MessagingError):
    """Connection lost, timeout, server busy, or throttled: try again later."""

    transient = True


class MessagingAuthError(MessagingError):
    """The credentials were refused or lack the right (Send/Listen/Manage) on the entity."""


class MessagingEntityNotFound(MessagingError):
    """The topic, subscription or queue does not exist, or is disabled."""


class MessageTooLarge(MessagingError):
    """A message or batch exceeds the entity's size limit."""


class MessageLockLost(MessagingError):
    """The message (or session) lock expired or was lost before settlement."""


class MessageNotFound(MessagingError):
    """No message has that sequence number (a deferred message settled or expired meanwhile)."""


_TRANSLATIONS: tuple[tuple[tuple[type[ServiceBusError], ...], type[MessagingError]], ...] = (
    ((ServiceBusAuthenticationError, ServiceBusAuthorizationError), MessagingAuthError),
    ((MessagingEntityNotFoundError, MessagingEntityDisabledError), MessagingEntityNotFound),
    ((MessageSizeExceededError,), MessageTooLarge),
    ((MessageLockLostError, SessionLockLostError), MessageLockLost),
    ((MessageNotFoundError,), MessageNotFound),
    (
        (
            ServiceBusConnectionError,
            ServiceBusCommunicationError,
            OperationTimeoutError,
            ServiceBusServerBusyError,
            ServiceBusQuotaExceededError,
        ),
        MessagingUnavailable,
    ),
)


_LINK_SHUT_DOWN = "has already been shutdown"
"""How the SDK's ``ValueError`` says a receiver or sender it has shut down cannot be used."""


def _is_sdk_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the SDK telling of a broker-side condition (which
    :func:`translate_error` translates), rather than of a mistake in the call."""
    if isinstance(exc, ServiceBusError | MessageAlreadySettled):
        return True
    return isinstance(exc, ValueError) and _LINK_SHUT_DOWN in str(exc)


def translate_error(exc: Exception, operation: str = "Service Bus") -> MessagingError:
    """The docbus exception for an azure-servicebus exception (raise it ``from exc``): one of
    the ``ServiceBusError`` tree or, see :func:`_is_sdk_error`, a ``ValueError``."""
    if isinstance(exc, MessageAlreadySettled):
        return MessagingError(f"{operation}: the message was settled already")
    if not isinstance(exc, ServiceBusError):  # the SDK shut the link down (a connection lost)
        return MessagingUnavailable(f"{operation}: the link to the broker was lost ({exc})")
    for azure_types, ours in _TRANSLATIONS:
        if isinstance(exc, azure_types):
            return ours(f"{operation}: {exc}")
    error = MessagingError(f"{operation}: {exc}")
    # The SDK marks errors it would retry itself; keep that knowledge.
    error.transient = bool(getattr(exc, "_retryable", False))
    return error


@contextlib.contextmanager
def translated(operation: str = "Service Bus") -> Iterator[None]:
    """Translate azure-servicebus exceptions raised inside the block (works around ``await``)."""
    try:
        yield
    except (ServiceBusError, ValueError) as exc:
        if not _is_sdk_error(exc):
            raise
        raise translate_error(exc, operation) from exc


class _ClientOwningCredential(ServiceBusClient):
    """A client that also closes the credential it was built with."""

    _owned_credential: AsyncTokenCredential

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self._owned_credential.close()


def servicebus_client(
    settings: Settings | ServiceBusSettings,
    *,
    credential: AsyncTokenCredential | None = None,
    retry_total: int | None = None,
) -> ServiceBusClient:
    """A Service Bus client for the configured broker; use it with ``async with``.

    With a namespace and no ``credential``, ``DefaultAzureCredential`` is created (and closed
    with the client). No connection is opened until a sender or receiver is used.
    ``retry_total`` overrides the SDK's retries per operation (3); 0 for one-shot checks.
    """
    sb = settings.servicebus if isinstance(settings, Settings) else settings
    options: dict[str, Any] = {"ssl_context": _ssl_context()}
    if retry_total is not None:
        options["retry_total"] = retry_total
    if sb.connection_string is not None:
        return ServiceBusClient.from_connection_string(
            sb.connection_string.get_secret_value(), **options
        )
    if sb.namespace is None:
        raise ConfigurationError(
            "no Service Bus configured: set DOCBUS_SERVICEBUS__CONNECTION_STRING, or "
            "DOCBUS_SERVICEBUS__NAMESPACE (fully qualified) to use Entra ID"
        )
    if credential is not None:
        return ServiceBusClient(sb.namespace, credential, **options)
    from azure.identity.aio import DefaultAzureCredential

    owned = DefaultAzureCredential()
    client = _ClientOwningCredential(sb.namespace, owned, **options)
    client._owned_credential = owned
    return client


def topic_senders(client: ServiceBusClient) -> Callable[[str], ServiceBusSender]:
    """Given a topic, a sender of ``client`` for links that are busy while open (a publish's).

    Without the SDK's keep-alive task, which pings an idle connection every 30 s but sleeps
    in 1 s steps, and closing a link waits for it to wake: up to a second per link, half a
    second on average, and a publish closes several. A link the broker drops while idle is
    opened again by the SDK on the next send (and a send the drop fails is retried).
    """
    return functools.partial(client.get_topic_sender, keep_alive=0)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The TLS context every client of this process shares: the SDK's own default (certificates
    verified against certifi's bundle, host names checked), built once. Left to the SDK, every
    connection builds one, reading the bundle again (~10-15 ms each, and a worker or a publish
    opens several at its start)."""
    import certifi

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certifi.where())
    return context


_AMQPS_PORT = 5671
_EMULATOR_PORT = 5672


def servicebus_endpoint(settings: Settings | ServiceBusSettings) -> tuple[str, int]:
    """The host and port the SDK connects to for these settings (AMQP over TCP).

    A connection string's ``Endpoint`` names the host (and, for an emulator, maybe a port:
    ``UseDevelopmentEmulator=true`` means plain AMQP, 5672 unless given); Azure is AMQPS, 5671.
    """
    sb = settings.servicebus if isinstance(settings, Settings) else settings
    if sb.connection_string is not None:
        parts: dict[str, str] = {}
        for item in sb.connection_string.get_secret_value().split(";"):
            key, sep, value = item.partition("=")
            if sep:
                parts[key.strip().lower()] = value.strip()
        endpoint = parts.get("endpoint", "")
        emulator = parts.get("usedevelopmentemulator") == "true"
        default_port = _EMULATOR_PORT if emulator else _AMQPS_PORT
    elif sb.namespace is not None:
        endpoint, default_port = sb.namespace, _AMQPS_PORT
    else:
        raise ConfigurationError("no Service Bus configured")
    url = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    port = url.port if url.port is not None and default_port == _EMULATOR_PORT else default_port
    return url.hostname or "", port


async def probe_endpoint(settings: Settings | ServiceBusSettings, within: float = 3.0) -> None:
    """Open (and close) a TCP connection to the broker, or raise :class:`MessagingUnavailable`.

    The SDK retries an unreachable broker for about 12 s before it says so; this answers in
    ``within`` seconds at most, naming where it tried to connect.
    """
    host, port = servicebus_endpoint(settings)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    except (OSError, TimeoutError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise MessagingUnavailable(
            f"cannot connect to Service Bus at {host}:{port} ({why}): start the local stack "
            "with `docbus up`, or check DOCBUS_SERVICEBUS__CONNECTION_STRING / "
            "DOCBUS_SERVICEBUS__NAMESPACE and the network"
        ) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def build_message(envelope: Envelope) -> ServiceBusMessage:
    """The Service Bus message carrying an envelope.

    ``message_id`` is the envelope's :attr:`~docbus.envelope.Envelope.message_id` (the same
    document and generation always get the same id, for duplicate detection), the
    session id is the envelope's (ordered subscriptions), and the application properties are
    those of :func:`~docbus.envelope.application_properties` (subscription routing rules).
    """
    return sized_message(envelope)[0]


def sized_message(envelope: Envelope) -> tuple[ServiceBusMessage, int]:
    """:func:`build_message`, and the message's :func:`message_size_bound` worked out from the
    parts it is built of (the publisher sizes every message: reading them back off the SDK's
    message costs as much as building it)."""
    body = envelope.to_bytes()
    message_id = envelope.message_id
    properties: dict[str | bytes, Any] = {
        key: value for key, value in application_properties(envelope).items()
    }
    texts = (message_id, envelope.topic, CONTENT_TYPE, envelope.session_id)
    message = ServiceBusMessage(
        body,
        message_id=message_id,
        content_type=CONTENT_TYPE,
        subject=envelope.topic,
        session_id=envelope.session_id,
        application_properties=properties,
    )
    return message, _size_bound((body,), texts, properties)


def fits_in_message(
    message: ServiceBusMessage, max_size_in_bytes: int, bound: int | None = None
) -> bool:
    """Whether ``message`` alone fits a batch of ``max_size_in_bytes``, by the SDK's accounting.

    Decided by :func:`message_size_bound` (or ``bound``, :func:`sized_message`'s) when that
    already fits (no encoding: almost every message), else exactly by the SDK's own encoding,
    so the answer is always the exact one.
    """
    if (message_size_bound(message) if bound is None else bound) <= max_size_in_bytes:
        return True
    return encoded_batch_size(message) <= max_size_in_bytes


def encoded_batch_size(message: ServiceBusMessage) -> int:
    """The bytes a batch holding only ``message`` counts, by the SDK's accounting (encodes it)."""
    probe = ServiceBusMessageBatch(max_size_in_bytes=_NO_LIMIT)
    probe.add_message(message)
    return probe.size_in_bytes


_NO_LIMIT = 1 << 40
_ITEM_HEADER = 5
"""The longest AMQP header of a string or binary: constructor byte + 4-byte length (str32)."""
_SCALAR = 9
"""The widest fixed-size AMQP scalar (long, double, timestamp): constructor byte + 8 bytes."""
_CONTAINER_SLACK = 64
"""Header, properties, application-properties and data sections each grow by at most 6 bytes
when their size and count switch from 1-byte to 4-byte forms, and a batch counts 8 instead of 5
bytes per message of 256 bytes or more: 4 x 6 + 3 = 27, rounded up."""


def message_size_bound(message: ServiceBusMessage) -> int:
    """An upper bound of :func:`encoded_batch_size`, from field lengths alone (no encoding).

    The encoded size is a frame of fixed shape plus each variable item: every string and binary
    is counted at its longest header (:data:`_ITEM_HEADER`), every other property value at the
    widest scalar, and the frame is the encoded size of a message with the same fields, all
    empty (:func:`_empty_frame`), plus :data:`_CONTAINER_SLACK`.
    """
    texts = (message.message_id, message.subject, message.content_type, message.session_id)
    return _size_bound(message.body, texts, message.application_properties or {})


def _size_bound(
    body: Iterable[bytes], texts: Iterable[object], properties: Mapping[str | bytes, Any]
) -> int:
    total = _empty_frame() + _CONTAINER_SLACK
    for part in body:
        total += len(part) + _ITEM_HEADER
    for text in texts:
        if text is not None:
            total += len(str(text).encode("utf-8")) + _ITEM_HEADER
    for key, value in properties.items():
        total += _item_size(key) + _item_size(value)
    return total


def _item_size(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8")) + _ITEM_HEADER
    if isinstance(value, bytes):
        return len(value) + _ITEM_HEADER
    return _SCALAR


@functools.cache
def _empty_frame() -> int:
    """The SDK's count for a message whose body, ids and properties are all empty."""
    return encoded_batch_size(
        ServiceBusMessage(
            b"", message_id="", content_type="", subject="", session_id="",
            application_properties={},
        )
    )  # fmt: skip
