"""Publishing: record a batch of documents in Mongo and send them to a topic as envelopes.

:func:`publish_documents` checks each document (:mod:`publisher.inputs`), builds its
:class:`~docbus.envelope.Envelope` — inline, or by claim-check when the message would exceed the
entity's size limit (content in the ``payloads`` collection, the message carries a reference) —
records the batch and every document in Mongo (:class:`~docbus.store.Store`) *before* sending,
then sends with ``ServiceBusSender.create_message_batch()``, splitting at the size limit, on
several sender links at once. A batch the broker refuses as too large is sent again in halves
(down to single messages); a transient failure is retried with backoff
(``PublisherSettings.send_attempts``), safely, since message ids are fixed and duplicate detection
drops a copy that did arrive. Documents are recorded and sent in chunks, so memory stays bounded
however long the input. ``on_progress`` hears how many documents each sent (or failed, or
skipped) message batch settled — the CLI (:mod:`docbus.cli.publish`) draws the progress bar and
the closing summary; this module never prints. Messages are built by
:func:`docbus.servicebus.build_message`; replays reuse this path.

Before recording anything it checks, at once and beside opening the sender links
(:mod:`publisher.preflight`): the topic against the topology, its subscriptions on the broker,
that the broker answers at all, and whether the batch id was used before (refused unless
resuming).

Invalid input: with ``skip_invalid=False`` (the default) a list of documents is checked in full
first and nothing is sent if any is invalid; a stream (generator) is checked as it is read, so
publishing stops at the first invalid document (validate streams first with
:func:`publisher.loaders.scan_documents`, as ``docbus publish`` does). With ``skip_invalid=True``
the valid documents are sent and every skipped one is listed in the report.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import zlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from azure.servicebus import ServiceBusMessage

from docbus.envelope import BATCH_ID_PATTERN, Envelope, claim_check_for, new_batch_id
from docbus.records import LLM_MODES, LLMMode
from docbus.servicebus import (
    build_message,
    fits_in_message,
    probe_endpoint,
    servicebus_client,
    sized_message,
    topic_senders,
    translated,
)
from docbus.settings import Settings
from docbus.store import Store
from docbus.topology import SubscriptionSpec, Topology
from publisher.inputs import DocumentChecker, DocumentInput, InputProblem, InvalidInput, as_input
from publisher.llm_mode import batch_mode_refusal
from publisher.preflight import (
    PublishRefused,
    ResumePlan,
    check_subscriptions,
    existing_batch,
    first_failure,
    topic_receivers,
)
from publisher.sending import BatchSender, MessageSender, SendAbort, SendRetry

__all__ = [
    "MessageSender",
    "PublishRefused",
    "PublishReport",
    "SenderFactory",
    "publish_documents",
]

logger = logging.getLogger(__name__)

DocumentLike = DocumentInput | str | Mapping[str, Any]

_SIZE_MARGIN = 512
"""Bytes kept free below the size limit when deciding on claim-check (tracing headers etc.)."""


SenderFactory = Callable[[str], AbstractAsyncContextManager[MessageSender]]
"""Given a topic name, an async context manager yielding a sender (one AMQP link each)."""


@dataclass
class PublishReport:
    """What a publish did; ``ok`` is False whenever anything was skipped or failed."""

    batch_id: str
    topic: str
    dry_run: bool = False
    documents: int = 0
    """Valid documents accepted for this batch (recorded in Mongo unless dry run)."""
    sent: int = 0
    claim_checked: int = 0
    message_batches: int = 0
    max_message_size: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """doc_id → why its message was not sent."""
    problems: list[InputProblem] = field(default_factory=list)
    """Invalid inputs that were skipped."""
    already_sent: int = 0
    """Resuming: documents the batch holds that reached the topic (not sent again)."""
    resent: int = 0
    """Resuming: recorded documents without any outcome, sent again under their message id."""
    warnings: list[str] = field(default_factory=list)
    """What could not be checked (e.g. send-only credentials cannot look at subscriptions)."""
    duration: float = 0.0
    llm_mode: str | None = None
    """The LLM mode kept on the batch record (``None``: the handlers' or workers' default)."""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``docbus publish --json``)."""
        return {
            "batch_id": self.batch_id,
            "topic": self.topic,
            "dry_run": self.dry_run,
            "ok": self.ok,
            **self.counts,
            "message_batches": self.message_batches,
            "already_sent": self.already_sent,
            "resent": self.resent,
            "max_message_size": self.max_message_size,
            "duration_s": round(self.duration, 3),
            "llm_mode": self.llm_mode,
            "skipped_inputs": [p.model_dump() for p in self.problems],
            "failed_documents": dict(self.failed),
            "warnings": list(self.warnings),
        }

    @property
    def counts(self) -> dict[str, int]:
        return {
            "documents": self.documents,
            "sent": self.sent,
            "claim_checked": self.claim_checked,
            "failed": len(self.failed),
            "skipped": len(self.problems),
        }


