from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from docbus.envelope import ClaimCheck, Envelope, Source
from docbus.local.mongo import LocalMongo
from docbus.records import CheckpointKey, DeadLetterRecord, input_hash
from docbus.store import (
    DeadLetterFilter,
    PayloadError,
    Store,
    StoreError,
    StoreUnavailable,
)

ISSUED = datetime(2025, 1, 1, tzinfo=UTC)


async def write(
    store: Store,
    *,
    doc: str = "d1",
    generation: int = 0,
    batch: str = "b1",
    handler: str = "h",
    issued: datetime | None = None,
    run: str | None = None,
) -> tuple[int, bool]:
    """A result of ``batch``'s publication (generation 0) or of its replay ``generation``,
    issued ``generation`` minutes after the batch unless ``issued`` says when."""
    outcome = await store.write_result(
        doc_id=doc,
        handler=handler,
        handler_version="1",
        batch_id=batch,
        message_id=f"{batch}:{doc}:{generation}",
        output={"generation": generation},
        generation=generation,
        run_id=run or (batch if generation == 0 else f"replay-{generation}"),
        issued_at=issued or ISSUED + timedelta(minutes=generation),
    )
    history = await store.result_history(doc, handler)
    return next(r.version for r in history if r.id == outcome.id), outcome.created


async def current_versions(store: Store, doc: str = "d1", handler: str = "h") -> list[int]:
    return [r.version for r in await store.result_history(doc, handler) if r.current]


# -- lifecycle ---------------------------------------------------------------------------------


async def test_constructor_does_no_io_and_use_before_connect_is_an_error() -> None:
    store = Store("mongodb://127.0.0.1:1", "x", timeout=0.2)  # nothing listens there
    with pytest.raises(StoreError, match="not connected"):
        await store.get_batch("b1")


async def test_unreachable_server_raises_store_unavailable_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await Store("mongodb://user:hunter2@127.0.0.1:1", "x", timeout=0.3).connect()
    assert time.monotonic() - started < 5
    assert caught.value.transient is True
    assert "hunter2" not in str(caught.value)


async def test_server_errors_become_store_errors(store: Store) -> None:
    await store.record_llm_call({"_id": "same"})
    with pytest.raises(StoreError) as caught:
        await store.record_llm_call({"_id": "same"})
    assert not isinstance(caught.value, StoreUnavailable)
    assert caught.value.__cause__ is not None


async def test_a_write_concern_the_server_cannot_meet_is_an_error_naming_the_setting(
    store: Store, local_mongo: LocalMongo
) -> None:
    # SecantusDB is a one-member replica set: w=5 cannot be acknowledged
    async with Store(local_mongo.uri, store.database.name, timeout=2.0, write_concern=5) as five:
        assert five.write_concern.document == {"w": 5, "j": True, "wtimeout": 2000}
        with pytest.raises(StoreError, match="DOCBUS_MONGODB__WRITE_CONCERN") as caught:
            await five.write_result(
                doc_id="d1", handler="h", handler_version="1", batch_id="b1",
                message_id="b1:d1:0", output={},
            )  # fmt: skip
        assert not caught.value.transient
        with pytest.raises(StoreError, match="DOCBUS_MONGODB__WRITE_CONCERN"):
            await five.record_dead_letter(
                DeadLetterRecord(message_id="m", subscription="s", reason="BadDocument")
            )
    assert store.write_concern.document == {"w": "majority", "j": True, "wtimeout": 5000}


# -- results -----------------------------------------------------------------------------------


async def test_first_write_creates_version_one_as_current(store: Store) -> None:
    assert await write(store) == (1, True)
    current = await store.current_result("d1", "h")
    assert current is not None
    assert (current.version, current.current, current.output) == (1, True, {"generation": 0})


async def test_redelivery_of_the_same_message_creates_no_second_version(store: Store) -> None:
    await write(store)
    assert await write(store) == (1, False)
    assert [r.version for r in await store.result_history("d1", "h")] == [1]


