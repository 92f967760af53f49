"""Parked-message records: only confirmed deferrals are fetched back, unless long unconfirmed."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from docbus.store import Store
from docbus.store._parked import UNCONFIRMED_AFTER
from subscriber.parking import (
    ParkedMessage,
    fetchable_parked,
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
    return ParkedMessage.model_validate(
        {"topic": "t", "subscription": "s", "sequence_number": 1, **fields, "reason": reason}
    )


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


async def test_a_look_reads_unconfirmed_records_too_and_tells_them_apart(store: Store) -> None:
    # the resumer reads a subscription's records once, whatever their deferral: a confirmed
    # one goes now; an unconfirmed one marked for resumption makes it look again soon
    now = datetime.now(UTC)
    await park(store, parked(1, deferred=True))
    await park(store, parked(2, resume_requested_at=now))  # its deferral not confirmed yet
    await park(store, parked(3, deferred=True, resumed_at=now))  # in a worker's hands
    looked = await parked_messages(store, "t", "s", confirmed=False)
    assert [(p.sequence_number, p.deferral_settled(now)) for p in looked] == [
        (1, True), (2, False),
    ]  # fmt: skip
    # the page read again by id just before fetching: only what may be fetched now
    assert [p.sequence_number for p in await fetchable_parked(store, [p.id for p in looked])] == [1]
    await mark_deferred(store, parked(2))
    assert [p.sequence_number for p in await fetchable_parked(store, [parked(2).id])] == [2]


async def test_records_judged_in_hand_match_what_the_query_of_fetchable_ones_returns(
    store: Store,
) -> None:
    # fetchable_parked judges records read by id; parked(fetchable=True, waiting=False) asks
    # the server: both say the same of every combination of the fields they look at
    now = datetime.now(UTC)
    old = now - UNCONFIRMED_AFTER - timedelta(seconds=5)
    combinations = itertools.product(
        [True, False],  # deferred
        [now, old],  # parked_at
        [None, now, old],  # resumed_at
        ["AwaitingBatch", "SystemicFailure"],  # reason
        [None, now],  # resume_requested_at
    )
    records = [
        parked_for(reason, sequence_number=seq, deferred=deferred, parked_at=parked_at,
                   resumed_at=resumed_at, resume_requested_at=requested)
        for seq, (deferred, parked_at, resumed_at, reason, requested) in enumerate(combinations)
    ]  # fmt: skip
    await store.database["parked"].insert_many([r.model_dump() | {"_id": r.id} for r in records])
    asked = await parked_messages(store, "t", "s", waiting=False, limit=0)
    judged = await fetchable_parked(store, [r.id for r in records])
    assert 0 < len(judged) < len(records)
    assert [p.sequence_number for p in judged] == [p.sequence_number for p in asked]
