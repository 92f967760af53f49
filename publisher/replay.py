"""Replay: send dead letters, or a batch's documents, back into their topic as a new generation.

A replay is planned first and sent second, so a dry run shows exactly what a real run sends.
:func:`plan_dead_letter_replay` turns the dead letters a :class:`~docbus.store.DeadLetterFilter`
selects back into their envelopes (bodies that are not envelopes are skipped,
with the reason); :func:`plan_batch_replay` takes a batch's documents from the ``documents``
store — all of them, those that failed in a handler, or those a handler never finished — so no
source file is needed. Every planned message is the original content under the document's next
replay generation (one above any generation known for it, so its message id is new and its
result a new version), with ``replay_of`` and ``replayed_at`` for lineage, and
``target_subscription`` set to the subscription that failed: the routing property then matches
only that subscription's *addressed* rule (:mod:`docbus.topology`), and the topic's other
subscriptions never see the message.

:func:`send_replay` sends a plan through :func:`docbus.servicebus.build_message`, the publisher's
message mapping, at most ``rate`` messages per second (:mod:`publisher.token_bucket`). Each dead
letter is claimed (marked replayed) before it is sent and released again if sending fails, so it
is sent at most once however many replays run, unless a plan is made with ``again``. Every run is
recorded in ``replays`` (:class:`~docbus.records.ReplayRecord`) before its first message goes,
then as ``done``, ``partial`` or ``failed`` with the error that stopped it. Each message carries
the run's id (``run_id``), which its results keep: ``docbus rollback --replay ID`` withdraws
exactly what one run wrote (:mod:`docbus.cli.rollback`). Neighbours:
:mod:`docbus.cli.replay` (``docbus replay``), :mod:`subscriber.dlq` (which captures
broker-side dead letters first).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from azure.servicebus import ServiceBusMessage

from docbus.envelope import Envelope, InvalidEnvelope, message_id
from docbus.errors import DocbusError
from docbus.records import DeadLetterRecord, LLMMode, ReplayItem, ReplayRecord
from docbus.servicebus import build_message, translated
from docbus.settings import PublisherSettings
from docbus.store import DeadLetterFilter, Store
from publisher.publish import SenderFactory
from publisher.sending import BatchSender, MessageSender, SendRetry
from publisher.token_bucket import TokenBucket

__all__ = [
    "ONLY",
    "PlannedMessage",
    "ReplayError",
    "ReplayPlan",
    "ReplayReport",
    "new_replay_id",
    "plan_batch_replay",
    "plan_dead_letter_replay",
    "replay_status",
    "route_name",
    "send_replay",
    "subscription_of",
]

logger = logging.getLogger(__name__)

DEFAULT_RETRY = SendRetry.of(PublisherSettings())
"""The publisher's default retry (``DOCBUS_PUBLISHER__SEND_ATTEMPTS``, ``__SEND_RETRY_BACKOFF``)."""

ONLY = ("failed", "missing", "all")
"""What a batch replay selects: documents that failed in the handler, documents it never
finished (neither result nor dead letter), or every document of the batch."""

Only = Literal["failed", "missing", "all"]

SEND_CHUNK = 100


class ReplayError(DocbusError):
    """A replay cannot be planned as asked (unknown batch, unresolvable handler...)."""


@dataclass(frozen=True)
class PlannedMessage:
    """One message a replay sends: the envelope as planned and what it replays."""

    key: str
    """The dead letter's id, or ``batch:doc`` for a batch replay."""
    envelope: Envelope
    dead_letter: DeadLetterRecord | None = None
    """The dead letter this message replays (claimed before sending)."""
    settles: tuple[DeadLetterRecord, ...] = ()
    """Dead letters a batch replay of a failed document answers (marked once it is sent)."""