async def test_concurrent_duplicates_end_with_one_record_and_one_current(store: Store) -> None:
    outcomes = await asyncio.gather(*(write(store) for _ in range(12)))
    assert sum(created for _, created in outcomes) == 1
    assert {version for version, _ in outcomes} == {1}
    assert await current_versions(store) == [1]


async def test_a_replay_adds_a_version_and_becomes_current(store: Store) -> None:
    await write(store, generation=0)
    assert await write(store, generation=1) == (2, True)
    history = await store.result_history("d1", "h")
    assert [(r.version, r.current, r.generation) for r in history] == [
        (1, False, 0),
        (2, True, 1),
    ]


async def test_late_redelivery_of_an_older_generation_does_not_take_over(store: Store) -> None:
    await write(store, generation=1)
    assert await write(store, generation=0) == (2, True)  # arrived late: a new version...
    current = await store.current_result("d1", "h")
    assert current is not None and current.generation == 1  # ...but the replay stays current
    assert await current_versions(store) == [1]


async def test_concurrent_generations_leave_the_highest_current(store: Store) -> None:
    await asyncio.gather(*(write(store, generation=g) for g in (3, 0, 4, 1, 2) * 3))
    history = await store.result_history("d1", "h")
    assert sorted(r.generation for r in history) == [0, 1, 2, 3, 4]
    assert [r.generation for r in history if r.current] == [4]


def test_numbers_follow_the_writes_and_the_top_ranked_live_version_is_current() -> None:
    from docbus.store._results import standing

    def version(key: str, issued_min: int, written_min: int, **fields: object) -> dict[str, object]:
        return {"_id": key, "doc_id": "d1", "handler": "h", "rolled_back": False,
                "issued_at": ISSUED + timedelta(minutes=issued_min),
                "written_at": ISSUED + timedelta(minutes=written_min), **fields}  # fmt: skip

    # numbered in the order written; the latest-issued run's version is current, even when a
    # late redelivery of an older run was written after it
    replay, late = version("h@replay", 5, 6), version("h@late", 0, 9)
    assert standing([late, replay]) == {"h@replay": (1, True), "h@late": (2, False)}
    # rolled back versions keep their number and are never current; none left: none current
    assert standing([late, {**replay, "rolled_back": True}]) == {
        "h@replay": (1, False), "h@late": (2, True)
    }  # fmt: skip
    assert standing([{**late, "rolled_back": True}]) == {"h@late": (1, False)}
    # versions written before the issue time was stored rank by when they were written; a
    # tie within one millisecond goes by id; flags older docbus versions stored are ignored
    legacy = {**version("h@old", 0, 7), "issued_at": None, "current": False, "version": 4}
    assert standing([legacy, version("h@new", 6, 1, current=True)]) == {
        "h@new": (1, False), "h@old": (2, True)
    }  # fmt: skip
    assert standing([version("h@b", 3, 3), version("h@a", 3, 3)]) == {
        "h@a": (1, False), "h@b": (2, True)
    }  # fmt: skip
    # each (document, handler) on its own
    other = {**version("h@x", 0, 0), "doc_id": "d2"}
    assert standing([replay, other]) == {"h@replay": (1, True), "h@x": (1, True)}


async def test_a_rerun_under_a_new_batch_wins_over_an_older_batchs_replay(store: Store) -> None:
    # Generations count per batch: yesterday's replay (generation 1 of b1) must not outrank
    # tonight's run of the same document under b2 (generation 0), nor a late redelivery of
    # it take over again.
    yesterday = ISSUED
    await write(store, batch="b1", issued=yesterday)
    await write(store, batch="b1", generation=1, issued=yesterday + timedelta(hours=2))
    await write(store, batch="b2", issued=yesterday + timedelta(days=1))
    current = await store.current_result("d1", "h")
    assert current is not None and (current.batch_id, current.version) == ("b2", 3)
    assert current.run_id == "b2" and current.issued_at == yesterday + timedelta(days=1)
    assert await current_versions(store) == [3]


