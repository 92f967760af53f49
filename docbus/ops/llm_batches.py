"""LLM batches: the provider batches behind batch-mode LLM calls, as an operator sees them.

In batch mode (``docbus publish --llm-mode batch``) a handler's LLM calls become requests in the
store (``llm_requests``), which the submitter sends to the provider's Batch API in provider
batches, each with a record (``llm_provider_batches``, :class:`~docbus.store.ProviderBatchRecord`).
This module reads and acts on them as plain data, for ``docbus llm-batches``
(:mod:`docbus.cli.llm_batches`), ``docbus status`` (:mod:`docbus.ops.status`) and the console:

- :func:`list_provider_batches` / :func:`find_provider_batch`: the records, newest first, or one
  by its record id or the provider's batch id.
- :func:`llm_progress`: one docbus batch's requests per state (pending, submitted, answered,
  failed, held), its open provider batches and the submitter's back-offs (:class:`LLMProgress`).
- :func:`cancel_llm_batch`: hold the batch's pending requests and cancel its open provider
  batches at the provider (their settlement keeps what was answered and holds the rest); the
  documents stay parked. A provider batch shared with another docbus batch is left running
  (cancelling it would hold the other batch's requests too) and named in the outcome.
- :func:`resume_llm_batch`: make the held requests pending again and ask the workers to fetch
  the batch's parked messages back.

The provider call is injected (:data:`Cancel`): :func:`docbus.cli.llm_batches.provider_canceller`
builds it from the settings through the live LLM client's own factory (``docbus`` itself never
imports ``handlers``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from docbus.errors import DocbusError
from docbus.ops._not_found import NotFound
from docbus.ops.batches import no_batch
from docbus.records import BatchRecord
from docbus.store import ProviderBatchRecord, Store, SubmissionPause

__all__ = [
    "REQUEST_STATES",
    "Cancel",
    "CancelOutcome",
    "LLMBatchRefused",
    "LLMProgress",
    "ResumeOutcome",
    "cancel_llm_batch",
    "find_provider_batch",
    "list_provider_batches",
    "llm_progress",
    "pause_json",
    "provider_batch_json",
    "resume_llm_batch",
]

REQUEST_STATES = ("pending", "submitted", "answered", "failed", "held")
"""A batch-mode request's states, in the order they are shown."""

FIND_LIMIT = 1000
"""Records searched for a provider batch id (the newest first)."""

Cancel = Callable[[str], Awaitable[None]]
"""Cancels one provider batch at the provider, given its id; raises :class:`LLMBatchRefused`
with the provider's reason when it cannot."""


class LLMBatchRefused(DocbusError):
    """An ``llm-batches`` action that cannot be done as asked (says why, and what to do)."""


# -- reading ------------------------------------------------------------------------------------


