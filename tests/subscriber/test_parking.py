"""Parked-message records: only confirmed deferrals are fetched back, unless long unconfirmed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from docbus.store import Store
from subscriber.parking import (
    UNCONFIRMED_AFTER,
    ParkedMessage,
    mark_deferred,
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