async def test_a_database_of_an_older_docbus_keeps_its_versions_and_current(
    store: Store,
) -> None:
    # Before results were insert-only: a stored version number (unique per document), a
    # stored `current` flag (a partial unique index), and one document mid-convergence with
    # no flag at all. Its indexes would refuse insert-only versions: ensure_indexes drops them.
    results = store.database["results"]
    await results.drop_indexes()
    await results.create_index([("doc_id", 1), ("handler", 1), ("version", 1)], unique=True,
                                name="one_version_number")  # fmt: skip
    await results.create_index([("doc_id", 1), ("handler", 1)], unique=True,
                               name="one_current_version",
                               partialFilterExpression={"current": True})  # fmt: skip
    old = {"handler": "h", "handler_version": "1", "rolled_back": False, "batch_id": "b1",
           "output": {}, "run_id": "b1", "issued_at": ISSUED}  # fmt: skip
    await results.insert_many([
        {**old, "_id": "h@m1", "doc_id": "d1", "message_id": "m1", "version": 1,
         "current": True, "written_at": ISSUED},
        {**old, "_id": "h@m2", "doc_id": "d2", "message_id": "m2", "version": 1,
         "current": False, "written_at": ISSUED},
    ])  # fmt: skip
    await store.ensure_indexes()
    names = {raw["name"] async for raw in await results.list_indexes()}
    assert not names & {"one_version_number", "one_current_version"}, names
    # the mid-convergence document has its current version all the same
    current = await store.current_result("d2", "h")
    assert current is not None and (current.id, current.version) == ("h@m2", 1)
    # a re-run (two writers, say an older and a newer run's delivery) adds versions that
    # the old unique version number would have refused
    await write(store, batch="b2", doc="d1", issued=ISSUED + timedelta(days=1))
    await write(store, batch="b3", doc="d1", issued=ISSUED + timedelta(days=2))
    history = await store.result_history("d1", "h")
    assert [(r.id, r.version, r.current) for r in history] == [
        ("h@m1", 1, False), ("h@b2:d1:0", 2, False), ("h@b3:d1:0", 3, True)
    ]  # fmt: skip
    # the view people query agrees, and drops the stale flags
    view = [raw async for raw in store.database["current_results"].find().sort("doc_id", 1)]
    assert [(raw["_id"], "current" in raw) for raw in view] == [
        ("h@b3:d1:0", False), ("h@m2", False)
    ]  # fmt: skip


async def test_a_result_refused_by_an_older_docbus_index_is_an_error_not_a_redelivery(
    store: Store,
) -> None:
    # A store used before ensure_indexes dropped the old unique version index: the second
    # version of a document (no stored number: null twice) is refused by that index. That
    # must fail the delivery, not pass for "this message wrote before" and lose the result.
    await store.database["results"].create_index(
        [("doc_id", 1), ("handler", 1), ("version", 1)], unique=True, name="one_version_number"
    )
    await write(store, batch="b1")
    with pytest.raises(StoreError, match=r"one_version_number.*ensure_indexes"):
        await write(store, batch="b2", issued=ISSUED + timedelta(days=1))
    assert await write(store, batch="b1") == (1, False)  # a true redelivery still is one


async def test_results_are_per_handler(store: Store) -> None:
    await write(store, handler="entities")
    await write(store, handler="risk")
    assert await current_versions(store, handler="entities") == [1]
    assert await current_versions(store, handler="risk") == [1]


