"""Records: the shapes of the documents :class:`docbus.store.Store` keeps in MongoDB.

One model per collection that callers read back — :class:`BatchRecord` (``batches``),
:class:`ResultRecord` (``results``), :class:`DeadLetterRecord` (``dead_letters``) — plus the
derived :class:`BatchCounts` that ``docbus status`` shows and the :class:`CheckpointKey` that
names a step's stored output (``checkpoints``), :class:`LLMCallRecord`, one audit row of
``llm_calls`` as the LLM client (:mod:`handlers.llm`) writes it, and :class:`BatchBudget`, what
that client reads before each call. ``documents`` and ``payloads``
hold :class:`~docbus.envelope.Envelope` fields and raw bytes and need no model of their own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LLM_MODES",
    "SPEND_CATEGORIES",
    "BatchBudget",
    "BatchCost",
    "BatchCounts",
    "BatchRecord",
    "CheckpointKey",
    "DeadLetterRecord",
    "HandlerCounts",
    "LLMCallRecord",
    "LLMMode",
    "ReplayItem",
    "ReplayRecord",
    "ResultRecord",
    "ResultWrite",
    "RollbackRecord",
    "Spend",
    "SpendCategory",
    "input_hash",
    "result_rank",
]


def _now() -> datetime:
    return datetime.now(UTC)


SPEND_CATEGORIES = ("first", "reask", "retry")
"""How an LLM call's spend is reported: ``first`` (the first try of a call on the first
delivery), ``reask`` (a re-ask after a validation failure) or ``retry`` (a call repeated after a
transient error, or made on a later delivery of the message)."""

SpendCategory = Literal["first", "reask", "retry"]

LLMMode = Literal["live", "batch"]
"""How a batch's LLM calls are made: ``live`` (one request each, at once) or ``batch``
(gathered into provider batches: the Batch API's half price, answers within hours)."""

LLM_MODES: tuple[LLMMode, ...] = ("live", "batch")


class Spend(BaseModel):
    """Tokens and money of some LLM calls."""

    model_config = ConfigDict(frozen=True)

    usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0


class BatchCost(Spend):
    """LLM spending of a batch, kept up to date by ``Store.add_batch_usage``.

    The top-level figures count every call; ``reasks`` and ``retries`` are the parts of them
    spent on re-asks and on retries (see :data:`SPEND_CATEGORIES`), reported separately.
    """

    reasks: Spend = Spend()
    retries: Spend = Spend()


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
    budget_usd: float | None = None
    """This batch's LLM budget; ``None``: the worker's setting (``llm.budget_per_batch_usd``)."""
    cost: BatchCost = BatchCost()
    llm_mode: LLMMode | None = None
    """The LLM mode chosen at publish (or by a replay); ``None``: the handler's default, else
    the worker's setting (``llm.mode``)."""
    llm_cancelled_at: datetime | None = None
    """When ``docbus llm-batches cancel`` held the batch's LLM requests; ``None`` once resumed."""


class BatchBudget(NamedTuple):
    """What the LLM client checks before each call: the batch's own budget and its spend."""

    budget_usd: float | None
    spent_usd: float
    over_budget: bool


def result_rank(
    issued_at: datetime | None, written_at: datetime, record_id: str
) -> tuple[datetime, datetime, str]:
    """How result versions of one (document, handler) rank; the highest not rolled back is
    current.

    A version ranks by when the run that wrote it was issued (a batch's publication, or a
    replay), then by when it was written (then by id, for a tie within a millisecond): a late
    redelivery of an older run never takes over from a newer one, and a nightly re-run of the
    same documents under a new batch wins over yesterday's replays (a replay generation,
    counted per batch, could not tell them apart). Versions written before the issue time was
    stored rank by when they were written.
    """
    return (issued_at or written_at, written_at, record_id)


class ResultRecord(BaseModel):
    """One version of a handler's output for a document.

    Versions are numbered per (doc_id, handler) in the order they were written; exactly one
    version not rolled back is ``current``: the one that ranks highest (:func:`result_rank`).
    Neither is stored: the store works both out from the document's versions when it reads.
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
    run_id: str | None = None
    """The run that wrote it: the batch id for a publication, the replay id for a replay
    (``None``: written before runs were named)."""
    issued_at: datetime | None = None
    """When that run was issued (see :func:`result_rank`)."""
    rolled_back_by: str | None = None
    """The rollback that withdrew this version (``docbus rollback --undo`` restores it)."""
    rolled_back_at: datetime | None = None

    @property
    def rank(self) -> tuple[datetime, datetime, str]:
        return result_rank(self.issued_at, self.written_at, self.id)


class ResultWrite(NamedTuple):
    """What ``Store.write_result`` did: the id of the message's result version, and whether
    this call stored it (False: an earlier delivery of the message did)."""

    id: str
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
    resolved_at: datetime | None = None
    """Set when a delivery of the same message (batch, document, generation) stored a result
    for the same handler: the message is done, and this dead letter — a lock lost while that
    delivery ran — is superseded: it counts as dead nowhere and is not replayed."""

    @property
    def id(self) -> str:
        """The record's key: one record per message and subscription."""
        return f"{self.subscription}@{self.message_id}"


class ReplayItem(BaseModel):
    """One message a replay sent: which document, under which generation, replaying what."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    doc_id: str
    generation: int
    message_id: str
    topic: str
    target_subscription: str | None = None
    """``None``: broadcast to every subscription of the topic."""
    replay_of: str | None = None
    dead_letter: str | None = None
    """The id of the dead letter replayed, for dead-letter replays."""


class ReplayRecord(BaseModel):
    """One ``docbus replay`` run (``replays``), so that every re-sent message is accounted for.

    Written with ``status`` ``running`` before the first message is sent, so a run is known
    (and can be rolled back) even if it never finishes; then ``done``, ``partial`` (some
    messages failed to send) or ``failed`` (none went, or the run stopped: ``error`` says why).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    kind: Literal["dead-letters", "batch"]
    status: Literal["running", "done", "partial", "failed"] = "done"
    error: str | None = None
    """Why the run stopped before it sent everything, if it did."""
    filters: dict[str, Any] = Field(default_factory=dict)
    """The selection as given on the command line (filters, ``--only``, ``--limit``...)."""
    count: int = 0
    """Messages sent."""
    skipped: dict[str, str] = Field(default_factory=dict)
    """Dead letter (or document) id → why it was not replayed."""
    failed: dict[str, str] = Field(default_factory=dict)
    """Dead letter (or document) id → why sending it failed."""
    items: list[ReplayItem] = Field(default_factory=list)
    llm_mode: LLMMode | None = None
    """The LLM mode the run set on its batches (``--llm-mode``); ``None``: each kept its own."""
    started_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None


class RollbackRecord(BaseModel):
    """One ``docbus rollback`` run (``rollbacks``): which run's results it withdrew, how many,
    and whether it was undone; or one undo (``kind`` ``undo``) of such a rollback.

    The versions a rollback withdrew carry its id (``rolled_back_by``), so an undo restores
    exactly them. Written with ``status`` ``running`` before the first version is withdrawn.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    kind: Literal["rollback", "undo"] = "rollback"
    target: str = ""
    """What was rolled back, in words: ``batch B``, ``replay R``, ``batch B with its replays``,
    or for an undo ``rollback X``."""
    batch_id: str | None = None
    replay_id: str | None = None
    with_replays: bool = False
    runs: list[str] = Field(default_factory=list)
    """The runs whose versions were withdrawn (or, for an undo, restored)."""
    handler: str | None = None
    undoes: str | None = None
    """For an undo: the rollback it undid."""
    undone_by: str | None = None
    """For a rollback: the undo that restored its versions."""
    generation: int | None = None
    """Rollbacks made before runs were named: replay generation G and later of the batch."""
    versions: int = 0
    """Result versions withdrawn (an undo: restored) by this run (0 when already done)."""
    documents: int = 0
    """Documents with a version withdrawn (an undo: restored) by this run."""
    status: Literal["running", "done"] = "done"
    at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None


class LLMCallRecord(BaseModel):
    """One LLM call (one HTTP request) as audited in ``llm_calls``.

    Every request is a row: each re-ask, each retry after a transient error and each failed
    attempt. Costs of the rows of a batch add up to its :class:`BatchCost`.
    """

    model_config = ConfigDict(frozen=True)

    id: str | None = None
    batch_id: str | None
    doc_id: str | None
    generation: int = 0
    """The document's replay generation (0: as first published)."""
    message_id: str | None = None
    handler: str | None
    handler_version: str | None
    step: str | None = None
    """The checkpointed step the call was made in, if any."""
    attempt: int
    """The delivery of the message (1 on the first delivery)."""
    reask: int = 0
    """0 for the first ask, then 1, 2... for each re-ask after a validation failure."""
    retry: int = 0
    """0 for the first request of an ask, then 1, 2... for repeats after transient errors."""
    category: SpendCategory = "first"
    kind: Literal["extract", "complete"] = "complete"
    mode: Literal["json_schema", "json_object", "text"] = "text"
    """How the answer's format was asked for (``json_object``/``text``: fallbacks for servers
    without structured outputs, with the schema in the prompt)."""
    model: str
    """The model (Azure: the deployment) asked for."""
    response_model: str | None = None
    """The model the server says answered (e.g. a dated snapshot)."""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    response_text: str | None = None
    parsed: Any = None
    """The validated output of an ``extract`` call (JSON form)."""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    error_type: str | None = None
    """``None`` for a good answer; else e.g. ``RateLimitError`` or ``SchemaValidationError``."""
    error_message: str | None = None
    request_id: str | None = None
    llm_mode: Literal["live", "batch"] = "live"
    """How the request went: to the live endpoint, or in a provider batch (Batch API, priced
    at the batch price). Not ``mode``, which is the response format."""
    provider_batch_id: str | None = None
    """The provider's batch id that answered it (batch mode)."""
    custom_id: str | None = None
    """Its line's ``custom_id`` in that provider batch (batch mode: the request key)."""
    created_at: datetime = Field(default_factory=_now)

    @property
    def ok(self) -> bool:
        return self.error_type is None


class HandlerCounts(BaseModel):
    """Progress of one handler over a batch's documents."""

    model_config = ConfigDict(frozen=True)

    done: int = 0
    dead_lettered: int = 0
    rolled_back: int = 0
    """Documents whose results of this batch were all withdrawn by a rollback, and that have
    no other result or dead letter in it: an operator's act, redone by a replay."""
    pending: int = 0


class BatchCounts(BaseModel):
    """Progress of a batch, per document and per handler.

    A document is *done* when every handler known for the batch has a result for it,
    *dead-lettered* when a handler dead-lettered it and has no later result for it, *rolled
    back* when a handler's results for it were withdrawn by a rollback (and it is neither of the
    former), and *pending* otherwise; the four add up to *published*.
    """

    model_config = ConfigDict(frozen=True)

    batch_id: str
    published: int
    done: int
    dead_lettered: int
    pending: int
    rolled_back: int = 0
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