@dataclass
class _Envelopes:
    """The claim-check decision, shared by real and dry runs."""

    topic: str
    batch_id: str
    limit: int
    store: Store | None

    async def build(self, doc: DocumentInput) -> tuple[Envelope, ServiceBusMessage, bool]:
        assert doc.doc_id is not None
        fields: dict[str, Any] = {
            "doc_id": doc.doc_id,
            "batch_id": self.batch_id,
            "topic": self.topic,
            "content_type": doc.content_type,
            "metadata": doc.metadata,
            "source": doc.source,
            "session_id": doc.session_id,
        }
        envelope = Envelope(content=doc.text, **fields)
        message, bound = sized_message(envelope)
        if fits_in_message(message, self.limit - _SIZE_MARGIN, bound):
            return envelope, message, False
        if self.store is not None:
            ref = await self.store.put_payload(doc.text)
        else:  # dry run: the reference a real run would store
            ref = claim_check_for(doc.text)
        envelope = Envelope(claim_check=ref, **fields)
        return envelope, build_message(envelope), True


async def _aiter(
    docs: Iterable[DocumentLike] | AsyncIterable[DocumentLike],
) -> AsyncIterator[DocumentLike]:
    if isinstance(docs, AsyncIterable):
        async for item in docs:
            yield item
    else:
        for item in docs:
            yield item


def _check(
    checker: DocumentChecker | None, item: DocumentLike, index: int
) -> tuple[DocumentInput | None, InputProblem | None]:
    try:
        doc = as_input(item)
    except ValueError as exc:
        return None, InputProblem(file="<input>", line=index, reason=str(exc))
    if checker is None:  # checked by the loader already
        return doc, None
    if doc.source is not None:
        return checker.check(doc, doc.source.path, doc.source.line)
    return checker.check(doc, "<input>", index)