async def test_withdrawing_versions_makes_the_previous_one_current(store: Store) -> None:
    await write(store, batch="b1", generation=0)
    await write(store, batch="b2", generation=0, issued=ISSUED + timedelta(days=1))
    assert await current_versions(store) == [2]
    b2 = await store.run_result_versions(["b2"])
    withdrawn = await store.withdraw_results([r.id for r in b2], "rollback-1")
    assert [(r.version, r.rolled_back, r.rolled_back_by) for r in withdrawn] == [
        (2, True, "rollback-1")
    ]
    current = await store.current_result("d1", "h")
    assert current is not None and (current.version, current.batch_id) == (1, "b1")
    assert await store.withdraw_results([r.id for r in b2], "rollback-2") == []  # done already
    b1 = await store.run_result_versions(["b1"])
    await store.withdraw_results([r.id for r in b1], "rollback-3")
    assert await store.current_result("d1", "h") is None
    assert await current_versions(store) == []


async def test_restoring_puts_back_exactly_what_one_rollback_withdrew(store: Store) -> None:
    await write(store, generation=0)
    await write(store, generation=1)
    await write(store, generation=2)
    await write(store, doc="d2", generation=1)
    replay_1 = await store.run_result_versions(["replay-1"])
    assert sorted((r.doc_id, r.version) for r in replay_1) == [("d1", 2), ("d2", 1)]
    await store.withdraw_results([r.id for r in replay_1], "rollback-a")
    replay_2 = await store.run_result_versions(["replay-2"])
    await store.withdraw_results([r.id for r in replay_2], "rollback-b")
    assert await current_versions(store) == [1]  # back to the publication
    assert await current_versions(store, doc="d2") == []
    restored = await store.restore_results("rollback-a")
    assert sorted((r.doc_id, r.version) for r in restored) == [("d1", 2), ("d2", 1)]
    assert await current_versions(store) == [2]  # replay 2 stays withdrawn
    assert await current_versions(store, doc="d2") == [1]
    assert await store.restore_results("rollback-a") == []
    await store.restore_results("rollback-b")
    assert await current_versions(store) == [3]


async def test_versions_written_before_runs_were_named_are_found_by_batch_or_message(
    store: Store,
) -> None:
    await write(store, generation=0)
    await write(store, generation=1)
    await store.database["results"].update_many({}, {"$unset": {"run_id": "", "issued_at": ""}})
    publication = await store.run_result_versions(["b1"], publish_of="b1")
    assert [r.version for r in publication] == [1]
    replay = await store.run_result_versions(["replay-x"], legacy_message_ids=["b1:d1:1"])
    assert [r.version for r in replay] == [2]
    assert await store.run_result_versions(["replay-x"]) == []


# -- documents and payloads --------------------------------------------------------------------


def doc(doc_id: str, batch: str = "b1", **fields: object) -> Envelope:
    values: dict[str, object] = {"doc_id": doc_id, "batch_id": batch, "topic": "documents"}
    values.setdefault("content", f"text of {doc_id}")
    values.update(fields)
    return Envelope.model_validate(values)


async def test_documents_are_recorded_once_and_read_back(store: Store) -> None:
    envelopes = [doc("a", source=Source(path="in.jsonl", line=1)), doc("b", session_id="s")]
    assert await store.record_documents(envelopes) == 2
    assert await store.record_documents(envelopes) == 2  # re-publishing is idempotent
    assert await store.database["documents"].count_documents({"batch_id": "b1"}) == 2
    again = await store.get_document("b1", "a")
    assert again is not None
    assert (again.content, again.source) == ("text of a", Source(path="in.jsonl", line=1))
    assert [e.doc_id async for e in store.iter_documents("b1")] == ["a", "b"]
    assert await store.get_document("b1", "zzz") is None


async def test_recording_a_document_again_replaces_it_and_records_the_new_ones(
    store: Store,
) -> None:
    await store.record_documents([doc("a"), doc("b")])
    assert await store.record_documents([doc("a", content="changed"), doc("c")]) == 2
    changed = await store.get_document("b1", "a")
    assert changed is not None and changed.content == "changed"
    assert [e.doc_id async for e in store.iter_documents("b1")] == ["a", "b", "c"]


