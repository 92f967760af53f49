"""A document's lineage: the document, then per handler its deliveries, steps, LLM calls,
dead letters and result versions — everything docbus knows about one (batch, document).

:func:`document_lineage` reads it from the store: the published document (its text loaded when
claim-checked, capped at ``text_limit`` characters), the stored step outputs
(``Store.document_steps``), every LLM audit row of the document (prompt, answer, tokens, cost,
latency, error), its dead letters (resolved ones included, marked) and every result version of
each handler. :func:`deliveries` is a pure summary of the audit rows and outcomes per delivery
(replay generation, delivery number): calls, cost and how it ended. :func:`documents_named`
finds the batches a document id appears in; :func:`document_text` loads a document's text
(:mod:`docbus.ops.dead_letters` shows one the same way). Neighbours: :mod:`docbus.ops.versions`
(diff and single-version rollback), :mod:`docbus.ops.results` (versions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from docbus.envelope import Envelope
from docbus.errors import DocbusError
from docbus.ops._not_found import NotFound
from docbus.records import DeadLetterRecord, LLMCallRecord, ResultRecord
from docbus.store import DeadLetterFilter, Store, StoredStep

__all__ = [
    "Delivery",
    "DocumentLineage",
    "HandlerLineage",
    "deliveries",
    "document_lineage",
    "document_text",
    "documents_named",
]

TEXT_LIMIT = 20_000
"""Characters of a document's text a lineage carries (the rest is counted, not shown)."""


@dataclass(frozen=True)
class Delivery:
    """One delivery of the document to a handler: what it spent and how it ended."""

    generation: int
    attempt: int
    calls: int
    failed_calls: int
    cost_usd: float
    outcome: str
    """``result vN``, ``dead letter: Reason``, or ``retried`` (neither: a later delivery
    followed, or it is still running)."""


@dataclass
class HandlerLineage:
    """What one handler did with the document."""

    handler: str
    calls: list[LLMCallRecord] = field(default_factory=list)
    steps: list[StoredStep] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    versions: list[ResultRecord] = field(default_factory=list)

    @property
    def current(self) -> ResultRecord | None:
        return next((v for v in self.versions if v.current), None)

    @property
    def deliveries(self) -> list[Delivery]:
        return deliveries(self.calls, self.versions, self.dead_letters)


@dataclass(frozen=True)
class DocumentLineage:
    """Everything the store knows about one published document."""

    batch_id: str
    doc_id: str
    document: Envelope | None
    text: str | None
    """The text, at most :data:`TEXT_LIMIT` characters (None: not in the store)."""
    text_size: int
    """Characters of the whole text."""
    handlers: list[HandlerLineage]

    @property
    def truncated(self) -> bool:
        return self.text is not None and self.text_size > len(self.text)


def deliveries(
    calls: Sequence[LLMCallRecord],
    versions: Sequence[ResultRecord],
    dead_letters: Sequence[DeadLetterRecord],
) -> list[Delivery]:
    """Per (generation, delivery) seen in the audit rows or outcomes, oldest first."""
    keys: set[tuple[int, int]] = {(call.generation, call.attempt) for call in calls}
    ended: dict[tuple[int, int], str] = {}
    for version in versions:
        key = (version.generation, version.delivery_count or 1)
        ended[key] = f"result v{version.version}"
    for record in dead_letters:
        key = (record.generation or 0, record.delivery_count or 1)
        ended.setdefault(key, f"dead letter: {record.reason}")
    keys |= set(ended)
    rows = []
    for generation, attempt in sorted(keys):
        mine = [c for c in calls if (c.generation, c.attempt) == (generation, attempt)]
        rows.append(
            Delivery(
                generation=generation,
                attempt=attempt,
                calls=len(mine),
                failed_calls=sum(1 for c in mine if not c.ok),
                cost_usd=sum(c.cost_usd for c in mine),
                outcome=ended.get((generation, attempt), "retried"),
            )
        )
    return rows


async def document_text(store: Store, document: Envelope | None) -> str | None:
    """A published document's text, loaded when claim-checked (or why it could not be)."""
    if document is None:
        return None
    if document.content is not None or document.claim_check is None:
        return document.content
    try:
        return await store.load_payload(document.claim_check)
    except DocbusError as exc:
        return f"(claim-checked content unavailable: {exc})"


async def document_lineage(
    store: Store, batch_id: str, doc_id: str, *, text_limit: int = TEXT_LIMIT
) -> DocumentLineage:
    """The lineage of one document of a batch; raises :class:`~docbus.ops.NotFound` when the
    store knows nothing of it."""
    document = await store.get_document(batch_id, doc_id)
    text = await document_text(store, document)
    calls = await store.llm_calls(batch_id, doc_id=doc_id)
    versions = [v for v in await store.result_versions(doc_id=doc_id) if v.batch_id == batch_id]
    dead = await store.dead_letters(
        DeadLetterFilter(batch_id=batch_id, doc_id=doc_id, include_resolved=True)
    )
    steps = await store.document_steps(doc_id)
    if document is None and not (calls or versions or dead):
        raise NotFound(f"no document {doc_id!r} in batch {batch_id!r}")
    by_handler: dict[str, HandlerLineage] = {}

    def lineage_of(name: str | None) -> HandlerLineage:
        key = name or "(unknown handler)"
        return by_handler.setdefault(key, HandlerLineage(key))

    for call in calls:
        lineage_of(call.handler).calls.append(call)
    for version in versions:
        lineage_of(version.handler).versions.append(version)
    for record in dead:
        lineage_of(record.handler or f"({record.subscription})").dead_letters.append(record)
    # Checkpoints name no batch they must belong to (the same document id and input may be
    # shared across batches): shown for the handlers this batch ran.
    for step in steps:
        if step.handler in by_handler:
            by_handler[step.handler].steps.append(step)
    size = len(text) if text is not None else 0
    shown = text[:text_limit] if text is not None else None
    return DocumentLineage(
        batch_id, doc_id, document, shown, size, [by_handler[k] for k in sorted(by_handler)]
    )


async def documents_named(store: Store, doc_id: str) -> list[str]:
    """The batches that have results or dead letters of a document id, sorted."""
    batches = {v.batch_id for v in await store.result_versions(doc_id=doc_id)}
    for record in await store.dead_letters(DeadLetterFilter(doc_id=doc_id, include_resolved=True)):
        if record.batch_id:
            batches.add(record.batch_id)
    return sorted(batches)
