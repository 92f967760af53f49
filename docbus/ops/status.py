"""Status: how far each batch has got — per batch and per handler — as plain data.

:func:`collect_status` reads a batch's progress from the store (:mod:`docbus.store`):
``Store.batch_counts`` gives published / done / dead-lettered / pending per handler, the batch
record (:class:`~docbus.records.BatchRecord`) its topic, publishing status, LLM cost and
over-budget flag and its own budget (``docbus publish --budget``), and its LLM mode (``docbus
publish --llm-mode``; ``default``: each handler's, else the worker's). A batch with batch-mode
LLM requests also gets their progress (:func:`docbus.ops.llm_batches.llm_progress`: requests
per state, open provider batches, submission back-offs). Documents parked while they wait for a
batch round (reason ``AwaitingBatch``) are how batch mode works, not a problem: they do not make
a batch need attention; held requests (a cancelled batch) and back-offs do.

*Parked*: a document whose message the worker set aside (deferred) until a condition clears —
the LLM endpoint refusing the key, a circuit breaker, the budget — has a parked record
(``Store.parked``); it counts as parked for that handler until it has a result or a dead letter.
*Retrying*: a document counts as retrying for a handler when the worker has noted a retry of it
(``Store.retried``, noted before each backoff) or an LLM audit row of the batch shows ``attempt
>= 2`` for that (handler, doc_id) (``Store.llm_retried``), and the handler has neither a result
nor a dead letter for it yet, nor a parked message. Parked and retrying documents are taken out
of *pending*, so published = done + retrying + parked + dead-lettered + pending
(:func:`unfinished_counts`, a pure decision).

*Complete*: publishing has ended and every document sent is done or dead-lettered — and, when
the broker can be asked (:class:`~docbus.ops.backlog.BacklogProbe` peeks the batch's
subscriptions), no message of the batch is left on a subscription; when it cannot, the batch is
"complete (broker not checked)". :func:`throughput` is documents finished (done or
dead-lettered) per second since the batch was created — up to its last result once complete —
or between two observations. :func:`status_json` is the figures as JSON-ready data. ``docbus
status`` (:mod:`docbus.cli.status`) draws them; a console would draw the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from docbus.ops.backlog import Backlog
from docbus.ops.batches import find_batches
from docbus.ops.llm_batches import LLMProgress, llm_progress
from docbus.records import BatchCounts, BatchRecord, HandlerCounts
from docbus.store import Store

__all__ = [
    "AWAITING_BATCH",
    "BatchStatus",
    "Parked",
    "Probe",
    "collect_status",
    "parked_documents",
    "retrying_counts",
    "status_json",
    "throughput",
    "unfinished_counts",
]

AWAITING_BATCH = "AwaitingBatch"
"""The reason a message is parked while its LLM requests wait for a provider batch."""

Probe = Callable[[str, str], Awaitable[Backlog]]
"""Asks the broker what of a batch is left: ``probe(topic, batch_id)``."""


@dataclass(frozen=True)
class Parked:
    """One parked message of a batch, as far as status needs it."""

    handler: str
    """The handler, or the subscription's name when the record does not say."""
    doc_id: str
    reason: str