async def publish_documents(  # noqa: PLR0913 - keyword-only options of the public API
    docs: Iterable[DocumentLike] | AsyncIterable[DocumentLike],
    *,
    topic: str,
    batch_id: str | None = None,
    settings: Settings | None = None,
    sender_factory: SenderFactory | None = None,
    store: Store | None = None,
    session_key: str | None = None,
    skip_invalid: bool = False,
    dry_run: bool = False,
    source: Sequence[str] = ("python",),
    topology: Topology | None = None,
    resume: bool = False,
    on_progress: Callable[[int], None] | None = None,
    checked: bool = False,
    llm_mode: LLMMode | None = None,
) -> PublishReport:
    """Publish documents to ``topic`` as one batch; returns what happened.

    ``docs`` holds strings, mappings with :class:`~publisher.inputs.DocumentInput` fields, or
    ``DocumentInput`` objects (what the loaders yield). ``store`` and ``sender_factory`` default
    to ones built from ``settings`` (and closed again); pass your own to share connections.
    ``session_key`` names the metadata field whose value becomes each message's session id.
    A dry run checks and sizes everything but records and sends nothing. ``on_progress(n)`` is
    called as ``n`` more documents are settled: sent, failed to send, or (resuming) found sent
    already.

    With ``topology`` (:func:`docbus.topology.load_topology`), a topic it does not know, or
    whose subscriptions would not take the messages, is refused; so is a subscription missing
    on the broker (checked when ``settings`` name the broker). A batch id already used is
    refused unless ``resume``: then only what the batch is missing is sent (new documents, and
    recorded ones that have no result or dead letter yet); a document that differs from what
    the batch recorded is reported as a problem. Every refusal records and sends nothing.

    ``checked=True`` says ``docs`` come from :func:`publisher.loaders.iter_documents`, which has
    checked them (ids resolved, duplicates left out): they are not checked again, so the run
    keeps one duplicate-id checker, the loader's compact one, instead of a second holding every
    id in full.

    ``llm_mode`` (``live`` or ``batch``, :mod:`publisher.llm_mode`) is kept on the batch
    record: the workers run the batch's LLM calls in that mode, and a replay keeps it. ``None``
    leaves it to each handler's default, else the worker's setting. Batch mode is refused
    (:class:`PublishRefused`) for a topic whose ``topology`` has a session subscription (an
    ordered handler).

    Raises :class:`~publisher.inputs.InvalidInput` on invalid input unless ``skip_invalid``,
    :class:`~publisher.preflight.PublishRefused` for the refusals above, and
    :class:`~docbus.servicebus.MessagingError` when the broker refuses the topic itself
    (unknown topic, bad credentials, unreachable); other send failures are reported per
    document.
    """
    settings = settings or Settings()
    batch_id = batch_id or new_batch_id()
    _check_batch_id(batch_id)
    _check_llm_mode(topic, llm_mode, topology)
    report = PublishReport(batch_id=batch_id, topic=topic, dry_run=dry_run, llm_mode=llm_mode)
    receivers = topic_receivers(topology, topic) if topology is not None else ()
    checker = None if checked else DocumentChecker(session_key=session_key)
    started = time.monotonic()

    source_docs: Iterable[DocumentLike] | AsyncIterable[DocumentLike] = docs
    listed = None
    if isinstance(docs, Sequence) and not isinstance(docs, str):
        # A list is checked in full before anything is recorded or sent, while the links open.
        listed = _ListCheck.start(docs, checker, report, skip_invalid)
        checker = None  # checked: ids resolved, duplicates left out
    check = listed or _ListCheck(None)

    closing: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack:
        stack.push_async_callback(_finish, closing)
        stack.push_async_callback(check.stop)
        senders: list[MessageSender] = []
        plan: ResumePlan | None = None
        if dry_run:
            limit = settings.publisher.max_message_size
            source_docs = await check.documents(source_docs)
        else:
            if store is None:
                store = await check.first(_entered(stack, lambda: Store.from_settings(settings)))
            if sender_factory is None:
                client = await check.first(_entered(stack, lambda: servicebus_client(settings)))
                sender_factory = topic_senders(client)
            limit, plan, warnings = await check.first(_preflight(
                stack, settings, store, sender_factory, topic, batch_id, resume, receivers,
                closing, senders,
            ))  # fmt: skip
            report.warnings.extend(warnings)
            source_docs = await check.documents(source_docs)
            await store.record_batch(batch_id, topic=topic, source=source, llm_mode=llm_mode)
        report.max_message_size = limit
        envelopes = _Envelopes(topic, batch_id, limit, None if dry_run else store)

        advance = on_progress or _ignore
        queues: list[asyncio.Queue[tuple[str, ServiceBusMessage] | None]] = [
            asyncio.Queue(maxsize=settings.publisher.chunk_size) for _ in senders
        ]

        async def sent(ids: list[str]) -> None:
            report.sent += len(ids)
            report.message_batches += 1
            advance(len(ids))

        async def failed(ids: list[str], reason: str) -> None:
            for doc_id in ids:
                report.failed[doc_id] = reason
            advance(len(ids))

        abort = SendAbort()
        retry = SendRetry.of(settings.publisher)
        lanes = [
            asyncio.create_task(_lane(s, q, abort, sent, failed, retry))
            for s, q in zip(senders, queues, strict=True)
        ]
        recorder = _Recorder(None if dry_run else store, queues)
        stop_error: InvalidInput | None = None
        try:
            feed = _Feed(
                checker=checker, plan=plan, report=report, envelopes=envelopes,
                recorder=recorder, abort=abort, advance=advance,
                stop_at_problem=not skip_invalid and plan is None,
                chunk_size=settings.publisher.chunk_size,
            )  # fmt: skip
            stop_error = await feed.run(source_docs)
            await recorder.drain()
            for queue in queues:
                await queue.put(None)
            await asyncio.gather(*lanes)
            if abort.error is not None:
                raise abort.error
        except BaseException:
            await _abandon(lanes, recorder, None if dry_run else store, report)
            raise
        report.duration = time.monotonic() - started
        if not dry_run and store is not None:
            status = "published" if not report.failed and stop_error is None else "failed"
            await store.update_batch(batch_id, status=status, counts=_batch_counts(report, plan))

    logger.info(
        "batch %s: %d documents, %d sent, %d by claim-check, %d skipped, %d failed%s",
        batch_id, report.documents, report.sent, report.claim_checked,
        len(report.problems), len(report.failed), " (dry run)" if dry_run else "",
    )  # fmt: skip
    if stop_error is not None:
        raise stop_error
    return report