@dataclass
class ReplayPlan:
    """What a replay would send and what it leaves out, with why."""

    kind: Literal["dead-letters", "batch"]
    filters: dict[str, Any]
    messages: list[PlannedMessage] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    """Something the operator should know about the selection (e.g. replayed ones left out)."""

    def to_json(self) -> dict[str, Any]:
        """The plan as ``--json`` prints it: every message, what was skipped, the note."""
        return {
            "kind": self.kind,
            "filters": _jsonable(self.filters),
            "messages": [
                {
                    "key": planned.key,
                    "batch_id": planned.envelope.batch_id,
                    "doc_id": planned.envelope.doc_id,
                    "generation": planned.envelope.generation,
                    "route": planned.envelope.target_subscription,
                    "message_id": planned.envelope.message_id,
                }
                for planned in self.messages
            ],
            "skipped": dict(self.skipped),
            "note": self.note,
        }


@dataclass
class ReplayReport:
    """What :func:`send_replay` did."""

    record: ReplayRecord
    duration: float = 0.0

    @property
    def sent(self) -> list[ReplayItem]:
        return self.record.items

    def summary(self) -> str:
        """One line: the audit record's id, what did not go, and how fast it went."""
        record = self.record
        rate = record.count / self.duration if self.duration > 0 else 0.0
        ended = "" if record.status == "done" else f" · {record.status}"
        return (
            f"recorded as {record.id}{ended} · {len(record.skipped)} skipped, "
            f"{len(record.failed)} failed · {self.duration:.2f} s, {rate:.0f} msg/s"
        )

    def to_json(self) -> dict[str, Any]:
        """The run as ``--json`` prints it: its record and how long it took."""
        return {"replay": self.record.model_dump(mode="json"), "seconds": round(self.duration, 3)}


def _jsonable(value: Any) -> Any:
    """Filters as JSON: times as ISO 8601 text, the rest as it is."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def route_name(envelope: Envelope) -> str:
    """Where a replayed message goes: its target subscription, or every one (broadcast)."""
    return envelope.target_subscription or "* (broadcast)"


def new_replay_id(now: datetime | None = None) -> str:
    """A new replay run id: ``replay-<UTC time>-<random hex>``."""
    now = now or datetime.now(UTC)
    return f"replay-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class _Generations:
    """Next generations as a plan will allocate them: known + 1, + 1 more per earlier message."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.planned: Counter[tuple[str, str]] = Counter()

    async def next(self, batch_id: str, doc_id: str) -> tuple[int, int]:
        """(the latest known generation, the one the next message will carry)."""
        known = await self.store.known_generation(batch_id, doc_id)
        self.planned[(batch_id, doc_id)] += 1
        return known, known + self.planned[(batch_id, doc_id)]


async def plan_dead_letter_replay(
    store: Store, selection: DeadLetterFilter, *, limit: int = 0, again: bool = False
) -> ReplayPlan:
    """The messages that replay the dead letters ``selection`` matches, oldest first.

    Without ``again``, dead letters replayed before are left out (and counted in the note).
    """
    plan = ReplayPlan("dead-letters", {**selection.describe(), "limit": limit, "again": again})
    chosen = selection if again else replace(selection, replayed=False)
    if not again and selection.replayed is not False:
        already = await store.dead_letters(replace(selection, replayed=True))
        if already:
            plan.note = (
                f"{len(already)} matching dead letter(s) were replayed already and are left "
                "out; --again replays them again"
            )
    generations = _Generations(store)
    now = datetime.now(UTC)
    for record in await store.dead_letters(chosen, limit=limit):
        try:
            original = Envelope.from_bytes(record.body)
        except InvalidEnvelope as exc:
            plan.skipped[record.id] = f"not a valid envelope, cannot be replayed: {exc.reason}"
            continue
        _, generation = await generations.next(original.batch_id, original.doc_id)
        envelope = original.model_copy(
            update={
                "generation": generation,
                "replay_of": record.message_id,
                "replayed_at": now,
                "target_subscription": record.subscription,
            }
        )
        plan.messages.append(PlannedMessage(record.id, envelope, dead_letter=record))
    return plan


