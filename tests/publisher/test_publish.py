"""publish_documents up to the broker: checks, claim-check, Mongo records, batching, concurrency.

The broker side is a recording sender behind the publisher's ``sender_factory`` seam, using the
real SDK's ``ServiceBusMessageBatch`` size accounting; end-to-end sends against the emulator
live in the integration tests. Mongo is a real SecantusDB.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusConnectionError,
)
from rich.console import Console

from docbus.cli.publish import report_table
from docbus.envelope import Envelope
from docbus.local.mongo import LocalMongo
from docbus.servicebus import MessagingEntityNotFound
from docbus.settings import PublisherSettings, Settings
from docbus.store import Store, StoreUnavailable
from docbus.topology import SubscriptionSpec, TopicSpec, Topology
from publisher import DocumentInput, InvalidInput, PublishRefused, publish_documents


class RecordingBatch(ServiceBusMessageBatch):
    def __init__(self, max_size_in_bytes: int) -> None:
        super().__init__(max_size_in_bytes=max_size_in_bytes)
        self.added: list[ServiceBusMessage] = []

    def add_message(self, message: Any) -> None:
        super().add_message(message)
        self.added.append(message)


class Broker:
    """Stands in for the topic: records each sent batch; optional hooks per send."""

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.limit = limit
        self.batches: list[list[ServiceBusMessage]] = []
        self.senders_opened = 0
        self.senders_closed = 0
        self.on_send: Any = None

    @property
    def messages(self) -> list[ServiceBusMessage]:
        return [m for batch in self.batches for m in batch]

    def envelopes(self) -> list[Envelope]:
        return [Envelope.from_bytes(b"".join(m.body)) for m in self.messages]

    @asynccontextmanager
    async def sender(self, topic: str) -> AsyncIterator[Sender]:
        self.senders_opened += 1
        try:
            yield Sender(self, self.senders_opened)
        finally:
            self.senders_closed += 1


class Sender:
    def __init__(self, broker: Broker, number: int) -> None:
        self.broker, self.number = broker, number

    async def create_message_batch(self, max_size_in_bytes: int | None = None) -> RecordingBatch:
        return RecordingBatch(max_size_in_bytes or self.broker.limit)

    async def send_messages(self, message: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if self.broker.on_send is not None:
            await self.broker.on_send(self, message)
        self.broker.batches.append(list(message.added))


def settings(concurrency: int = 2, chunk: int = 50, max_size: int = 64 * 1024) -> Settings:
    return Settings(
        publisher=PublisherSettings(
            send_concurrency=concurrency,
            chunk_size=chunk,
            max_message_size=max_size,
            send_retry_backoff=0.01,
        )
    )


def news(n: int, size: int = 200) -> list[DocumentInput]:
    return [
        DocumentInput(
            text=f"item {i}: " + "supplier news " * (size // 14),
            doc_id=f"n{i}",
            metadata={"supplier": f"s{i % 3}"},
        )
        for i in range(n)
    ]


async def test_documents_are_recorded_before_their_messages_are_sent(store: Store) -> None:
    broker = Broker(limit=4 * 1024)  # small batches: sends start while chunks are recorded
    seen_unrecorded: list[str] = []

    async def check_recorded(sender: Sender, batch: RecordingBatch) -> None:
        for message in batch.added:
            envelope = Envelope.from_bytes(b"".join(message.body))
            if await store.get_document(envelope.batch_id, envelope.doc_id) is None:
                seen_unrecorded.append(envelope.doc_id)

    broker.on_send = check_recorded
    report = await publish_documents(
        news(30, size=1000), topic="documents", batch_id="b1", settings=settings(chunk=5),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert len(broker.batches) > 3
    assert seen_unrecorded == []
    assert (report.documents, report.sent, report.ok) == (30, 30, True)
    batch = await store.get_batch("b1")
    assert batch is not None
    assert batch.status == "published"
    assert batch.counts == {
        "documents": 30, "sent": 30, "claim_checked": 0, "failed": 0, "skipped": 0,
    }  # fmt: skip
    assert (await store.batch_counts("b1")).published == 30


class HeldStore(Store):
    """The real store, whose ``hold``-th ``record_documents`` waits until released (or fails)."""

    def __init__(self, *args: Any, hold: int, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold, self.fail, self.calls = hold, fail, 0
        self.held, self.release = asyncio.Event(), asyncio.Event()

    async def record_documents(self, envelopes: Any) -> int:
        self.calls += 1
        if self.calls == self.hold:
            self.held.set()
            await self.release.wait()
            if self.fail:
                raise StoreUnavailable("record documents: the store went away")
        return await super().record_documents(envelopes)


@asynccontextmanager
async def held_store(
    mongo: LocalMongo, store: Store, hold: int, fail: bool = False
) -> AsyncIterator[HeldStore]:
    async with HeldStore(mongo.uri, store.database.name, timeout=5.0, hold=hold, fail=fail) as held:
        yield held


async def test_a_chunk_is_sent_while_the_next_is_recorded_and_never_before_its_own_record(
    store: Store, local_mongo: LocalMongo
) -> None:
    # Mongo holds the second chunk's insert: the first chunk is sent meanwhile (the lanes do
    # not idle on the commit), and nothing of the second or third chunk leaves before the second
    # chunk's record is stored, although the third's is already stored.
    broker = Broker()
    sent: list[str] = []
    unrecorded: list[str] = []
    first_chunk_sent = asyncio.Event()

    async def check(sender: Sender, batch: RecordingBatch) -> None:
        for message in batch.added:
            envelope = Envelope.from_bytes(b"".join(message.body))
            if await store.get_document(envelope.batch_id, envelope.doc_id) is None:
                unrecorded.append(envelope.doc_id)
            sent.append(envelope.doc_id)
        if len(sent) >= 10:
            first_chunk_sent.set()

    broker.on_send = check
    async with held_store(local_mongo, store, hold=2) as held:
        run = publish_documents(
            news(30), topic="documents", batch_id="b1", settings=settings(chunk=10),
            sender_factory=broker.sender, store=held,
        )  # fmt: skip
        publishing = asyncio.create_task(run)
        # a timeout here is the failure: the first chunk waited for the second one's record
        await asyncio.wait_for(asyncio.gather(held.held.wait(), first_chunk_sent.wait()), 10)
        assert sorted(sent) == sorted(f"n{i}" for i in range(10))
        held.release.set()
        report = await publishing
    assert (report.sent, report.ok) == (30, True)
    assert sorted(sent) == sorted(f"n{i}" for i in range(30))
    assert unrecorded == []


async def test_a_chunk_whose_record_fails_is_never_sent(
    store: Store, local_mongo: LocalMongo
) -> None:
    broker = Broker()
    async with held_store(local_mongo, store, hold=2, fail=True) as held:
        held.release.set()
        with pytest.raises(StoreUnavailable):
            await publish_documents(
                news(30), topic="documents", batch_id="b1", settings=settings(chunk=10),
                sender_factory=broker.sender, store=held,
            )  # fmt: skip
    sent = {e.doc_id for e in broker.envelopes()}
    assert sent <= {f"n{i}" for i in range(10)}
    for doc_id in sent:
        assert await store.get_document("b1", doc_id) is not None
    batch = await store.get_batch("b1")
    assert batch is not None and batch.status == "failed"


async def test_messages_carry_derived_ids_and_routing_properties(store: Store) -> None:
    broker = Broker()
    await publish_documents(
        news(6), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store, session_key="supplier",
    )  # fmt: skip
    by_id = {str(m.message_id): m for m in broker.messages}
    assert sorted(by_id) == sorted(f"b1:n{i}:0" for i in range(6))
    message = by_id["b1:n4:0"]
    assert message.session_id == "s1"
    assert message.content_type == "application/json"
    assert message.subject == "documents"
    props = {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in (message.application_properties or {}).items()
    }
    assert props["docbus-route"] == "*"
    assert (props["batch_id"], props["doc_id"], props["generation"]) == ("b1", "n4", 0)


async def test_batches_split_at_the_size_limit(store: Store) -> None:
    broker = Broker(limit=8 * 1024)
    report = await publish_documents(
        news(40, size=1000), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert report.sent == 40
    assert len(broker.batches) == report.message_batches > 5
    assert sorted(e.doc_id for e in broker.envelopes()) == sorted(f"n{i}" for i in range(40))
    for batch in broker.batches:
        probe = ServiceBusMessageBatch(max_size_in_bytes=broker.limit)
        for message in batch:
            probe.add_message(message)  # raises if a sent batch exceeded the limit


async def test_large_documents_travel_by_claim_check(store: Store) -> None:
    broker = Broker(limit=64 * 1024)
    big = "Q3 supplier audit. " * 60_000  # ~1.1 MB
    report = await publish_documents(
        [DocumentInput(text=big, doc_id="big"), DocumentInput(text="small", doc_id="small")],
        topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert (report.sent, report.claim_checked) == (2, 1)
    envelopes = {e.doc_id: e for e in broker.envelopes()}
    assert envelopes["small"].content == "small"
    ref = envelopes["big"].claim_check
    assert envelopes["big"].content is None and ref is not None
    assert await store.load_payload(ref) == big
    assert max(len(b"".join(m.body)) for m in broker.messages) < 4096
    recorded = await store.get_document("b1", "big")
    assert recorded is not None and recorded.claim_check == ref


async def test_several_batches_are_in_flight_at_once(store: Store) -> None:
    broker = Broker(limit=4 * 1024)
    in_flight, peak = 0, 0
    both_in_flight = asyncio.Event()

    async def overlap(sender: Sender, batch: RecordingBatch) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= 2:
            both_in_flight.set()
        # hold the first send until a second one has started; fails by timeout otherwise
        await asyncio.wait_for(both_in_flight.wait(), timeout=5)
        in_flight -= 1

    broker.on_send = overlap
    await publish_documents(
        news(30, size=1000), topic="documents", batch_id="b1", settings=settings(concurrency=3),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert broker.senders_opened == 3
    assert peak >= 2


async def test_invalid_input_in_a_list_sends_and_records_nothing(store: Store) -> None:
    broker = Broker()
    docs: list[Any] = [
        "good one",
        "",
        {"text": "ok", "doc_id": "x"},
        {"text": "dup", "doc_id": "x"},
    ]
    with pytest.raises(InvalidInput) as caught:
        await publish_documents(
            docs, topic="documents", batch_id="b1", settings=settings(),
            sender_factory=broker.sender, store=store,
        )  # fmt: skip
    assert [str(p) for p in caught.value.problems] == [
        "<input>:2: empty document",
        "<input>:4: duplicate id 'x' (first at <input>:3)",
    ]
    assert "nothing was sent" in str(caught.value)
    # (the links open while the list is checked, and are closed again unused)
    assert broker.batches == [] and broker.senders_closed == broker.senders_opened
    assert await store.get_batch("b1") is None


async def test_values_json_or_mongo_cannot_carry_are_problems_before_anything_is_recorded(
    store: Store,
) -> None:
    broker = Broker()
    docs: list[Any] = [
        {"text": "fine", "doc_id": "ok"},
        {"text": "x", "doc_id": "big-int", "metadata": {"n": 2**64}},
        {"text": "x", "doc_id": "nul", "metadata": {"a\0b": 1}},
        {"text": "bad \ud800 text", "doc_id": "surrogate"},
        {"text": "x", "doc_id": "nan", "metadata": {"score": float("nan")}},
        {"text": "x", "doc_id": "set", "metadata": {"tags": {"a", "b"}}},
    ]
    with pytest.raises(InvalidInput) as caught:
        await publish_documents(
            docs, topic="documents", batch_id="b1", settings=settings(),
            sender_factory=broker.sender, store=store,
        )  # fmt: skip
    assert [p.line for p in caught.value.problems] == [2, 3, 4, 5, 6]
    assert broker.batches == [] and await store.get_batch("b1") is None
    report = await publish_documents(
        docs, topic="documents", batch_id="b2", settings=settings(),
        sender_factory=broker.sender, store=store, skip_invalid=True,
    )  # fmt: skip
    assert (report.sent, len(report.problems), report.failed) == (1, 5, {})
    assert [e.doc_id async for e in store.iter_documents("b2")] == ["ok"]


async def test_skip_invalid_sends_the_rest_and_lists_what_was_skipped(store: Store) -> None:
    broker = Broker()
    report = await publish_documents(
        ["good one", "   ", {"txt": "wrong key"}], topic="documents", batch_id="b1",
        settings=settings(), sender_factory=broker.sender, store=store,
        skip_invalid=True,
    )  # fmt: skip
    assert (report.sent, report.ok) == (1, False)
    assert [(p.line, p.reason.split(":")[0]) for p in report.problems] == [
        (2, "empty document"),
        (3, "text"),
    ]
    batch = await store.get_batch("b1")
    assert batch is not None and batch.counts["skipped"] == 2


async def test_a_stream_stops_at_its_first_invalid_document(store: Store) -> None:
    broker = Broker()

    def stream() -> Iterator[str]:
        yield "first"
        yield "second"
        yield ""
        raise AssertionError("read past the invalid document")

    with pytest.raises(InvalidInput) as caught:
        await publish_documents(
            stream(), topic="documents", batch_id="b1", settings=settings(),
            sender_factory=broker.sender, store=store,
        )  # fmt: skip
    assert "2 documents before them were sent" in str(caught.value)
    assert len(broker.messages) == 2
    batch = await store.get_batch("b1")
    assert batch is not None and batch.status == "failed"


async def test_async_iterables_are_accepted(store: Store) -> None:
    broker = Broker()

    async def stream() -> AsyncIterator[str]:
        for i in range(5):
            yield f"doc {i}"

    report = await publish_documents(
        stream(), topic="documents", batch_id="b1", settings=settings(chunk=2),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert report.sent == 5 and len(broker.messages) == 5


async def test_a_transient_send_failure_is_retried(store: Store) -> None:
    broker = Broker(limit=4 * 1024)
    failures = 0

    async def fail_twice(sender: Sender, batch: RecordingBatch) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise ServiceBusConnectionError(message="connection reset")

    broker.on_send = fail_twice
    report = await publish_documents(
        news(20, size=1000), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert failures == 2
    assert (report.sent, report.failed, report.ok) == (20, {}, True)
    assert sorted(e.doc_id for e in broker.envelopes()) == sorted(f"n{i}" for i in range(20))


async def test_a_send_that_keeps_failing_is_reported_per_document(store: Store) -> None:
    broker = Broker(limit=4 * 1024)
    attempts: dict[frozenset[str], int] = {}

    async def always_fail(sender: Sender, batch: RecordingBatch) -> None:
        ids = frozenset(str(m.message_id) for m in batch.added)
        attempts[ids] = attempts.get(ids, 0) + 1
        raise ServiceBusConnectionError(message="connection reset")

    broker.on_send = always_fail
    report = await publish_documents(
        news(20, size=1000), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert set(attempts.values()) == {settings().publisher.send_attempts}
    assert sorted(report.failed) == sorted(f"n{i}" for i in range(20)) and not report.ok
    assert all("connection reset" in reason for reason in report.failed.values())
    batch = await store.get_batch("b1")
    assert batch is not None and batch.status == "failed"


async def test_a_batch_the_broker_refuses_as_too_large_is_split_and_resent(store: Store) -> None:
    # The broker may count a batch larger than the SDK did: halve it until it is accepted,
    # and report only a message the broker refuses on its own.
    broker = Broker(limit=16 * 1024)
    refused = 0

    async def stricter_limit(sender: Sender, batch: RecordingBatch) -> None:
        nonlocal refused
        if batch.size_in_bytes > 5 * 1024:
            refused += 1
            raise MessageSizeExceededError(message="too large for the broker")

    broker.on_send = stricter_limit
    docs = [*news(30, size=1000), DocumentInput(text="y" * 9000, doc_id="big")]
    report = await publish_documents(
        docs, topic="documents", batch_id="b1", settings=settings(concurrency=1),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert refused > 1
    assert sorted(e.doc_id for e in broker.envelopes()) == sorted(f"n{i}" for i in range(30))
    assert list(report.failed) == ["big"] and "too large" in report.failed["big"]
    assert report.sent == 30


async def test_an_unusable_topic_stops_the_publish(store: Store) -> None:
    broker = Broker()

    async def no_topic(sender: Sender, batch: RecordingBatch) -> None:
        raise MessagingEntityNotFoundError(message="topic 'documents' not found")

    broker.on_send = no_topic
    with pytest.raises(MessagingEntityNotFound):
        await publish_documents(
            news(10), topic="documents", batch_id="b1", settings=settings(),
            sender_factory=broker.sender, store=store,
        )  # fmt: skip
    batch = await store.get_batch("b1")
    assert batch is not None and batch.status == "failed"


async def test_dry_run_sizes_everything_and_touches_nothing(store: Store) -> None:
    buffer = io.StringIO()
    report = await publish_documents(
        [*news(3), DocumentInput(text="x" * 100_000, doc_id="big")],
        topic="documents", batch_id="b1", settings=settings(max_size=64 * 1024),
        store=store, dry_run=True,
    )  # fmt: skip
    Console(file=buffer, width=100).print(report_table(report))
    assert (report.documents, report.claim_checked, report.sent) == (4, 1, 0)
    assert await store.get_batch("b1") is None
    assert await store.database["payloads"].count_documents({}) == 0
    output = buffer.getvalue()
    assert "dry run" in output and "by claim-check" in output


async def test_the_summary_table_says_what_was_sent_and_how_fast(store: Store) -> None:
    progress: list[int] = []
    report = await publish_documents(
        news(5), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=Broker().sender, store=store, on_progress=progress.append,
    )  # fmt: skip
    assert sum(progress) == 5
    buffer = io.StringIO()
    Console(file=buffer, width=100).print(report_table(report))
    output = buffer.getvalue()
    assert "Batch b1 → documents" in output
    assert "sent" in output and "throughput" in output


async def test_invalid_batch_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid batch id"):
        await publish_documents(["x"], topic="t", batch_id="a:b", dry_run=True)


async def test_documents_of_one_session_reach_the_topic_in_input_order(store: Store) -> None:
    broker = Broker(limit=4 * 1024)
    held_sender: int | None = None
    another_lane_sent = asyncio.Event()

    async def reorder_lanes(sender: Sender, batch: RecordingBatch) -> None:
        # Hold the first lane's first batch until some other lane has sent: lanes now race.
        nonlocal held_sender
        if held_sender is None:
            held_sender = sender.number
        if sender.number == held_sender:
            await asyncio.wait_for(another_lane_sent.wait(), timeout=5)
        else:
            another_lane_sent.set()

    broker.on_send = reorder_lanes
    docs = [
        DocumentInput(text=f"update {i} " + "x" * 1000, doc_id=f"n{i:02d}",
                      metadata={"supplier": f"s{i % 5}"})
        for i in range(60)
    ]  # fmt: skip
    await publish_documents(
        docs, topic="documents", batch_id="b1", settings=settings(concurrency=3),
        sender_factory=broker.sender, store=store, session_key="supplier",
    )  # fmt: skip
    sent_order = [e.doc_id for e in broker.envelopes()]
    assert sent_order != sorted(sent_order)  # the lanes really did interleave
    for session in range(5):
        in_session = [d for d in sent_order if int(d[1:]) % 5 == session]
        assert in_session == sorted(in_session)


async def test_a_batch_id_used_before_is_refused_unless_resumed(store: Store) -> None:
    broker = Broker()
    first = await publish_documents(
        news(3), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store,
    )  # fmt: skip
    assert first.ok
    with pytest.raises(PublishRefused, match="batch b1 already exists"):
        await publish_documents(
            news(4), topic="documents", batch_id="b1", settings=settings(),
            sender_factory=broker.sender, store=store,
        )  # fmt: skip
    assert len(broker.messages) == 3
    resumed = await publish_documents(
        news(4), topic="documents", batch_id="b1", settings=settings(),
        sender_factory=broker.sender, store=store, resume=True,
    )  # fmt: skip
    # nothing has an outcome yet: the three are sent again under their ids, n3 is new
    assert (resumed.resent, resumed.already_sent, resumed.sent) == (3, 0, 4)
    assert sorted({str(m.message_id) for m in broker.messages}) == [f"b1:n{i}:0" for i in range(4)]
    record = await store.get_batch("b1")
    assert record is not None and record.counts["documents"] == 4


async def test_a_topic_the_topology_does_not_know_records_and_sends_nothing(store: Store) -> None:
    broker = Broker()
    topology = Topology((TopicSpec("documents", (SubscriptionSpec("s"),)),))
    with pytest.raises(PublishRefused, match="unknown topic 'other'"):
        await publish_documents(
            news(2), topic="other", batch_id="b1", settings=settings(),
            sender_factory=broker.sender, store=store, topology=topology,
        )  # fmt: skip
    assert broker.senders_opened == 0 and await store.get_batch("b1") is None