@dataclass(frozen=True)
class BatchStatus:
    """One batch's progress at one moment."""

    record: BatchRecord
    counts: BatchCounts
    retrying: int = 0
    """Documents retrying in some handler and neither done nor dead-lettered overall."""
    handler_retrying: dict[str, int] = field(default_factory=dict)
    parked: int = 0
    """Documents parked in some handler and neither done nor dead-lettered overall."""
    handler_parked: dict[str, int] = field(default_factory=dict)
    parked_reasons: dict[str, int] = field(default_factory=dict)
    """Reason → parked messages of the batch (a document parked in two handlers counts twice)."""
    backlog: Backlog | None = None
    """What the broker still holds of the batch; None: not asked (the counts are not complete,
    or no probe was given)."""
    observed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_activity: datetime | None = None
    """When the latest result or dead letter was written (looked up once complete)."""
    llm: LLMProgress | None = None
    """Its batch-mode LLM requests; None when it has none and is not in batch mode."""

    @property
    def batch_id(self) -> str:
        return self.record.id

    @property
    def llm_mode(self) -> str:
        """``live``, ``batch``, or ``default`` (each handler's mode, else the worker's)."""
        return self.record.llm_mode or "default"

    @property
    def settled(self) -> bool:
        """Publishing has ended and every document sent is done or dead-lettered in Mongo.

        Documents the publisher recorded but failed to send (``counts["failed"]``) will not
        arrive until they are replayed, so they do not hold a batch open.
        """
        unsent = self.record.counts.get("failed", 0)
        return self.record.status != "publishing" and self.counts.pending <= unsent

    @property
    def complete(self) -> bool:
        """Settled, and no message of the batch known to be left on the broker."""
        return self.settled and (self.backlog is None or self.backlog.total == 0)

    @property
    def broker_checked(self) -> bool:
        return self.backlog is not None and self.backlog.checked

    @property
    def state(self) -> str:
        """One word or phrase for the batch: complete, or where it stands."""
        if not self.settled:
            return self.record.status
        if self.backlog is not None and self.backlog.total:
            return "finishing"
        if self.counts.rolled_back:
            return "rolled back" if not self.finished() else "complete, partly rolled back"
        return "complete" if self.broker_checked else "complete (broker not checked)"

    @property
    def attention(self) -> list[str]:
        """What about the batch needs someone to look (``docbus status`` then exits 1)."""
        found = []
        counts = self.record.counts
        unsent = self.counts.published - counts.get("sent", 0) - counts.get("failed", 0)
        if self.record.status == "failed" and unsent > 0:
            # recorded (records go up to two chunks ahead) but never sent: interrupted
            found.append(
                f"publishing stopped before the end: {unsent} recorded documents not sent; "
                f"send them with `docbus publish ... --batch-id {self.record.id} --resume`"
            )
        if self.counts.dead_lettered:
            found.append(f"{self.counts.dead_lettered} dead-lettered")
        if self.counts.rolled_back:
            found.append(
                f"{self.counts.rolled_back} rolled back (no current result from this batch): "
                f"redo them with `docbus replay --batch {self.record.id}`"
            )
        waiting = self.parked_reasons.get(AWAITING_BATCH, 0)
        if self.parked and waiting < sum(self.parked_reasons.values()):
            found.append(f"{self.parked} parked")
        if self.llm is not None:
            if self.llm.requests.get("held"):
                found.append(f"{self.llm.requests['held']} LLM requests held (cancelled)")
            if self.llm.active_pauses():
                found.append("LLM batch submission paused")
        if self.record.over_budget:
            found.append("over budget")
        for key, what in (("skipped", "skipped by the publisher"), ("failed", "not sent")):
            if self.record.counts.get(key, 0):
                found.append(f"{self.record.counts[key]} {what}")
        return found

    def finished(self, handler: str | None = None) -> int:
        """Documents done or dead-lettered, overall or for one handler."""
        counts: BatchCounts | HandlerCounts = (
            self.counts if handler is None else self.counts.handlers[handler]
        )
        return counts.done + counts.dead_lettered

    def pending(self, handler: str | None = None) -> int:
        """Pending documents that are neither retrying nor parked."""
        if handler is None:
            return max(0, self.counts.pending - self.retrying - self.parked)
        unfinished = self.handler_retrying.get(handler, 0) + self.handler_parked.get(handler, 0)
        return max(0, self.counts.handlers[handler].pending - unfinished)


# -- pure decisions -----------------------------------------------------------------------------


def _unfinished(
    seen: Mapping[str, set[str]],
    done: Mapping[str, set[str]],
    dead: Mapping[str, set[str]],
    handlers: Iterable[str],
) -> tuple[set[str], dict[str, set[str]]]:
    names = sorted(set(handlers) | set(seen))
    per_handler: dict[str, set[str]] = {}
    for name in names:
        settled = done.get(name, set()) | dead.get(name, set())
        per_handler[name] = seen.get(name, set()) - settled
    candidates = set().union(*per_handler.values()) if per_handler else set()
    dead_anywhere = set().union(*(dead.get(name, set()) - done.get(name, set()) for name in names))
    done_everywhere = (
        set.intersection(*(done.get(name, set()) for name in names)) if names else set()
    )
    return candidates - dead_anywhere - done_everywhere, per_handler