async def plan_batch_replay(
    store: Store,
    batch_id: str,
    *,
    only: Only = "all",
    handler: str | None = None,
    subscription: str | None = None,
    limit: int = 0,
) -> ReplayPlan:
    """The messages that replay a batch's documents from the ``documents`` store.

    With ``handler`` (and its ``subscription``), ``failed`` selects the documents with a dead
    letter on that subscription and no result of that handler, ``missing`` those with neither,
    and the messages are addressed to that subscription alone. Without, ``failed`` sends each
    failed document to every subscription it failed in (one message each, addressed to it)
    and to no other; ``missing`` and ``all`` broadcast to the topic, ``missing`` considering
    every handler the batch has results or dead letters of. ``plan.note`` says which it does.
    Raises :class:`ReplayError` when the batch has no recorded documents.
    """
    if only not in ONLY:
        raise ReplayError(f"--only must be one of {', '.join(ONLY)}, not {only!r}")
    if handler is not None and subscription is None:
        raise ReplayError(f"the subscription of handler {handler!r} is needed to address it")
    filters = {"batch_id": batch_id, "only": only, "handler": handler}
    plan = ReplayPlan("batch", {**filters, "subscription": subscription, "limit": limit})
    done: dict[str, set[str]] = {}
    for result in await store.result_versions(batch_id=batch_id, include_rolled_back=False):
        done.setdefault(result.handler, set()).add(result.doc_id)
    dead: dict[str, list[DeadLetterRecord]] = {}
    for record in await store.dead_letters(DeadLetterFilter(batch_id=batch_id)):
        if record.doc_id is not None and (handler is None or record.subscription == subscription):
            dead.setdefault(record.doc_id, []).append(record)
    selection = _BatchSelection(done, dead, handler)
    generations = _Generations(store)
    now = datetime.now(UTC)
    found = 0
    async for original in store.iter_documents(batch_id):
        found += 1
        answered = selection.unanswered(original.doc_id)
        if only == "failed" and not answered:
            continue
        if only == "missing" and not selection.missing(original.doc_id):
            continue
        key = f"{batch_id}:{original.doc_id}"
        routes: list[tuple[str, str | None, tuple[DeadLetterRecord, ...]]]
        if handler is not None:
            routes = [(key, subscription, answered)]
        elif only == "failed":
            # No handler named: each document goes only where it failed, never to the
            # subscriptions that finished it (they would redo it and write new versions).
            routes = [
                (f"{name}@{key}", name, tuple(r for r in answered if r.subscription == name))
                for name in sorted({record.subscription for record in answered})
            ]
        else:
            routes = [(key, None, answered)]
        for route_key, target, settles in routes:
            if limit and len(plan.messages) >= limit:
                break
            known, generation = await generations.next(batch_id, original.doc_id)
            envelope = original.model_copy(
                update={
                    "generation": generation,
                    "replay_of": message_id(batch_id, original.doc_id, known),
                    "replayed_at": now,
                    "target_subscription": target,
                }
            )
            plan.messages.append(PlannedMessage(route_key, envelope, settles=settles))
    if not found:
        raise ReplayError(f"batch {batch_id!r} has no recorded documents")
    plan.note = _batch_note(plan, only, handler)
    return plan


def _batch_note(plan: ReplayPlan, only: Only, handler: str | None) -> str | None:
    """What a batch replay without ``--handler`` does, in words (it is easy to overlook)."""
    if handler is not None or not plan.messages:
        return None
    if only == "failed":
        routes = Counter(route_name(planned.envelope) for planned in plan.messages)
        spread = ", ".join(f"{name}: {count}" for name, count in sorted(routes.items()))
        return (
            "no --handler: each failed document goes only to the subscription(s) it failed in "
            f"({spread}); the others keep their results"
        )
    topic = plan.messages[0].envelope.topic
    return (
        f"no --handler: the documents go to every subscription of topic {topic!r} (broadcast), "
        "and handlers that had finished them write new result versions; --handler H sends "
        "them to H alone"
    )