async def test_a_batchs_documents_are_an_id_range_without_a_secondary_index(store: Store) -> None:
    """Recording a document costs one `_id` index entry and nothing more (each secondary index
    cost SecantusDB more than the insert itself); the batch's queries still see exactly its own
    documents, also beside batches whose ids extend or precede its id."""
    for batch in ("b1", "b10", "b1.x", "b", "b0", "b2"):
        await store.record_documents([doc("a", batch), doc("a:b", batch), doc("\u00e9z", batch)])
    await store.ensure_indexes()
    assert set(await store.database["documents"].index_information()) == {"_id_"}
    assert [e.doc_id async for e in store.iter_documents("b1")] == ["a", "a:b", "\u00e9z"]
    assert (await store.batch_counts("b1")).published == 3
    assert await store.batch_exists("b1.x")
    assert not await store.batch_exists("b1.")


async def test_payloads_round_trip_and_are_stored_once(store: Store) -> None:
    text = "é" * 300_000
    ref = await store.put_payload(text)
    assert ref.size == len(text.encode())
    assert await store.put_payload(text) == ref
    assert await store.database["payloads"].count_documents({}) == 1
    assert await store.load_payload(ref) == text


async def test_untrustworthy_claim_checks_raise_payload_error(store: Store) -> None:
    ref = await store.put_payload("original")
    await store.database["payloads"].update_one({"_id": ref.id}, {"$set": {"data": b"tamper!!"}})
    with pytest.raises(PayloadError, match="does not match"):
        await store.load_payload(ref)
    with pytest.raises(PayloadError, match="not found"):
        await store.load_payload(ClaimCheck(id="0" * 64, sha256="0" * 64, size=1))
    with pytest.raises(PayloadError, match="not 'payloads'"):
        await store.load_payload(ref.model_copy(update={"collection": "results"}))


# -- batches -----------------------------------------------------------------------------------


async def test_batch_record_lifecycle_and_costs(store: Store) -> None:
    await store.record_batch("b1", topic="documents", source=["news.jsonl"])
    await store.update_batch("b1", status="published", counts={"documents": 3, "sent": 3})
    await store.add_batch_usage("b1", usd=0.25, prompt_tokens=100, completion_tokens=20)
    await store.add_batch_usage("b1", usd=0.5, prompt_tokens=10, completion_tokens=2, calls=2)
    await store.set_batch_over_budget("b1", True)
    batch = await store.get_batch("b1")
    assert batch is not None
    assert (batch.topic, batch.status, batch.source) == ("documents", "published", ["news.jsonl"])
    assert batch.counts == {"documents": 3, "sent": 3}
    assert batch.cost.usd == pytest.approx(0.75)
    assert (batch.cost.prompt_tokens, batch.cost.completion_tokens, batch.cost.calls) == (
        110,
        22,
        3,
    )
    assert batch.over_budget is True
    created = batch.created_at
    await store.record_batch("b1", topic="documents", status="publishing")  # published again
    again = await store.get_batch("b1")
    assert again is not None and again.created_at == created and again.cost.calls == 3
    await store.record_batch("b2", topic="documents")
    assert [b.id for b in await store.list_batches()] == ["b2", "b1"]


async def test_batch_counts_per_document_and_per_handler(store: Store) -> None:
    await store.record_documents([doc(name) for name in ("d1", "d2", "d3", "d4")])
    for name in ("d1", "d2"):
        await write(store, doc=name, handler="entities")
        await write(store, doc=name, handler="risk")
    await write(store, doc="d3", handler="entities")
    await store.record_dead_letter(dead_letter("b1:d3:0", doc="d3", handler="risk"))
    # d4: dead-lettered once, then replayed successfully
    await store.record_dead_letter(dead_letter("b1:d4:0", doc="d4", handler="entities"))
    await write(store, doc="d4", handler="entities", generation=1)

    counts = await store.batch_counts("b1")
    assert (counts.published, counts.done, counts.dead_lettered, counts.pending) == (4, 2, 1, 1)
    assert counts.handlers["entities"].model_dump() == {
        "done": 4, "dead_lettered": 0, "rolled_back": 0, "pending": 0,
    }  # fmt: skip
    assert counts.handlers["risk"].model_dump() == {
        "done": 2, "dead_lettered": 1, "rolled_back": 0, "pending": 1,
    }  # fmt: skip

    risk = await store.run_result_versions(["b1"], handler="risk")
    await store.withdraw_results([r.id for r in risk], "rollback-1")
    counts = await store.batch_counts("b1", handlers=["entities", "risk", "summary"])
    # d1, d2: their risk results withdrawn — rolled back, not pending: no worker will redo them
    assert (counts.done, counts.dead_lettered, counts.rolled_back, counts.pending) == (0, 1, 2, 1)
    assert counts.handlers["risk"].model_dump() == {
        "done": 0, "dead_lettered": 1, "rolled_back": 2, "pending": 1,
    }  # fmt: skip
    assert counts.handlers["summary"].pending == 4


