"""Operator queries (:mod:`docbus.ops`) answer with plain, JSON-ready data read from a real store,
and say what is missing with :class:`~docbus.ops.NotFound` — what the CLI and a web console
both render."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from docbus.envelope import message_id
from docbus.ops import (
    NotFound,
    ParkedSelection,
    choose_result,
    collect_report,
    find_batches,
    group_dead_letters,
    parked_overview,
    request_resume,
    result_history,
    result_json,
    show_dead_letter,
)
from docbus.records import DeadLetterRecord
from docbus.store import ParkedMessage, Store


def dead_letter(doc: str, reason: str, handler: str, minutes_ago: int) -> DeadLetterRecord:
    return DeadLetterRecord(
        message_id=message_id("b1", doc),
        subscription=handler,
        reason=reason,
        handler=handler,
        batch_id="b1",
        doc_id=doc,
        dead_lettered_at=datetime(2026, 1, 1, 12, tzinfo=UTC) - timedelta(minutes=minutes_ago),
    )


def test_dead_letters_group_largest_first_with_their_time_span() -> None:
    records = [
        dead_letter("d1", "Bad", "alpha", 30),
        dead_letter("d2", "Bad", "beta", 10),
        dead_letter("d3", "Timeout", "alpha", 20),
    ]
    groups = group_dead_letters(records, "reason")
    assert [(g.key, g.count, g.documents) for g in groups] == [("Bad", 2, 2), ("Timeout", 1, 1)]
    assert groups[0].last - groups[0].first == timedelta(minutes=20)
    row = groups[0].to_json("reason")
    assert row["reason"] == "Bad" and json.loads(json.dumps(row)) == row


async def test_unknown_ids_are_not_found_with_what_to_do(store: Store) -> None:
    with pytest.raises(NotFound, match="no batch 'nope' in the store"):
        await find_batches(store, ["nope"])
    with pytest.raises(NotFound, match="no batch 'nope'"):
        await collect_report(store, "nope")
    with pytest.raises(NotFound, match="no results for document 'd9'"):
        await result_history(store, "d9")
    with pytest.raises(NotFound, match="see `docbus dlq list`"):
        await show_dead_letter(store, "alpha@nothing")


async def test_a_dead_letter_is_shown_with_its_document_as_json(store: Store) -> None:
    await store.record_batch("b1", topic="documents", source=["x.jsonl"])
    await store.record_dead_letter(dead_letter("d1", "Bad", "alpha", 5))
    (record,) = await store.dead_letters()
    detail = await show_dead_letter(store, record.id)
    data = detail.to_json()
    assert data["dead_letter"]["id"] == record.id and data["document"] is None
    assert json.loads(json.dumps(data)) == data


async def test_the_current_result_is_chosen_and_a_missing_version_is_named(store: Store) -> None:
    for generation, version_of in enumerate(("1.0", "1.1")):
        await store.write_result(
            doc_id="d1", handler="alpha", handler_version=version_of, batch_id="b1",
            message_id=message_id("b1", "d1", generation), output={"n": generation},
            generation=generation,
        )  # fmt: skip
    versions = await result_history(store, "d1")
    assert [v.version for v in versions] == [1, 2]
    current = choose_result("d1", versions)
    assert current.version == 2 and result_json(current)["state"] == "current"
    assert result_json(versions[0])["state"] == "superseded"
    with pytest.raises(NotFound, match=r"has no version 7 \(versions: 1, 2\)"):
        choose_result("d1", versions, version=7)


async def test_parked_messages_are_counted_listed_and_resumed_once(store: Store) -> None:
    for number, (doc, reason) in enumerate([("d1", "OverBudget"), ("d2", "OverBudget")]):
        await store.park(
            ParkedMessage(
                topic="documents", subscription="alpha", sequence_number=number, reason=reason,
                batch_id="b1", doc_id=doc, handler="alpha",
            )
        )  # fmt: skip
    selection = ParkedSelection(batch_id="b1", reason="OverBudget")
    overview = await parked_overview(store, selection)
    assert selection.describe() == "batch=b1, reason=OverBudget"
    assert overview.to_json()["total"] == 2
    assert [(g.reason, g.count) for g in overview.groups] == [("OverBudget", 2)]
    assert await request_resume(store, selection) == 2
    assert await request_resume(store, selection) == 0