@dataclass
class _Feed:
    """Check, build and record documents chunk by chunk, handing them to the lanes."""

    checker: DocumentChecker | None
    plan: ResumePlan | None
    report: PublishReport
    envelopes: _Envelopes
    recorder: _Recorder
    abort: SendAbort
    advance: Callable[[int], None]
    stop_at_problem: bool
    chunk_size: int

    async def run(
        self, docs: Iterable[DocumentLike] | AsyncIterable[DocumentLike]
    ) -> InvalidInput | None:
        """Feed every document; the error to raise at the end when a problem stops the run."""
        report = self.report
        chunk: list[_Outgoing] = []
        # Small chunks first, so the first messages leave (and the lanes get going) after a
        # few documents are built and recorded, not a whole chunk; then up to `chunk_size`.
        size = min(self.chunk_size, _FIRST_CHUNK)
        index = 0
        stop_error: InvalidInput | None = None
        async for item in _aiter(docs):
            if self.abort.error is not None:
                break
            index += 1
            doc, problem, record = _admit(self.checker, item, index, self.plan, report)
            if doc is None and problem is None:  # resuming: sent already
                self.advance(1)
                continue
            if problem is not None:
                report.problems.append(problem)
                if self.stop_at_problem:
                    stop_error = InvalidInput(report.problems, sent=report.documents)
                    break
                continue
            assert doc is not None
            envelope, message, claim_checked = await self.envelopes.build(doc)
            report.documents += 1
            report.claim_checked += claim_checked
            chunk.append(_Outgoing(envelope, message, record))
            if len(chunk) >= size:
                await self.recorder.add(chunk)
                chunk = []
                size = min(self.chunk_size, size * 2)
        await self.recorder.add(chunk)
        return stop_error


async def _abandon(
    lanes: list[asyncio.Task[None]],
    recorder: _Recorder,
    store: Store | None,
    report: PublishReport,
) -> None:
    """A run that stops on an error: stop the lanes and the recorder, mark the batch failed."""
    pending = {lane for lane in lanes if not lane.done()}
    while pending:
        # Cancelled again until they end: the SDK can swallow a cancellation that lands while
        # a send completes (asyncio.wait_for in Python 3.11), and a lane that lost its
        # cancellation would wait on its queue for ever.
        for lane in pending:
            lane.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    await asyncio.gather(*lanes, return_exceptions=True)
    await recorder.abandon()
    if store is not None:
        with contextlib.suppress(Exception):
            await store.update_batch(report.batch_id, status="failed", counts=report.counts)


