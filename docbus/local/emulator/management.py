"""``$management`` operations of the emulator: the request/response API beside the links.

The SDK sends these as AMQP messages to ``<entity>/$management`` (renew-lock, peek,
receive-by-sequence-number for deferred messages, update-disposition, schedule and cancel, session
lock/state and session listing). :func:`handle_request` maps one decoded request onto broker calls
(:mod:`docbus.local.emulator.broker`) and returns the status, description, error condition and body
that :mod:`docbus.local.emulator.connection` sends back. Status codes follow Service Bus: 200, 204
for "nothing there", and the code of the :class:`~docbus.local.emulator.errors.BrokerError`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from docbus.local.emulator import errors
from docbus.local.emulator.codec import Array, Long, Timestamp
from docbus.local.emulator.message import ReceiveMode
from docbus.local.emulator.wire import SimpleMessage, encode_delivery, parse_message

if TYPE_CHECKING:
    from docbus.local.emulator.server import Emulator

logger = logging.getLogger(__name__)

Result = tuple[int, str, str | None, Any]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return uuid.UUID(str(value))


def _ms(epoch_seconds: float) -> Timestamp:
    return Timestamp(int(epoch_seconds * 1000))


def handle_request(emulator: Emulator, node: str, request: SimpleMessage) -> Result:
    """Run one management request against the entity at ``node`` (an entity path)."""
    operation = _text(request.application_properties.get("operation")) or ""
    raw_body = request.body if isinstance(request.body, dict) else {}
    body = {_text(k): v for k, v in raw_body.items()}
    handler = _OPERATIONS.get(operation)
    if handler is None:
        return (
            501,
            f"The operation '{operation}' is not supported by the docbus emulator.",
            "amqp:not-implemented",
            None,
        )
    try:
        return handler(emulator, node, body)
    except errors.BrokerError as exc:
        return exc.status_code, exc.description, exc.condition, None
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("bad %s request on %s: %s", operation, node, exc)
        return 400, f"Bad request for {operation}: {exc}", "com.microsoft:argument-error", None


def _session_id(body: dict[str | None, Any]) -> str | None:
    return _text(body.get("session-id"))


def _renew_lock(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    expirations = [_ms(entity.renew_lock(_uuid(t))) for t in body["lock-tokens"]]
    return 200, "OK", None, {"expirations": Array(Timestamp, expirations)}


def _peek(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    start = int(body.get("from-sequence-number") or 1)
    count = int(body.get("message-count") or 1)
    messages = entity.peek(start, count, _session_id(body))
    if not messages:
        return 204, "No messages to peek.", None, None
    encoded = [{"message": encode_delivery(m, with_lock=False)} for m in messages]
    return 200, "OK", None, {"messages": encoded}


def _receive_deferred(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    numbers = [int(n) for n in body["sequence-numbers"]]
    mode_value = int(body.get("receiver-settle-mode", 1))
    mode = ReceiveMode.RECEIVE_AND_DELETE if mode_value == 0 else ReceiveMode.PEEK_LOCK
    messages = entity.receive_deferred(numbers, mode, _session_id(body))
    items = []
    for message in messages:
        item: dict[str, Any] = {"message": encode_delivery(message, with_lock=True)}
        if message.lock_token is not None and mode == ReceiveMode.PEEK_LOCK:
            item["lock-token"] = message.lock_token
        items.append(item)
    return 200, "OK", None, {"messages": items}


def _update_disposition(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    status = _text(body.get("disposition-status"))
    for raw in body["lock-tokens"]:
        token = _uuid(raw)
        if status == "completed":
            entity.complete(token)
        elif status == "abandoned":
            entity.abandon(token)
        elif status in ("defered", "deferred"):
            entity.defer(token)
        elif status == "suspended":
            entity.dead_letter(
                token,
                _text(body.get("deadletter-reason")) or None,
                _text(body.get("deadletter-description")) or None,
            )
        else:
            raise errors.ArgumentError(f"Unknown disposition-status '{status}'.")
    return 200, "OK", None, {}


def _schedule(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    target = emulator.broker.resolve_target(node)
    messages = []
    for item in body["messages"]:
        entry = {_text(k): v for k, v in item.items()}
        message = parse_message(bytes(entry["message"]))
        if message.scheduled_enqueue_time is None:
            raise errors.ArgumentError("A scheduled message needs x-opt-scheduled-enqueue-time.")
        messages.append(message)
    numbers = target.schedule(messages)
    return 200, "OK", None, {"sequence-numbers": Array(Long, numbers)}


def _cancel_scheduled(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    target = emulator.broker.resolve_target(node)
    target.cancel_scheduled([int(n) for n in body["sequence-numbers"]])
    return 200, "OK", None, {}


def _renew_session_lock(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    session_id = _session_id(body) or ""
    return 200, "OK", None, {"expiration": _ms(entity.renew_session_lock(session_id))}


def _get_session_state(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    state = entity.get_session_state(_session_id(body) or "")
    return 200, "OK", None, {"session-state": state}


def _set_session_state(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    state = body.get("session-state")
    entity.set_session_state(_session_id(body) or "", None if state is None else bytes(state))
    return 200, "OK", None, {}


def _list_sessions(emulator: Emulator, node: str, body: dict[str | None, Any]) -> Result:
    entity = emulator.broker.resolve_source(node)
    skip = int(body.get("skip") or 0)
    top = int(body.get("top") or 100)
    sessions = entity.list_sessions(skip, top)
    if not sessions:
        return 204, "No sessions.", None, None
    return 200, "OK", None, {"skip": skip + len(sessions), "sessions-ids": sessions}


_OPERATIONS: dict[str, Callable[[Emulator, str, dict[str | None, Any]], Result]] = {
    "com.microsoft:renew-lock": _renew_lock,
    "com.microsoft:peek-message": _peek,
    "com.microsoft:receive-by-sequence-number": _receive_deferred,
    "com.microsoft:update-disposition": _update_disposition,
    "com.microsoft:schedule-message": _schedule,
    "com.microsoft:cancel-scheduled-message": _cancel_scheduled,
    "com.microsoft:renew-session-lock": _renew_session_lock,
    "com.microsoft:get-session-state": _get_session_state,
    "com.microsoft:set-session-state": _set_session_state,
    "com.microsoft:get-message-sessions": _list_sessions,
}