def retrying_counts(
    attempted_again: Mapping[str, set[str]],
    done: Mapping[str, set[str]],
    dead: Mapping[str, set[str]],
    handlers: Iterable[str],
) -> tuple[int, dict[str, int]]:
    """Retrying documents, overall and per handler, by ``Store.batch_counts``'s rules.

    ``attempted_again`` maps a handler to the documents seen on a second or later attempt;
    ``done`` and ``dead`` to the documents it has a result / a dead letter for (only the
    documents of interest need be present). Per handler, retrying = attempted again and neither
    done nor dead. Overall, a document retrying somewhere counts unless it is dead-lettered by
    some handler (without a later result) or done by every handler.
    """
    overall, per_handler = _unfinished(attempted_again, done, dead, handlers)
    return len(overall), {name: len(docs) for name, docs in per_handler.items() if docs}


def unfinished_counts(
    attempted_again: Mapping[str, set[str]],
    parked: Mapping[str, set[str]],
    done: Mapping[str, set[str]],
    dead: Mapping[str, set[str]],
    handlers: Iterable[str],
) -> tuple[tuple[int, dict[str, int]], tuple[int, dict[str, int]]]:
    """((retrying, per handler), (parked, per handler)), by :func:`retrying_counts`'s rules.

    A parked document is not retrying: it waits, deferred, until its worker resumes it. Overall,
    a document parked in one handler and retrying in another counts as parked.
    """
    handlers = list(handlers)
    parked_all, parked_per = _unfinished(parked, done, dead, handlers)
    again = {name: docs - parked.get(name, set()) for name, docs in attempted_again.items()}
    retrying_all, retrying_per = _unfinished(again, done, dead, handlers)
    retrying_all -= parked_all
    return (
        (len(retrying_all), {name: len(docs) for name, docs in retrying_per.items() if docs}),
        (len(parked_all), {name: len(docs) for name, docs in parked_per.items() if docs}),
    )


def throughput(
    current: BatchStatus, previous: BatchStatus | None = None
) -> dict[str | None, float]:
    """Documents finished per second, overall (key ``None``) and per handler.

    With ``previous`` (an earlier observation of the same batch): over the interval between
    the two. Without: since the batch was created, up to its last activity once complete.
    """
    keys: list[str | None] = [None, *current.counts.handlers]
    if previous is not None:
        seconds = (current.observed_at - previous.observed_at).total_seconds()
        rates: dict[str | None, float] = {}
        for key in keys:
            before = previous.finished(key) if key is None or key in previous.counts.handlers else 0
            rates[key] = max(0, current.finished(key) - before) / seconds if seconds > 0 else 0.0
        return rates
    end = current.observed_at
    if current.settled and current.last_activity is not None:
        end = current.last_activity
    seconds = (end - current.record.created_at).total_seconds()
    return {key: current.finished(key) / seconds if seconds > 0 else 0.0 for key in keys}


# -- reading the store --------------------------------------------------------------------------


async def collect_status(
    store: Store,
    batch_ids: Sequence[str] | None = None,
    *,
    limit: int = 10,
    probe: Probe | None = None,
) -> list[BatchStatus]:
    """The status of the given batches, or of the ``limit`` most recent ones.

    With ``probe`` (a :class:`~docbus.ops.backlog.BacklogProbe`), the broker is asked what is
    left of each batch whose documents are all settled in Mongo. Raises
    :class:`~docbus.ops.NotFound` for a batch id that has no record.
    """
    statuses = []
    for record in await find_batches(store, batch_ids, limit=limit):
        status = await _one(store, record)
        if probe is not None and status.settled:
            status = replace(status, backlog=await probe(record.topic, record.id))
        statuses.append(status)
    return statuses


