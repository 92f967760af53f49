"""Parked-message records: only confirmed deferrals are fetched back, unless long unconfirmed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from docbus.store import Store
from docbus.store._parked import UNCONFIRMED_AFTER
from subscriber.parking import (
    ParkedMessage,
    mark_deferred,
    may_resume,
    park,
    parked_messages,
    unpark,
)


def parked(seq: int, **extra: object) -> ParkedMessage:
    return ParkedMessage(
        topic="t", subscription="s", sequence_number=seq, reason="OverBudget", **extra
    )  # type: ignore[arg-type]


async def test_a_record_is_only_resumable_once_the_deferral_is_confirmed(store: Store) -> None:
    record = parked(7)
    await park(store, record)
    assert await parked_messages(store, "t", "s") == []  # a resumer must not race the defer
    await mark_deferred(store, record)
    assert [p.sequence_number for p in await parked_messages(store, "t", "s")] == [7]
    await unpark(store, record)
    assert await parked_messages(store, "t", "s") == []


async def test_a_long_unconfirmed_record_is_looked_at_again(store: Store) -> None:
    old = datetime.now(UTC) - UNCONFIRMED_AFTER - timedelta(seconds=1)
    await park(store, parked(3, parked_at=old))
    await park(store, parked(4))
    assert [p.sequence_number for p in await parked_messages(store, "t", "s")] == [3]


async def test_parking_twice_keeps_one_record_and_filters_by_reason(store: Store) -> None:
    await park(store, parked(1))
    await park(store, parked(1))
    await mark_deferred(store, parked(1))
    assert len(await parked_messages(store, "t", "s")) == 1
    assert await parked_messages(store, "t", "s", reason="SystemicFailure") == []


def parked_for(reason: str, **fields: object) -> ParkedMessage:
    fields.update(topic="t", subscription="s", sequence_number=1, reason=reason)
    return ParkedMessage.model_validate(fields)


def test_which_parked_messages_a_worker_resumes() -> None:
    systemic, budget = parked_for("SystemicFailure"), parked_for("OverBudget", batch_id="b")
    assert not may_resume(systemic, llm_works=False)
    assert not may_resume(systemic, llm_works=None)
    assert may_resume(systemic, llm_works=True)
    assert not may_resume(budget, llm_works=True, over_budget=True)
    assert may_resume(budget, llm_works=False, over_budget=False)
    assert may_resume(parked_for("GivenBack"), llm_works=False)  # nothing to wait for
    requested = parked_for("SystemicFailure", resume_requested_at="2026-01-01T00:00:00Z")
    assert may_resume(requested, llm_works=False)  # an operator asked


async def test_deliveries_still_awaiting_answers_do_not_hide_resumable_ones(store: Store) -> None:
    # a page of records awaiting their batch answers (lowest sequence numbers first) must not
    # keep a resumer from the ones it can fetch back
    for number in (1, 2, 3):
        await park(store, ParkedMessage(
            topic="t", subscription="s", sequence_number=number, reason="AwaitingBatch",
            llm_requests=[f"k{number}"], deferred=True,
        ))  # fmt: skip
    for number in (4, 5, 6):
        await park(store, ParkedMessage(
            topic="t", subscription="s", sequence_number=number, reason="SystemicFailure",
            deferred=True,
        ))  # fmt: skip
    await store.database["parked"].update_one(
        {"sequence_number": 2}, {"$set": {"resume_requested_at": datetime.now(UTC)}}
    )
    page = await parked_messages(store, "t", "s", waiting=False, limit=2)
    assert [p.sequence_number for p in page] == [2, 4]
    rest = await parked_messages(store, "t", "s", waiting=False, after=4, limit=2)
    assert [p.sequence_number for p in rest] == [5, 6]