async def test_batch_counts_before_any_handler_reports(store: Store) -> None:
    await store.record_documents([doc("d1"), doc("d2")])
    counts = await store.batch_counts("b1")
    assert (counts.published, counts.done, counts.dead_lettered, counts.pending) == (2, 0, 0, 2)


# -- dead letters, checkpoints, audit ---------------------------------------------------------


def dead_letter(
    message_id: str, *, doc: str = "d1", handler: str = "h", **fields: object
) -> DeadLetterRecord:
    values: dict[str, object] = {
        "message_id": message_id,
        "subscription": handler,
        "reason": "SchemaValidationFailed",
        "description": "no valid JSON after 2 re-asks",
        "error_type": "ValidationError",
        "traceback": "Traceback...",
        "handler": handler,
        "step": "extract",
        "delivery_count": 1,
        "batch_id": "b1",
        "doc_id": doc,
        "body": b"\x00not an envelope\xff",
        "properties": {"batch_id": "b1"},
    }
    values.update(fields)
    return DeadLetterRecord.model_validate(values)


async def test_dead_letters_are_recorded_once_per_message_and_subscription(store: Store) -> None:
    first = dead_letter("b1:d1:0")
    assert await store.record_dead_letter(first) is True
    assert await store.record_dead_letter(first.model_copy(update={"delivery_count": 5})) is False
    assert await store.record_dead_letter(first.model_copy(update={"subscription": "other"}))
    stored = await store.dead_letters(DeadLetterFilter(subscription="h"))
    assert len(stored) == 1
    assert stored[0].body == b"\x00not an envelope\xff"
    assert (stored[0].step, stored[0].delivery_count) == ("extract", 1)
    assert len(await store.dead_letters(DeadLetterFilter(batch_id="b1"))) == 2
    assert await store.dead_letters(DeadLetterFilter(reason="Other")) == []


async def test_replayed_dead_letters_can_be_filtered_out(store: Store) -> None:
    record = dead_letter("b1:d1:0")
    await store.record_dead_letter(record)
    await store.record_dead_letter(dead_letter("b1:d2:0", doc="d2"))
    await store.mark_dead_letter_replayed(record, datetime(2025, 1, 1, tzinfo=UTC))
    waiting = await store.dead_letters(DeadLetterFilter(replayed=False))
    assert [r.doc_id for r in waiting] == ["d2"]
    assert len(await store.dead_letters(limit=1)) == 1


def test_a_dead_letter_filter_is_the_query_and_the_description_of_one_selection() -> None:
    since = datetime(2025, 1, 1, tzinfo=UTC)
    selection = DeadLetterFilter(batch_id="b1", since=since, replayed=False)
    assert selection.query() == {
        "resolved_at": None,
        "batch_id": "b1",
        "replayed_at": None,
        "dead_lettered_at": {"$gte": since},
    }
    assert selection.describe() == {
        "batch_id": "b1", "since": "2025-01-01T00:00:00+00:00", "replayed": False,
    }  # fmt: skip
    assert DeadLetterFilter(replayed=True, include_resolved=True).query() == {
        "replayed_at": {"$ne": None}
    }
    assert DeadLetterFilter().describe() == {}