async def parked_documents(store: Store, batch_id: str) -> list[Parked]:
    """The batch's parked messages: handler (or subscription), document and reason.

    The handler is the record's own ``handler`` when it has one, else the one the batch's dead
    letters name for the subscription, else the subscription's name.
    """
    records = [record for record in await store.parked(batch_id=batch_id) if record.doc_id]
    names: dict[str, str] = {}
    if any(record.handler is None for record in records):
        names = await store.dead_letter_handlers(batch_id)
    return [
        Parked(
            record.handler or names.get(record.subscription, record.subscription),
            str(record.doc_id),
            record.reason or "?",
        )
        for record in records
    ]


async def _one(store: Store, record: BatchRecord) -> BatchStatus:
    batch_id = record.id
    # Documents seen on a second or later attempt: LLM calls say so, and the worker notes
    # every delivery it retries, LLM calls or not.
    attempted_again = await store.llm_retried(batch_id)
    for name, docs in (await store.retried(batch_id)).items():
        attempted_again.setdefault(name, set()).update(docs)
    handlers = sorted(set(await store.llm_handlers(batch_id)) | set(attempted_again))
    parked: dict[str, set[str]] = {}
    reasons: dict[str, int] = {}
    for item in await parked_documents(store, batch_id):
        parked.setdefault(item.handler, set()).add(item.doc_id)
        reasons[item.reason] = reasons.get(item.reason, 0) + 1
    counts = await store.batch_counts(batch_id, handlers=[*handlers, *parked])
    retrying, per_handler, parked_count, parked_per = 0, dict[str, int](), 0, dict[str, int]()
    if attempted_again or parked:
        candidates = set().union(*attempted_again.values(), *parked.values())
        done, dead = await store.documents_settled(batch_id, candidates)
        (retrying, per_handler), (parked_count, parked_per) = unfinished_counts(
            attempted_again, parked, done, dead, counts.handlers
        )
    status = BatchStatus(
        record=record,
        counts=counts,
        retrying=retrying,
        handler_retrying=per_handler,
        parked=parked_count,
        handler_parked=parked_per,
        parked_reasons=reasons if parked_count else {},
    )
    progress = await llm_progress(store, batch_id, record)
    if progress.total or record.llm_mode == "batch":
        status = replace(status, llm=progress)
    if status.settled:
        status = replace(status, last_activity=await store.last_activity(batch_id))
    return status


# -- JSON ---------------------------------------------------------------------------------------


def status_json(statuses: Sequence[BatchStatus]) -> dict[str, Any]:
    """The figures of :func:`render_status` as JSON-ready data (what ``--json`` prints)."""
    batches = []
    for status in statuses:
        record, counts = status.record, status.counts
        batches.append(
            {
                "batch_id": record.id,
                "topic": record.topic,
                "status": record.status,
                "llm_mode": status.llm_mode,
                "state": status.state,
                "complete": status.complete,
                "attention": status.attention,
                "created_at": record.created_at.isoformat(),
                "documents": {
                    "published": counts.published,
                    "done": counts.done,
                    "retrying": status.retrying,
                    "parked": status.parked,
                    "dead_lettered": counts.dead_lettered,
                    "rolled_back": counts.rolled_back,
                    "pending": status.pending(),
                },
                "handlers": {
                    name: {
                        "done": handler.done,
                        "retrying": status.handler_retrying.get(name, 0),
                        "parked": status.handler_parked.get(name, 0),
                        "dead_lettered": handler.dead_lettered,
                        "rolled_back": handler.rolled_back,
                        "pending": status.pending(name),
                    }
                    for name, handler in counts.handlers.items()
                },
                "parked_reasons": status.parked_reasons,
                "broker": status.backlog.to_json() if status.backlog is not None else None,
                "publisher": {
                    "skipped": record.counts.get("skipped", 0),
                    "failed": record.counts.get("failed", 0),
                },
                "cost": record.cost.model_dump(mode="json"),
                "budget_usd": record.budget_usd,
                "over_budget": record.over_budget,
                "docs_per_second": throughput(status)[None],
                "llm_batch": status.llm.to_json() if status.llm is not None else None,
            }
        )
    return {"batches": batches}
