"""Records: the shapes of the documents :class:`docbus.store.Store` keeps in MongoDB.

One model per collection that callers read back — :class:`BatchRecord` (``batches``),
:class:`ResultRecord` (``results``), :class:`DeadLetterRecord` (``dead_letters``) — plus the
derived :class:`BatchCounts` that ``docbus status`` shows and the :class:`CheckpointKey` that
names a step's stored output (``checkpoints``). ``documents`` and ``payloads`` hold
:class:`~docbus.envelope.Envelope` fields and raw bytes and need no model of their own;
``llm_calls`` rows are free-form audit mappings written by the LLM client.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BatchCost",
    "BatchCounts",
    "BatchRecord",
    "CheckpointKey",
    "DeadLetterRecord",
    "HandlerCounts",
    "ResultRecord",
    "ResultWrite",
    "input_hash",
]


def _now() -> datetime:
    return datetime.now(UTC)


class BatchCost(BaseModel):
    """LLM spending of a batch, kept up to date by ``Store.add_batch_usage``."""

    model_config = ConfigDict(frozen=True)

    usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0


class BatchRecord(BaseModel):
    """One published batch: what was sent where, from what, and how it went."""

    model_config = ConfigDict(frozen=True)

    id: str
    topic: str
    status: str = "publishing"
    """``publishing`` while sending, then ``published`` or ``failed`` (some messages not sent)."""
    counts: dict[str, int] = Field(default_factory=dict)
    """Publisher figures: ``documents``, ``sent``, ``claim_checked``, ``failed``, ``skipped``."""
    source: list[str] = Field(default_factory=list)
    """What the documents were loaded from (paths, globs, or ``python``)."""
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    over_budget: bool = False
    cost: BatchCost = BatchCost()


class ResultRecord(BaseModel):
    """One version of a handler's output for a document.

    Versions count up per (doc_id, handler); exactly one non-rolled-back version is ``current``:
    the one with the highest (generation, version).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    doc_id: str
    handler: str
    handler_version: str
    version: int
    current: bool
    rolled_back: bool = False
    batch_id: str
    generation: int = 0
    message_id: str
    output: dict[str, Any]
    written_at: datetime
    delivery_count: int | None = None


class ResultWrite(NamedTuple):
    """What ``Store.write_result`` did: the stored record, and whether this call created it."""

    record: ResultRecord
    created: bool


class DeadLetterRecord(BaseModel):
    """The Mongo copy of a dead-lettered message: why, where it failed, and what it was."""

    model_config = ConfigDict(frozen=True)

    message_id: str
    subscription: str
    reason: str
    description: str = ""
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    handler: str | None = None
    handler_version: str | None = None
    step: str | None = None
    delivery_count: int | None = None
    topic: str | None = None
    batch_id: str | None = None
    doc_id: str | None = None
    generation: int | None = None
    body: bytes = b""
    """The original message body, byte for byte (it may not be a valid envelope)."""
    properties: dict[str, Any] = Field(default_factory=dict)
    """The original application properties."""
    enqueued_at: datetime | None = None
    dead_lettered_at: datetime = Field(default_factory=_now)
    replayed_at: datetime | None = None
    """Set by replay tooling once this dead letter has been sent again."""

    @property
    def id(self) -> str:
        """The record's key: one record per message and subscription."""
        return f"{self.subscription}@{self.message_id}"


class HandlerCounts(BaseModel):
    """Progress of one handler over a batch's documents."""

    model_config = ConfigDict(frozen=True)

    done: int = 0
    dead_lettered: int = 0
    pending: int = 0


class BatchCounts(BaseModel):
    """Progress of a batch, per document and per handler.

    A document is *done* when every handler known for the batch has a result for it,
    *dead-lettered* when a handler dead-lettered it and has no later result for it, and
    *pending* otherwise; the three add up to *published*.
    """

    model_config = ConfigDict(frozen=True)

    batch_id: str
    published: int
    done: int
    dead_lettered: int
    pending: int
    handlers: dict[str, HandlerCounts] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointKey:
    """Names one step's stored output: same document, handler version, step, input → same output."""

    doc_id: str
    handler: str
    handler_version: str
    step: str
    input_hash: str

    @property
    def id(self) -> str:
        """A fixed-length key for ``_id`` (the parts can be long)."""
        joined = "\x1f".join(
            (self.doc_id, self.handler, self.handler_version, self.step, self.input_hash)
        )
        return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def input_hash(value: Any) -> str:
    """A stable SHA-256 of a step's JSON-able input (keys sorted), for :class:`CheckpointKey`."""
    encoded = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()