@dataclass(frozen=True)
class _BatchSelection:
    """Which of a batch's documents failed or are missing, for one handler or for all.

    ``done`` maps a consumer to the documents it has a (not rolled back) result for, ``dead``
    a document to its dead letters. A dead letter's consumer is its handler, or its
    subscription when the broker dead-lettered it and nobody named the handler.
    """

    done: dict[str, set[str]]
    dead: dict[str, list[DeadLetterRecord]]
    handler: str | None

    def consumer(self, record: DeadLetterRecord) -> str:
        return self.handler or record.handler or record.subscription

    def unanswered(self, doc_id: str) -> tuple[DeadLetterRecord, ...]:
        """The document's dead letters that no result of their consumer answered since."""
        return tuple(
            record
            for record in self.dead.get(doc_id, [])
            if doc_id not in self.done.get(self.consumer(record), set())
        )

    def missing(self, doc_id: str) -> bool:
        """Some consumer has neither a result nor a dead letter for the document."""
        consumers = {self.handler} if self.handler else set(self.done)
        if not self.handler:
            consumers |= {self.consumer(r) for records in self.dead.values() for r in records}
        if not consumers:
            return True
        dead_in = {self.consumer(r) for r in self.dead.get(doc_id, [])}
        return any(
            doc_id not in self.done.get(name, set()) and name not in dead_in for name in consumers
        )


async def subscription_of(
    store: Store, handler: str, *, handlers_module: str | None = None
) -> tuple[str, str | None]:
    """The (subscription, topic) a handler consumes.

    Looked up in ``handlers_module`` (a module name or ``.py`` path, as ``docbus worker
    --handlers`` takes) when given, else in the handler's own dead letters, which name it.
    """
    if handlers_module is not None:
        from handlers.runtime import HandlerDiscoveryError, discover_handlers

        try:
            registered = discover_handlers(handlers_module)
        except HandlerDiscoveryError as exc:
            raise ReplayError(str(exc)) from exc
        for item in registered:
            if item.spec.name == handler:
                return item.spec.subscription, item.spec.topic
        raise ReplayError(f"no handler named {handler!r} in {handlers_module}")
    named = await store.dead_letters(DeadLetterFilter(handler=handler), limit=50)
    seen = {(r.subscription, r.topic) for r in named}
    if len({sub for sub, _ in seen}) == 1:
        return next(iter(seen))
    raise ReplayError(
        f"cannot tell which subscription handler {handler!r} consumes: "
        "pass --subscription NAME or --handlers MODULE"
    )


async def send_replay(
    plan: ReplayPlan,
    *,
    store: Store,
    sender_factory: SenderFactory,
    rate: float | None = None,
    replay_id: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    retry: SendRetry = DEFAULT_RETRY,
    llm_mode: LLMMode | None = None,
) -> ReplayReport:
    """Send a plan (allocating each document's generation now) and record the run.

    The replayed documents' LLM calls run in their batch's mode (kept on its record since
    publish); ``llm_mode`` sets that mode on every batch of the plan first, before any message
    goes (the workers read it from the record). Raises :class:`ReplayError`, sending nothing,
    when one of those batches has no record to keep it on.

    Messages go in batches through :class:`publisher.sending.BatchSender`; ``retry`` is how
    often a transiently failed batch is tried (the publisher's defaults).

    ``on_progress(n)`` is called as ``n`` more planned messages have been handled (sent or
    failed). Raises :class:`~docbus.servicebus.MessagingError` when a topic cannot be opened at all;
    messages that fail to send are reported in ``record.failed`` (their claims released).
    """
    started = time.monotonic()
    if llm_mode is not None:
        await _set_llm_mode(store, plan, llm_mode)
    record = ReplayRecord(
        id=replay_id or new_replay_id(),
        kind=plan.kind,
        filters=plan.filters,
        status="running",
        llm_mode=llm_mode,
    )
    record.skipped.update(plan.skipped)
    # Recorded before the first message goes: a run that dies half-way is still known (its
    # results carry its id, so it can be rolled back).
    await store.record_replay(record)
    error: str | None = None
    bucket = TokenBucket(rate) if rate else None
    chunk_size = max(1, min(SEND_CHUNK, int(rate))) if rate else SEND_CHUNK
    by_topic: dict[str, list[PlannedMessage]] = {}
    for planned in plan.messages:
        by_topic.setdefault(planned.envelope.topic, []).append(planned)
    try:
        for topic, planned_messages in by_topic.items():
            with translated(f"open a sender for topic {topic!r}"):
                async with sender_factory(topic) as sender:
                    for start in range(0, len(planned_messages), chunk_size):
                        chunk = planned_messages[start : start + chunk_size]
                        if bucket is not None:
                            await bucket.take(len(chunk))
                        await _send_chunk(store, sender, chunk, record, retry)
                        if on_progress is not None:
                            on_progress(len(chunk))
    except BaseException as exc:
        error = str(exc) or type(exc).__name__
        raise
    finally:
        record = record.model_copy(
            update={
                "count": len(record.items),
                "finished_at": datetime.now(UTC),
                "status": replay_status(len(record.items), len(record.failed), error),
                "error": error,
            }
        )
        await store.record_replay(record)
    logger.info(
        "replay %s: %d sent, %d skipped, %d failed",
        record.id, record.count, len(record.skipped), len(record.failed),
    )  # fmt: skip
    return ReplayReport(record, time.monotonic() - started)


