"""The envelope: the message contract between the publisher and the workers.

An :class:`Envelope` is the JSON body of every Service Bus message docbus sends. It carries a
document's content inline, or a :class:`ClaimCheck` pointing at the payload in Mongo when the
document is larger than the broker's message limit; the document's identity (``doc_id``,
``batch_id``), where it came from (:class:`Source`), its trace context and its replay lineage.
:func:`message_id` derives the Service Bus message id from batch, document and replay generation,
so the broker's duplicate detection and the store's idempotent writes (:mod:`docbus.store`) agree
on what "the same message" is. Workers read bodies back with :meth:`Envelope.from_bytes`, which
raises :class:`InvalidEnvelope` for anything they must dead-letter at once.

Compatibility rule: adding an optional field keeps ``schema_version`` 1 (readers ignore unknown
fields); removing, renaming or changing the meaning of a field bumps it, and a worker refuses
versions it does not know.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from docbus.errors import DocbusError
from docbus.topology import BROADCAST, ROUTE_PROPERTY

__all__ = [
    "MAX_MESSAGE_ID_LENGTH",
    "SCHEMA_VERSION",
    "ClaimCheck",
    "Envelope",
    "InvalidEnvelope",
    "Source",
    "application_properties",
    "claim_check_for",
    "content_doc_id",
    "message_id",
    "new_batch_id",
]

SCHEMA_VERSION: Final = 1
"""The envelope schema this code writes and the only one it reads."""

MAX_MESSAGE_ID_LENGTH: Final = 128
"""Service Bus rejects longer message ids."""

BATCH_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Batch ids have no ``:`` so that ``batch:doc:generation`` message ids cannot collide."""


class InvalidEnvelope(DocbusError):
    """A message body that is not a readable envelope: not JSON, schema failure, unknown version.

    Such a message can never succeed, so workers dead-letter it at once with ``reason``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Source(BaseModel):
    """Where a document came from: a file, and the line for JSONL/CSV records."""

    model_config = ConfigDict(frozen=True)

    path: str
    line: int | None = Field(default=None, ge=1)

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


class ClaimCheck(BaseModel):
    """A reference to a document's content stored in Mongo instead of in the message."""

    model_config = ConfigDict(frozen=True)

    collection: str = "payloads"
    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, description="Bytes of the UTF-8 encoded content.")