def provider_batch_json(record: ProviderBatchRecord) -> dict[str, Any]:
    """One provider-batch record as JSON-ready data (its request keys counted, not listed)."""
    return {
        "id": record.id,
        "provider_batch_id": record.provider_batch_id,
        "endpoint": record.endpoint,
        "model": record.model,
        "state": str(record.state),
        "open": record.is_open,
        "provider_status": record.provider_status,
        "requests": len(record.keys),
        "request_counts": dict(record.request_counts),
        "batch_ids": list(record.batch_ids),
        "file_id": record.file_id,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "files_deleted_at": _iso(record.files_deleted_at),
        "errors": list(record.errors),
        "polls": record.polls,
        "outcome": dict(record.outcome),
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def pause_json(pause: SubmissionPause, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {
        "endpoint": pause.endpoint,
        "model": pause.model,
        "until": pause.until.isoformat(),
        "active": _aware(pause.until) > now,
        "reason": pause.reason,
        "description": pause.description,
        "refusals": pause.refusals,
    }


async def list_provider_batches(
    store: Store, *, batch_id: str | None = None, limit: int = 50
) -> list[ProviderBatchRecord]:
    """Provider-batch records newest first, of one docbus batch when ``batch_id`` is given."""
    return await store.provider_batches(batch_id=batch_id, limit=limit)


async def find_provider_batch(store: Store, ident: str) -> ProviderBatchRecord:
    """The record with id ``ident``, else the one whose provider batch id is ``ident``; raises
    :class:`~docbus.ops.NotFound`."""
    record = await store.get_provider_batch(ident)
    if record is not None:
        return record
    for candidate in await store.provider_batches(limit=FIND_LIMIT):
        if candidate.provider_batch_id == ident:
            return candidate
    raise NotFound(
        f"no provider batch {ident!r} in the store: `docbus llm-batches list` shows their ids"
    )


@dataclass(frozen=True)
class LLMProgress:
    """Where one docbus batch's batch-mode LLM requests stand."""

    requests: dict[str, int]
    """State → requests (every state of :data:`REQUEST_STATES`, 0 when none)."""
    open_batches: list[ProviderBatchRecord] = field(default_factory=list)
    """Its provider batches not yet settled or abandoned, newest first."""
    pauses: list[SubmissionPause] = field(default_factory=list)
    """The submitter's back-offs (per endpoint and model) after a systemic refusal."""
    cancelled_at: datetime | None = None
    """When an operator cancelled the batch's LLM requests (``llm-batches cancel``)."""

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def active_pauses(self, now: datetime | None = None) -> list[SubmissionPause]:
        now = now or datetime.now(UTC)
        return [pause for pause in self.pauses if _aware(pause.until) > now]

    def to_json(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "requests": dict(self.requests),
            "open_provider_batches": [provider_batch_json(r) for r in self.open_batches],
            "submission_pauses": [pause_json(p, now) for p in self.pauses],
            "cancelled_at": self.cancelled_at.isoformat() if self.cancelled_at else None,
        }


async def llm_progress(
    store: Store, batch_id: str, record: BatchRecord | None = None
) -> LLMProgress:
    """A docbus batch's batch-mode requests per state, its open provider batches and the
    submission back-offs (shown only while it has requests waiting to be submitted);
    ``record``: the batch's record when the caller has read it already."""
    counts = await store.count_llm_requests(batch_id=batch_id)
    requests = {state: counts.get(state, 0) for state in REQUEST_STATES}
    requests.update({state: n for state, n in counts.items() if state not in requests})
    open_batches = [r for r in await store.provider_batches(batch_id=batch_id) if r.is_open]
    pauses = await store.llm_submission_pauses() if requests["pending"] else []
    record = record or await store.get_batch(batch_id)
    return LLMProgress(
        requests=requests,
        open_batches=open_batches,
        pauses=pauses,
        cancelled_at=record.llm_cancelled_at if record is not None else None,
    )


# -- acting -------------------------------------------------------------------------------------


@dataclass
class CancelOutcome:
    """What ``llm-batches cancel`` did to one docbus batch."""

    batch_id: str
    held: int = 0
    """Pending requests now held (not submitted until the batch is resumed)."""
    cancelled: list[str] = field(default_factory=list)
    """Provider batch ids cancelled at the provider."""
    shared: list[str] = field(default_factory=list)
    """Provider batches left running: they also hold other docbus batches' requests."""
    not_created: list[str] = field(default_factory=list)
    """Records the submitter is still creating at the provider: cancel again once they are."""
    failed: dict[str, str] = field(default_factory=dict)
    """Provider batch id → why the provider refused to cancel it."""

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "ok": self.ok,
            "held": self.held,
            "cancelled": list(self.cancelled),
            "shared": list(self.shared),
            "not_created": list(self.not_created),
            "failed": dict(self.failed),
        }


@dataclass(frozen=True)
class ResumeOutcome:
    """What ``llm-batches resume`` did to one docbus batch."""

    batch_id: str
    released: int
    """Held requests made pending again."""
    resume_requested: int
    """Parked messages the workers were asked to fetch back."""

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "released": self.released,
            "resume_requested": self.resume_requested,
        }


async def _batch_mode_batch(store: Store, batch_id: str) -> None:
    """Raise unless ``batch_id`` is a recorded batch with batch-mode requests or mode."""
    record = await store.get_batch(batch_id)
    if record is None:
        raise no_batch(batch_id)
    if record.llm_mode != "batch" and not any(
        (await store.count_llm_requests(batch_id=batch_id)).values()
    ):
        raise LLMBatchRefused(
            f"batch {batch_id} has no batch-mode LLM requests (LLM mode: "
            f"{record.llm_mode or 'default'}): there is nothing to cancel or resume"
        )


async def cancel_llm_batch(store: Store, batch_id: str, cancel: Cancel) -> CancelOutcome:
    """Hold a docbus batch's pending requests and cancel its open provider batches.

    Its documents stay parked (their requests held, not failed); :func:`resume_llm_batch`
    undoes it. Raises :class:`~docbus.ops.NotFound` for an unknown batch and
    :class:`LLMBatchRefused` for one without batch-mode requests.
    """
    await _batch_mode_batch(store, batch_id)
    outcome = CancelOutcome(batch_id)
    # Marked first, held second: a request registered in between is held by the next cancel,
    # and the mark tells a reader the batch is meant to be held.
    await store.mark_batch_llm_cancelled(batch_id, True)
    outcome.held = await store.hold_llm_requests(batch_id)
    for record in await store.provider_batches(batch_id=batch_id, limit=0):
        if not record.is_open:
            continue
        if set(record.batch_ids) - {batch_id}:
            outcome.shared.append(record.provider_batch_id or record.id)
        elif record.provider_batch_id is None:
            outcome.not_created.append(record.id)
        else:
            try:
                await cancel(record.provider_batch_id)
            except LLMBatchRefused as exc:
                outcome.failed[record.provider_batch_id] = str(exc)
            else:
                outcome.cancelled.append(record.provider_batch_id)
    return outcome


async def resume_llm_batch(store: Store, batch_id: str) -> ResumeOutcome:
    """Make a cancelled batch's held requests pending again and ask the workers to fetch its
    parked messages back (those still waiting on a request park again)."""
    await _batch_mode_batch(store, batch_id)
    released = await store.release_held_llm_requests(batch_id)
    await store.mark_batch_llm_cancelled(batch_id, False)
    requested = await store.request_resume(batch_id=batch_id)
    return ResumeOutcome(batch_id, released, requested)


def _aware(moment: datetime) -> datetime:
    """Mongo gives naive UTC datetimes back unless told otherwise."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