async def _check_list(
    docs: Sequence[DocumentLike],
    checker: DocumentChecker | None,
    report: PublishReport,
    skip_invalid: bool,
) -> list[DocumentInput]:
    """The valid documents of a list, its problems in ``report``; raise unless ``skip_invalid``.

    Lets the event loop run between slices of the list: the links open meanwhile."""
    valid: list[DocumentInput] = []
    for index, item in enumerate(docs, start=1):
        doc, problem = _check(checker, item, index)
        if problem is not None:
            report.problems.append(problem)
        elif doc is not None:
            valid.append(doc)
        if index % _CHECK_SLICE == 0:
            await asyncio.sleep(0)
    if report.problems and not skip_invalid:
        raise InvalidInput(report.problems)
    return valid


_CHECK_SLICE = 256
"""Documents of a list checked between two turns of the event loop (a few milliseconds)."""


_R = TypeVar("_R")


async def _entered(
    stack: AsyncExitStack, make: Callable[[], AbstractAsyncContextManager[_R]]
) -> _R:
    """``make()`` entered on ``stack`` (a settings error in ``make`` raised when awaited)."""
    return await stack.enter_async_context(make())


class _ListCheck:
    """The check of a list of documents, running while the publish connects and opens links.

    Whatever else fails meanwhile, invalid input is what the publish reports (as it did when
    the list was checked before connecting): it is the caller's to fix first.
    """

    def __init__(self, task: asyncio.Task[list[DocumentInput]] | None) -> None:
        self._task = task

    @classmethod
    def start(
        cls,
        docs: Sequence[DocumentLike],
        checker: DocumentChecker | None,
        report: PublishReport,
        skip_invalid: bool,
    ) -> _ListCheck:
        return cls(asyncio.ensure_future(_check_list(docs, checker, report, skip_invalid)))

    async def first(self, step: Awaitable[_R]) -> _R:
        """``step``'s result; when it fails, the list's invalid input instead, if any."""
        try:
            return await step
        except Exception:
            if self._task is not None:
                await asyncio.wait({self._task})
                error = None if self._task.cancelled() else self._task.exception()
                if isinstance(error, InvalidInput):
                    raise error from None
            raise

    async def documents(
        self, docs: Iterable[DocumentLike] | AsyncIterable[DocumentLike]
    ) -> Iterable[DocumentLike] | AsyncIterable[DocumentLike]:
        """The list's valid documents (raises :class:`InvalidInput`); a stream as it is."""
        return docs if self._task is None else await self._task

    async def stop(self) -> None:
        """The publish ends (or failed): a check still running is of no use any more."""
        if self._task is not None:
            self._task.cancel()  # (nothing, if it has ended)
            await asyncio.gather(self._task, return_exceptions=True)


def _admit(
    checker: DocumentChecker | None,
    item: DocumentLike,
    index: int,
    plan: ResumePlan | None,
    report: PublishReport,
) -> tuple[DocumentInput | None, InputProblem | None, bool]:
    """(document, None, record it?) to send, (None, problem, False) to report, or (None, None,
    False) for a document a resumed batch has sent already."""
    doc, problem = _check(checker, item, index)
    if problem is not None or doc is None:
        return None, problem, False
    if plan is None:
        return doc, None, True
    problem, record = _resume(plan, doc, report)
    if problem is not None:
        return None, problem, False
    if record is None:
        return None, None, False
    return doc, None, record


async def _preflight(
    stack: AsyncExitStack,
    settings: Settings,
    store: Store,
    factory: SenderFactory,
    topic: str,
    batch_id: str,
    resume: bool,
    receivers: tuple[SubscriptionSpec, ...],
    closing: list[asyncio.Task[None]],
    senders: list[MessageSender],
) -> tuple[int, ResumePlan | None, list[str]]:
    """Open the sender links, read the batch's state and check the broker, all at once.

    Returns the message size limit, the resume plan (None for a new batch) and warnings about
    the broker's subscriptions; the links land in ``senders`` and close with ``stack``.
    """

    async def open_senders() -> int:
        # Every link opens before anything is recorded: a missing topic or a refused
        # credential fails here, leaving no half-published batch behind.
        with translated(f"open senders for topic {topic!r}"):
            links = await _open_links(factory, topic, settings.publisher.send_concurrency)
            stack.push_async_callback(_close_links, links)
            senders.extend(sender for sender, _ in links)
            return (await senders[0].create_message_batch()).max_size_in_bytes

    async def read_store() -> ResumePlan | None:
        await store.ensure_indexes()
        return await existing_batch(store, batch_id, topic, resume=resume)

    async def check_broker() -> list[str]:
        # Fail fast (the SDK retries an unreachable broker for ~12 s), then look.
        await probe_endpoint(settings)
        if not receivers:
            return []
        checks = servicebus_client(settings, retry_total=0)
        stack.push_async_callback(checks.close)
        return await check_subscriptions(checks, topic, receivers, closing)

    steps: list[Awaitable[Any]] = [open_senders(), read_store()]
    if settings.servicebus.configured:
        steps.append(check_broker())
    results = await first_failure(*steps)
    warnings: list[str] = results[2] if len(results) > 2 else []
    return results[0], results[1], warnings