async def _set_llm_mode(store: Store, plan: ReplayPlan, llm_mode: LLMMode) -> None:
    batch_ids = sorted({planned.envelope.batch_id for planned in plan.messages})
    unknown = [b for b in batch_ids if await store.get_batch(b) is None]
    if unknown:
        raise ReplayError(
            f"batch {unknown[0]} has no record to keep --llm-mode on: replay it without "
            "--llm-mode (its handlers' or the workers' default applies)"
        )
    for batch_id in batch_ids:
        await store.set_batch_llm_mode(batch_id, llm_mode)


def replay_status(
    sent: int, failed: int, error: str | None
) -> Literal["done", "partial", "failed"]:
    """How a replay run ended: ``done`` (everything planned went), ``partial`` (some messages
    went, others failed or the run stopped), ``failed`` (nothing went, and something failed)."""
    if error is None and not failed:
        return "done"
    return "partial" if sent else "failed"


@dataclass
class _Ready:
    planned: PlannedMessage
    envelope: Envelope
    message: ServiceBusMessage
    claimed_at: datetime | None


async def _send_chunk(
    store: Store,
    sender: MessageSender,
    chunk: Sequence[PlannedMessage],
    record: ReplayRecord,
    retry: SendRetry,
) -> None:
    """Claim, allocate generations, build and send one chunk; account for every message."""
    ready: list[_Ready] = []
    for planned in chunk:
        claimed_at: datetime | None = None
        if planned.dead_letter is not None:
            claimed_at = datetime.now(UTC)
            if not await store.claim_dead_letter_replay(planned.dead_letter, claimed_at):
                record.skipped[planned.key] = "replayed meanwhile by another run"
                continue
        base = planned.envelope
        generation = await store.next_generation(base.batch_id, base.doc_id)
        # The run's id travels with the message, so its results can be rolled back as one.
        envelope = base.model_copy(update={"generation": generation, "run_id": record.id})
        ready.append(_Ready(planned, envelope, build_message(envelope), claimed_at))

    async def failed(group: list[_Ready], reason: str) -> None:
        for entry in group:
            record.failed[entry.planned.key] = reason
            if entry.planned.dead_letter is not None and entry.claimed_at is not None:
                await store.release_dead_letter_replay(entry.planned.dead_letter, entry.claimed_at)

    async def sent(group: list[_Ready]) -> None:
        for entry in group:
            for answered in entry.planned.settles:
                await store.mark_dead_letter_replayed(answered)
            envelope = entry.envelope
            record.items.append(
                ReplayItem(
                    batch_id=envelope.batch_id,
                    doc_id=envelope.doc_id,
                    generation=envelope.generation,
                    message_id=str(entry.message.message_id),
                    topic=envelope.topic,
                    target_subscription=envelope.target_subscription,
                    replay_of=envelope.replay_of,
                    dead_letter=entry.planned.dead_letter.id if entry.planned.dead_letter else None,
                )
            )

    batches: BatchSender[_Ready] = BatchSender(sender, retry=retry, on_sent=sent, on_failed=failed)
    for entry in ready:
        await batches.add(entry, entry.message)
    await batches.flush()