class Envelope(BaseModel):
    """One document as a message: identity, content (inline or claim-checked) and lineage."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: str = Field(min_length=1, max_length=1024)
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    topic: str = Field(min_length=1, max_length=260)
    content: str | None = None
    claim_check: ClaimCheck | None = None
    content_type: str = "text/plain"
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: Source | None = None
    session_id: str | None = Field(default=None, max_length=128)
    published_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    traceparent: str | None = None
    tracestate: str | None = None
    generation: int = Field(default=0, ge=0)
    """0 for the first publication; each replay of the document sends generation + 1."""
    replay_of: str | None = None
    """Message id of the message this one replays."""
    replayed_at: datetime | None = None
    target_subscription: str | None = None
    """Set on replays and retries meant for one subscription only (see :mod:`docbus.topology`)."""
    run_id: str | None = Field(default=None, max_length=128)
    """The run that sent this message: a replay's id (``replay-...``) for a replay; ``None``
    for a publication, whose run is its batch (see :attr:`run`). Results keep it, so a
    rollback can withdraw exactly what one run wrote."""

    @field_validator("published_at", "replayed_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _content_xor_claim_check(self) -> Envelope:
        if (self.content is None) == (self.claim_check is None):
            raise ValueError("exactly one of content and claim_check must be set")
        return self

    @property
    def message_id(self) -> str:
        """The logical message id: batch, doc and generation (see :func:`message_id`).

        Results are idempotent on it, so every attempt of a generation shares one result.
        """
        return message_id(self.batch_id, self.doc_id, self.generation)

    @property
    def run(self) -> str | None:
        """The run this message belongs to: :attr:`run_id`, else the batch id for a first
        publication (generation 0); ``None`` for a replay sent before runs were named."""
        if self.run_id is not None:
            return self.run_id
        return self.batch_id if self.generation == 0 else None

    @property
    def issued_at(self) -> datetime:
        """When the run that sent this message was issued: ``replayed_at`` for a replay, else
        ``published_at``. The current result version is the one of the latest issued run."""
        return self.replayed_at or self.published_at

    def to_bytes(self) -> bytes:
        """The message body: compact UTF-8 JSON."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview | str) -> Envelope:
        """Read a message body, or raise :class:`InvalidEnvelope` saying what is wrong with it.

        Nothing else escapes, whatever the body: bytes that are not UTF-8, JSON nested deeper
        than the interpreter parses, integers too long to convert and lone surrogates are all
        :class:`InvalidEnvelope`.
        """
        try:
            text = data if isinstance(data, str) else bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidEnvelope(f"message body is not JSON (not UTF-8 text: {exc})") from exc
        try:
            raw = json.loads(text)
        except RecursionError as exc:
            raise InvalidEnvelope("message body is JSON nested too deeply to read") from exc
        except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
            raise InvalidEnvelope(f"message body is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise InvalidEnvelope(f"message body is JSON {type(raw).__name__}, not an object")
        _check_unicode(text, raw)
        version = raw.get("schema_version")
        if version is None:
            raise InvalidEnvelope("envelope has no schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidEnvelope(
                f"unknown envelope schema_version {_short(version)} "
                f"(this worker reads {SCHEMA_VERSION})"
            )
        try:
            return cls.model_validate(raw)
        except RecursionError as exc:
            raise InvalidEnvelope("envelope is nested too deeply to read") from exc
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'envelope'}: {err['msg']}"
                for err in exc.errors()
            )
            raise InvalidEnvelope(f"envelope fails the schema: {problems}") from exc


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _check_unicode(text: str, raw: dict[str, Any]) -> None:
    """Refuse a lone surrogate: JSON can escape one (an unpaired ``\\ud800``-``\\udfff``),
    but no UTF-8 text, so no store, can hold it. Only a body with such an escape is looked at
    twice (a pair of them is one character, and fine)."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return
    try:
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEnvelope(
            "message body has an unpaired surrogate escape (\\ud800-\\udfff): not Unicode text"
        ) from exc
    except RecursionError as exc:
        raise InvalidEnvelope("message body is JSON nested too deeply to read") from exc


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message_id(batch_id: str, doc_id: str, generation: int = 0) -> str:
    """The deterministic Service Bus message id ``batch:doc:generation``.

    Ids longer than Service Bus allows (128) are replaced by ``h:`` and their SHA-256, so the
    same (batch, doc, generation) always maps to the same id.
    """
    return _bounded(f"{batch_id}:{doc_id}:{generation}")


def _bounded(raw: str) -> str:
    if len(raw) <= MAX_MESSAGE_ID_LENGTH:
        return raw
    return "h:" + hashlib.sha256(raw.encode("utf-8")).hexdigest()


def claim_check_for(text: str) -> ClaimCheck:
    """The claim-check reference of ``text`` as :class:`docbus.store.Store` stores it."""
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    return ClaimCheck(collection="payloads", id=digest, sha256=digest, size=len(data))


def content_doc_id(text: str) -> str:
    """A document id for content without one: the first 32 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def new_batch_id(now: datetime | None = None) -> str:
    """A fresh batch id, sortable by time: ``20250101T120000Z-3f9a1c``."""
    now = now or datetime.now(UTC)
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def application_properties(envelope: Envelope) -> dict[str, str | int]:
    """The message's application properties, for subscription filters and for operators.

    ``docbus-route`` is what the generated correlation rules match (:mod:`docbus.topology`):
    ``"*"`` for ordinary traffic, the subscription's name for a message meant for it alone.
    """
    return {
        ROUTE_PROPERTY: envelope.target_subscription or BROADCAST,
        "batch_id": envelope.batch_id,
        "doc_id": envelope.doc_id,
        "schema_version": envelope.schema_version,
        "generation": envelope.generation,
    }