def _resume(
    plan: ResumePlan, doc: DocumentInput, report: PublishReport
) -> tuple[InputProblem | None, bool | None]:
    """For a resumed batch: (problem, None), (None, record it?) to send, or (None, None) to skip."""
    assert doc.doc_id is not None
    decision = plan.decide(doc.doc_id, doc.text, doc.metadata, doc.content_type, doc.session_id)
    if decision == "done":
        report.already_sent += 1
        return None, None
    if decision == "resend":
        report.resent += 1
        return None, False
    if decision == "send":
        return None, True
    where = doc.source.path if doc.source is not None else "<input>"
    line = doc.source.line if doc.source is not None else None
    return InputProblem(file=where, line=line, reason=decision), None


def _batch_counts(report: PublishReport, plan: ResumePlan | None) -> dict[str, int]:
    """The batch record's figures; a resumed batch's cover every run, not just this one."""
    counts = report.counts
    if plan is not None:
        new = report.documents - report.resent
        counts["documents"] = len(plan.recorded) + new
        counts["sent"] = min(counts["documents"], report.sent + report.already_sent)
    return counts


async def _open_links(
    factory: SenderFactory, topic: str, count: int
) -> list[tuple[MessageSender, AsyncExitStack]]:
    """Open ``count`` sender links at once (each takes a connection and a token round trip)."""

    async def open_one() -> tuple[MessageSender, AsyncExitStack]:
        async with AsyncExitStack() as link:
            sender = await link.enter_async_context(factory(topic))
            return sender, link.pop_all()

    opened = await asyncio.gather(*(open_one() for _ in range(count)), return_exceptions=True)
    links = [item for item in opened if not isinstance(item, BaseException)]
    errors = [item for item in opened if isinstance(item, BaseException)]
    if errors:
        await _close_links(links)
        raise errors[0]
    return links


async def _close_links(links: list[tuple[MessageSender, AsyncExitStack]]) -> None:
    # At once: the SDK takes up to a second to close each link.
    await asyncio.gather(*(link.aclose() for _, link in links), return_exceptions=True)


async def _finish(closing: list[asyncio.Task[None]]) -> None:
    if closing:
        await asyncio.gather(*closing, return_exceptions=True)


def _check_batch_id(batch_id: str) -> None:
    import re

    if not re.match(BATCH_ID_PATTERN, batch_id):
        raise ValueError(
            f"invalid batch id {batch_id!r}: use up to 64 letters, digits, '.', '_' or '-'"
        )


def _check_llm_mode(topic: str, llm_mode: str | None, topology: Topology | None) -> None:
    if llm_mode is not None and llm_mode not in LLM_MODES:
        raise ValueError(f"unknown LLM mode {llm_mode!r}: use one of {', '.join(LLM_MODES)}")
    refusal = batch_mode_refusal(topic, llm_mode, topology=topology)
    if refusal is not None:
        raise PublishRefused(refusal)


def _ignore(count: int) -> None:
    """No one listens to the progress."""


_RECORDS_AHEAD = 2
"""Chunks whose durable insert may run while earlier chunks are built and sent."""

_FIRST_CHUNK = 64
"""Documents in a publish's first chunk; each next chunk is twice as large, up to the
``chunk_size`` setting."""


