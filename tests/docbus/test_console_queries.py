"""The operator queries the console reads (and the CLI can): failure types, a document's
lineage, the diff of two result versions and rolling one back, results aggregated and exported,
the throughput timeline, and the replay preview — pure parts without I/O, the rest on a store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from docbus.envelope import Envelope
from docbus.ops.aggregate import aggregate, csv_lines, current_rows, flatten
from docbus.ops.failures import FAILURE_TYPES, failure_type
from docbus.ops.lineage import deliveries, document_lineage, documents_named
from docbus.ops.rollback import carry_out
from docbus.ops.timeline import batch_timeline, throughput_series
from docbus.ops.versions import FieldChange, diff_outputs, plan_version_rollback
from docbus.records import CheckpointKey, DeadLetterRecord, LLMCallRecord, ResultRecord
from docbus.store import DeadLetterFilter, Store
from publisher.replay_preview import pick, preview_dead_letter_replay

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def dead(reason: str, description: str = "", **fields: object) -> DeadLetterRecord:
    return DeadLetterRecord.model_validate(
        {"message_id": "m", "subscription": "s", "reason": reason, "description": description}
        | fields
    )


def call(**fields: object) -> LLMCallRecord:
    base: dict[str, object] = {
        "batch_id": "b",
        "doc_id": "d",
        "handler": "h",
        "handler_version": "1",
        "attempt": 1,
        "model": "m",
    }
    return LLMCallRecord.model_validate(base | fields)


def version(number: int, **fields: object) -> ResultRecord:
    base: dict[str, object] = {
        "id": f"h@m{number}",
        "doc_id": "d",
        "handler": "h",
        "handler_version": "1",
        "version": number,
        "current": False,
        "batch_id": "b",
        "message_id": f"m{number}",
        "output": {},
        "written_at": T0,
    }
    return ResultRecord.model_validate(base | fields)


# -- pure -----------------------------------------------------------------------------------------


def test_failure_types_fold_reasons_into_what_an_operator_acts_on() -> None:
    assert failure_type(dead("SchemaValidationFailed")) == "schema failure"
    assert failure_type(dead("ContentFiltered")) == "content filter"
    assert failure_type(dead("ContextLengthExceeded")) == "context too long"
    assert failure_type(dead("LLMRequestTooLarge")) == "context too long"
    assert failure_type(dead("MaxDeliveryCountExceeded")) == "retries exhausted"
    assert failure_type(dead("RetriesExhausted", "last error: TimeoutError")) == "retries exhausted"
    assert (
        failure_type(dead("RetriesExhausted", "last: SchemaValidationFailed")) == "schema failure"
    )
    assert failure_type(dead("InvalidEnvelope")) == "poison input"
    assert failure_type(dead("TTLExpiredException")) == "expired"
    assert failure_type(dead("TooShort")) == "handler decision"
    every = {failure_type(dead(r)) for r in ("ContentFiltered", "TooShort", "DocumentOverBudget")}
    assert every <= set(FAILURE_TYPES)


def test_diff_names_each_changed_field_by_path() -> None:
    before = {"score": 3, "tags": ["a", "b"], "owner": {"name": "x", "age": 1}, "gone": True}
    after = {"score": 4, "tags": ["a"], "owner": {"name": "x", "age": 1.5}, "new": None}
    assert diff_outputs(before, after) == [
        FieldChange("score", "changed", 3, 4),
        FieldChange("tags[1]", "removed", before="b"),
        FieldChange("owner.age", "changed", 1, 1.5),
        FieldChange("gone", "removed", before=True),
        FieldChange("new", "added", after=None),
    ]
    assert diff_outputs(before, before) == []
    assert diff_outputs({"flag": 1}, {"flag": True}) == [FieldChange("flag", "changed", 1, True)]


def test_aggregate_counts_and_averages_numeric_fields_per_group() -> None:
    rows = [
        {"doc_id": "1", "version": 1, "region": "EU", "score": 10, "ok": True, "note": None},
        {"doc_id": "2", "version": 1, "region": "EU", "score": 20, "ok": False, "note": "x"},
        {"doc_id": "3", "version": 2, "region": "Asia", "score": 30.5},
        {"doc_id": "4", "version": 1, "region": None, "score": None},
    ]
    figures = aggregate(rows, "region")
    assert figures.total == 4
    assert figures.numeric == ["score"]  # not the export's version, not booleans, not text
    assert [(g.key, g.count, g.means) for g in figures.groups] == [
        ("EU", 2, {"score": 15.0}),
        ("(none)", 1, {}),
        ("Asia", 1, {"score": 30.5}),
    ]
    assert figures.fields[:3] == ["doc_id", "version", "region"]


def test_flatten_and_csv_give_one_row_per_result_under_one_header() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "l": [1, "é"]}) == {
        "a.b": 1,
        "a.c.d": "x",
        "l": '[1, "é"]',
    }
    text = "".join(csv_lines([{"doc_id": "1", "x": 1}, {"doc_id": "2", "y": None, "x": "a,b"}]))
    assert text.splitlines() == ["doc_id,batch_id,version,x,y", "1,,,1,", '2,,,"a,b",']
    assert "".join(csv_lines([])).splitlines() == ["doc_id,batch_id,version"]


def test_throughput_series_counts_finishes_per_interval() -> None:
    times = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=9), T0 + timedelta(seconds=10)]
    series = throughput_series(times, buckets=5)
    assert [interval.finished for interval in series] == [2, 0, 0, 0, 2]
    assert series[0].seconds == 2.0 and series[0].per_second == 1.0
    assert throughput_series([]) == []
    assert [i.finished for i in throughput_series([T0, T0])] == [2]


def test_deliveries_tell_each_attempt_and_how_it_ended() -> None:
    calls = [
        call(attempt=1, cost_usd=0.1, error_type="RateLimitError"),
        call(attempt=1, cost_usd=0.2),
        call(attempt=2, cost_usd=0.3),
        call(attempt=1, generation=1, cost_usd=0.4),
    ]
    versions = [version(1, delivery_count=2), version(2, generation=1, delivery_count=1)]
    rows = deliveries(calls, versions, [dead("SchemaValidationFailed", generation=2)])
    assert [(d.generation, d.attempt, d.calls, d.failed_calls, d.outcome) for d in rows] == [
        (0, 1, 2, 1, "retried"),
        (0, 2, 1, 0, "result v1"),
        (1, 1, 1, 0, "result v2"),
        (2, 1, 0, 0, "dead letter: SchemaValidationFailed"),
    ]
    assert round(rows[0].cost_usd, 6) == 0.3


def test_pick_keeps_only_the_chosen_dead_letters() -> None:
    from publisher.replay import PlannedMessage, ReplayPlan

    envelope = Envelope(doc_id="d", batch_id="b", topic="t", content="x")
    plan = ReplayPlan(
        "dead-letters",
        {"batch_id": "b"},
        [PlannedMessage("s@1", envelope), PlannedMessage("s@2", envelope)],
        {"s@3": "not an envelope", "s@4": "not an envelope"},
    )
    chosen = pick(plan, ["s@2", "s@3"])
    assert [m.key for m in chosen.messages] == ["s@2"]
    assert chosen.skipped == {"s@3": "not an envelope"}
    assert chosen.filters == {"batch_id": "b", "ids": ["s@2", "s@3"]}


# -- on a store -----------------------------------------------------------------------------------


async def _result(store: Store, doc_id: str, message_id: str, output: dict[str, object]) -> None:
    await store.write_result(
        doc_id=doc_id, handler="h", handler_version="1", batch_id="b", message_id=message_id,
        output=output, delivery_count=1, run_id="b",
    )  # fmt: skip


async def test_lineage_gathers_document_calls_steps_dead_letters_and_versions(
    store: Store,
) -> None:
    await store.record_documents([Envelope(doc_id="d", batch_id="b", topic="t", content="x" * 50)])
    await store.record_llm_call(call(step="classify", messages=[{"role": "user", "content": "hi"}]))
    await store.record_llm_call(call(handler="other", batch_id="b2"))  # another batch
    key = CheckpointKey("d", "h", "1", "classify", "hash")
    await store.put_checkpoint(key, {"kind": "news"}, batch_id="b")
    await _result(store, "d", "b:d:0", {"score": 1})
    await store.record_dead_letter(
        dead("Boom", batch_id="b", doc_id="d", handler="g", message_id="b:d:0")
    )

    lineage = await document_lineage(store, "b", "d", text_limit=10)
    assert lineage.text == "x" * 10 and lineage.text_size == 50 and lineage.truncated
    assert [h.handler for h in lineage.handlers] == ["g", "h"]
    mine = lineage.handlers[1]
    assert [c.messages for c in mine.calls] == [[{"role": "user", "content": "hi"}]]
    assert [(s.step, s.output) for s in mine.steps] == [("classify", {"kind": "news"})]
    assert mine.current is not None and mine.current.output == {"score": 1}
    assert [d.reason for d in lineage.handlers[0].dead_letters] == ["Boom"]
    assert await documents_named(store, "d") == ["b"]


async def test_lineage_of_an_unknown_document_is_not_found(store: Store) -> None:
    from docbus.ops import NotFound

    try:
        await document_lineage(store, "b", "nothing")
    except NotFound as exc:
        assert "nothing" in str(exc)
    else:
        raise AssertionError("no NotFound")


async def test_rolling_back_one_version_makes_the_previous_current_and_undo_restores(
    store: Store,
) -> None:
    from docbus.ops.rollback import plan_undo

    await _result(store, "d", "b:d:0", {"score": 1})
    await _result(store, "d", "b:d:1", {"score": 2})
    await _result(store, "e", "b:e:0", {"score": 3})
    plan = await plan_version_rollback(store, "d", "h", 2)
    [change] = plan.changes
    assert change.before is not None and change.before.version == 2
    assert change.after is not None and change.after.version == 1
    record = await carry_out(store, plan)
    assert (record.versions, record.documents) == (1, 1)
    current = await store.current_result("d", "h")
    assert current is not None and current.version == 1
    assert (await store.current_result("e", "h")) is not None  # nothing else touched
    again = await plan_version_rollback(store, "d", "h", 2)
    assert again.changes == [] and again.note is not None and record.id in again.note
    undo = await carry_out(store, await plan_undo(store, record.id))
    current = await store.current_result("d", "h")
    assert current is not None and current.version == 2
    touching = await store.rollbacks_touching("b")
    assert [(r.id, r.kind) for r in touching] == [(record.id, "rollback"), (undo.id, "undo")]
    assert await store.rollbacks_touching("another") == []


async def test_current_rows_stream_the_current_versions_flat(store: Store) -> None:
    await _result(store, "d", "b:d:0", {"region": "EU", "risk": {"score": 1}})
    await _result(store, "d", "b:d:1", {"region": "EU", "risk": {"score": 2}})
    await _result(store, "e", "b:e:0", {"region": "Asia", "risk": {"score": 5}})
    rows = [row async for row in current_rows(store, "h", batch_id="b")]
    assert rows == [
        {"doc_id": "d", "batch_id": "b", "version": 2, "region": "EU", "risk.score": 2},
        {"doc_id": "e", "batch_id": "b", "version": 1, "region": "Asia", "risk.score": 5},
    ]
    assert [row async for row in current_rows(store, "h", batch_id="other")] == []
    assert await store.result_handlers() == ["h"]
    assert json.loads(json.dumps(rows))  # JSONL-able as it is


async def test_batch_timeline_counts_results_and_dead_letters(store: Store) -> None:
    await _result(store, "d", "b:d:0", {})
    await store.record_dead_letter(dead("Boom", batch_id="b", doc_id="e", message_id="b:e:0"))
    series = await batch_timeline(store, "b", buckets=3)
    assert sum(interval.finished for interval in series) == 2
    assert await batch_timeline(store, "nothing") == []


async def test_replay_preview_is_the_dry_run_plan_with_the_cost_of_the_first_attempts(
    store: Store,
) -> None:
    from publisher.replay import plan_dead_letter_replay

    for doc_id in ("d", "e"):
        body = Envelope(doc_id=doc_id, batch_id="b", topic="t", content="x").to_bytes()
        await store.record_dead_letter(
            dead("Boom", batch_id="b", doc_id=doc_id, handler="h", message_id=f"b:{doc_id}:0",
                 body=body, generation=0)
        )  # fmt: skip
        await store.record_llm_call(call(doc_id=doc_id, cost_usd=0.25))
    await store.record_llm_call(call(doc_id="d", handler="other", cost_usd=9.0))  # not replayed
    await store.record_llm_call(call(doc_id="d", generation=1, cost_usd=9.0))  # another run
    selection = DeadLetterFilter(batch_id="b")
    preview = await preview_dead_letter_replay(store, selection)
    dry = await plan_dead_letter_replay(store, selection)
    assert preview.plan.to_json()["messages"] == dry.to_json()["messages"]
    assert preview.estimated_cost_usd == 0.5
    one = await preview_dead_letter_replay(store, selection, ids=["s@b:e:0"])
    assert [m.key for m in one.plan.messages] == ["s@b:e:0"]
    assert one.estimated_cost_usd == 0.25


async def test_heartbeats_are_kept_per_worker_and_tell_a_silent_one(store: Store) -> None:
    from docbus.store import WorkerHeartbeat

    now = datetime.now(UTC)
    beat = WorkerHeartbeat(id="h:1:t", host="h", pid=1, handlers=["a"], started_at=now)
    await store.record_heartbeat(beat)
    await store.record_heartbeat(beat.model_copy(update={"in_flight": 3}))  # overwritten
    old = beat.model_copy(update={"id": "h:2:t", "beat_at": now - timedelta(hours=2)})
    await store.record_heartbeat(old)
    [kept] = await store.heartbeats()
    assert kept.in_flight == 3 and kept.status(now) == "running"
    assert kept.status(now + timedelta(seconds=31)) == "silent"  # three 10 s intervals
    assert kept.model_copy(update={"state": "stopped"}).status(now) == "stopped"