async def test_resolved_dead_letters_only_when_asked_for(store: Store) -> None:
    await write(store, doc="d1", handler="h")
    await store.record_dead_letter(dead_letter("b1:d1:0"))  # its message has a result: resolved
    assert await store.dead_letters() == []
    [record] = await store.dead_letters(DeadLetterFilter(include_resolved=True))
    assert record.resolved_at is not None


# -- what docbus status reads -----------------------------------------------------------------


async def test_retried_documents_come_from_retry_notes_and_later_llm_attempts(
    store: Store,
) -> None:
    await store.note_retry(
        handler="h", message_id="b1:d1:0", batch_id="b1", doc_id="d1", attempt=1,
        error="boom", delay=1.0,
    )  # fmt: skip
    await store.note_retry(
        handler="h", message_id="b2:d9:0", batch_id="b2", doc_id="d9", attempt=1,
        error="boom", delay=1.0,
    )  # fmt: skip
    for handler, doc_id, attempt in (("g", "d2", 1), ("g", "d3", 2), ("k", "d4", 3)):
        await store.record_llm_call(
            {"batch_id": "b1", "handler": handler, "doc_id": doc_id, "attempt": attempt}
        )
    await store.record_llm_call({"batch_id": "b1", "handler": None, "attempt": 2})
    assert await store.retried("b1") == {"h": {"d1"}}
    assert await store.llm_retried("b1") == {"g": {"d3"}, "k": {"d4"}}
    assert await store.llm_handlers("b1") == ["g", "k"]


async def test_documents_settled_and_last_activity_of_a_batch(store: Store) -> None:
    assert await store.last_activity("b1") is None
    await write(store, doc="d1", handler="h")
    await write(store, doc="d3", handler="h", batch="b2")
    await store.record_dead_letter(dead_letter("b1:d2:0", doc="d2", handler="g"))
    done, dead = await store.documents_settled("b1", ["d1", "d2", "d3"])
    assert (done, dead) == ({"h": {"d1"}}, {"g": {"d2"}})
    [record] = await store.dead_letters(DeadLetterFilter(doc_id="d2"))
    assert await store.last_activity("b1") == record.dead_lettered_at
    assert await store.dead_letter_handlers("b1") == {"g": "g"}


async def test_checkpoints_first_write_wins(store: Store) -> None:
    key = CheckpointKey("d1", "h", "1", "classify", input_hash({"text": "abc"}))
    assert await store.get_checkpoint(key) is None
    assert await store.put_checkpoint(key, {"type": "news"}, batch_id="b1") is True
    assert await store.put_checkpoint(key, {"type": "other"}) is False
    hit = await store.get_checkpoint(key)
    assert hit is not None and hit.output == {"type": "news"}
    other_input = CheckpointKey("d1", "h", "1", "classify", input_hash({"text": "abd"}))
    assert await store.get_checkpoint(other_input) is None


async def test_llm_calls_are_inserted(store: Store) -> None:
    first = await store.record_llm_call({"batch_id": "b1", "step": "s", "tokens": 3})
    second = await store.record_llm_call({"batch_id": "b1", "step": "s", "tokens": 3})
    assert first != second
    assert await store.database["llm_calls"].count_documents({"batch_id": "b1"}) == 2


async def test_many_writers_on_two_connections_converge(
    store: Store, local_mongo: LocalMongo
) -> None:
    async with Store(local_mongo.uri, store.database.name) as other:
        jobs = [
            (target, doc, generation)
            for doc in ("d1", "d2", "d3")
            for generation in range(8)
            for target in (store, other)
        ]
        random.Random(7).shuffle(jobs)
        await asyncio.gather(*(write(t, doc=d, generation=g) for t, d, g in jobs))
    for name in ("d1", "d2", "d3"):
        history = await store.result_history(name, "h")
        assert len(history) == 8
        assert [r.generation for r in history if r.current] == [7]