@dataclass(frozen=True)
class _Outgoing:
    """A document on its way: its envelope, its message, and whether to record it first."""

    envelope: Envelope
    message: ServiceBusMessage
    record: bool = True


class _Recorder:
    """Records chunks of documents ahead of sending them, never a message ahead of its record.

    :meth:`add` starts a chunk's durable insert (``w: majority, j: true``), hands to the lanes
    every oldest chunk whose insert is acknowledged already and, while more than
    :data:`_RECORDS_AHEAD` inserts are running, waits for the oldest one's: journal commits
    overlap building the next chunks and sending the earlier ones, a chunk leaves as soon as
    it is recorded, and a message never leaves before its record is stored.
    Chunks are handed over in input order. A failed insert raises at the hand-over of its
    chunk, so none of that chunk's messages (nor any later one's) is sent.
    """

    def __init__(
        self,
        store: Store | None,
        queues: list[asyncio.Queue[tuple[str, ServiceBusMessage] | None]],
    ) -> None:
        self._store = store
        self._queues = queues
        self._ahead: collections.deque[tuple[asyncio.Task[int] | None, list[_Outgoing]]] = (
            collections.deque()
        )

    async def add(self, chunk: list[_Outgoing]) -> None:
        if not chunk:
            return
        insert = None
        if self._store is not None:
            records = [item.envelope for item in chunk if item.record]
            insert = asyncio.ensure_future(self._store.record_documents(records))
        self._ahead.append((insert, chunk))
        while self._ahead and (len(self._ahead) > _RECORDS_AHEAD or _done(self._ahead[0][0])):
            await self._hand_over(*self._ahead.popleft())

    async def drain(self) -> None:
        """Hand over the remaining chunks, each after its insert is acknowledged."""
        while self._ahead:
            await self._hand_over(*self._ahead.popleft())

    async def abandon(self) -> None:
        """Publishing failed: stop the inserts still running (their chunks are never sent)."""
        inserts = [insert for insert, _ in self._ahead if insert is not None]
        self._ahead.clear()
        for insert in inserts:
            insert.cancel()
        await asyncio.gather(*inserts, return_exceptions=True)

    async def _hand_over(self, insert: asyncio.Task[int] | None, chunk: list[_Outgoing]) -> None:
        """Messages of one session always take the same lane, and a lane sends its batches one
        after the other, so documents of a session reach the topic in input order."""
        if insert is not None:
            await insert
        if not self._queues:  # dry run
            return
        for position, item in enumerate(chunk):
            envelope = item.envelope
            if envelope.session_id is not None:
                lane = zlib.crc32(envelope.session_id.encode("utf-8")) % len(self._queues)
            else:
                lane = position % len(self._queues)
            await self._queues[lane].put((envelope.doc_id, item.message))


def _done(insert: asyncio.Task[int] | None) -> bool:
    """Whether a chunk's insert has ended (a failed one too: the hand-over raises its error)."""
    return insert is None or insert.done()


async def _lane(
    sender: MessageSender,
    queue: asyncio.Queue[tuple[str, ServiceBusMessage] | None],
    abort: SendAbort,
    sent: Callable[[list[str]], Awaitable[None]],
    failed: Callable[[list[str], str], Awaitable[None]],
    retry: SendRetry,
) -> None:
    """One sender link: send what the queue brings in batches (:mod:`publisher.sending`), a
    batch when it is full or when the queue runs dry.

    The lane always drains the queue to its end marker, so the producer never blocks on a full
    queue; after an abort the batch sender only reports what it takes as failed.
    """

    batches: BatchSender[str] = BatchSender(
        sender,
        retry=retry,
        on_sent=sent,
        on_failed=failed,
        abort=abort,
        too_large="message exceeds the size limit even by claim-check",
    )
    while True:
        if queue.empty():
            # Nothing more is ready (the next chunk waits for its record): send what is here
            # rather than idle until the batch is full.
            await batches.flush()
        if (item := await queue.get()) is None:
            break
        await batches.add(*item)
    await batches.flush()
