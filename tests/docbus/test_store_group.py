"""Group commit (docbus.store._group) against SecantusDB: what leaves as one command, and who
hears which outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson.errors import InvalidDocument
from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    WriteConcernError,
    WTimeoutError,
)
from pymongo.write_concern import WriteConcern

from docbus.store import Store, StoreUnavailable, _translated
from docbus.store._group import GroupFinder, GroupWriter, lingering, send_lingering_writes


class Counting:
    """A collection that counts its bulk writes and finds and can hold them at a gate."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self.collection = collection
        self.bulk_writes: list[int] = []  # ops per command
        self.finds: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()  # a bulk write has begun
        self.failure: BaseException | None = None

    async def bulk_write(self, ops: list[Any], ordered: bool = True) -> Any:
        assert ordered is False
        self.bulk_writes.append(len(ops))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return await self.collection.bulk_write(ops, ordered=ordered)

    def find(self, query: dict[str, Any]) -> Any:
        self.finds.append(query)
        return self.collection.find(query)


@pytest.fixture
def things(store: Store) -> Counting:
    return Counting(store.database["things"])


def writer(counting: Counting) -> GroupWriter:
    return GroupWriter(lambda: counting, "things")  # type: ignore[arg-type,return-value]


async def test_writes_made_together_leave_as_one_command_each_with_its_own_outcome(
    things: Counting,
) -> None:
    await things.collection.insert_one({"_id": "old"})
    group = writer(things)
    inserts = [group.write(InsertOne({"_id": f"new-{i}"})) for i in range(5)]
    upserts = [
        group.write(UpdateOne({"_id": key}, {"$setOnInsert": {"v": 1}}, upsert=True))
        for key in ("old", "fresh")
    ]
    outcomes = await asyncio.gather(*inserts, *upserts)
    assert things.bulk_writes == [7]
    assert outcomes == [False] * 5 + [False, True]  # only the upsert of "fresh" created one
    assert await things.collection.count_documents({}) == 7


async def test_a_duplicate_key_fails_only_the_write_that_met_it(things: Counting) -> None:
    await things.collection.insert_one({"_id": "taken"})
    group = writer(things)
    outcomes = await asyncio.gather(
        group.write(InsertOne({"_id": "a"})),
        group.write(InsertOne({"_id": "taken"})),
        group.write(InsertOne({"_id": "b"})),
        return_exceptions=True,
    )
    assert outcomes[0] is False and outcomes[2] is False
    assert isinstance(outcomes[1], DuplicateKeyError)
    assert {doc["_id"] async for doc in things.collection.find({})} == {"a", "b", "taken"}


async def test_writes_arriving_during_a_command_leave_together_in_the_next(
    things: Counting,
) -> None:
    group = writer(things)
    things.gate = asyncio.Event()
    first = asyncio.ensure_future(group.write(InsertOne({"_id": "first"})))
    await things.entered.wait()  # the first command is on its way
    later = [asyncio.ensure_future(group.write(InsertOne({"_id": f"later-{i}"}))) for i in range(4)]
    await asyncio.sleep(0)
    assert things.bulk_writes == [1]  # nothing overtakes the command in flight
    things.gate.set()
    await asyncio.gather(first, *later)
    assert things.bulk_writes == [1, 4]


async def test_a_command_that_fails_fails_every_write_in_it_and_the_next_one_goes(
    things: Counting,
) -> None:
    group = writer(things)
    things.failure = AutoReconnect("connection reset")
    outcomes = await asyncio.gather(
        group.write(InsertOne({"_id": "x"})),
        group.write(InsertOne({"_id": "y"})),
        return_exceptions=True,
    )
    assert all(isinstance(outcome, AutoReconnect) for outcome in outcomes)
    things.failure = None
    assert await group.write(InsertOne({"_id": "z"})) is False
    assert await things.collection.count_documents({}) == 1


async def test_increments_of_one_document_are_summed_into_one_update(things: Counting) -> None:
    await things.collection.insert_many([{"_id": "b1", "n": 0}, {"_id": "b2", "n": 0}])
    group = writer(things)
    await asyncio.gather(
        *(group.increment("b1", {"n": 1, "usd": 0.25}) for _ in range(8)),
        group.increment("b2", {"n": 5}),
    )
    assert things.bulk_writes == [2]  # one $inc per document
    assert await things.collection.find_one({"_id": "b1"}) == {"_id": "b1", "n": 8, "usd": 2.0}
    assert await things.collection.find_one({"_id": "b2"}) == {"_id": "b2", "n": 5}


async def test_reads_made_together_are_one_query_split_by_key(things: Counting) -> None:
    await things.collection.insert_many(
        [
            {"_id": 1, "doc": "d1", "handler": "a"},
            {"_id": 2, "doc": "d1", "handler": "b"},
            {"_id": 3, "doc": "d2", "handler": "a"},
        ]
    )
    finder: GroupFinder[tuple[str, str]] = GroupFinder(
        lambda: things,  # type: ignore[arg-type,return-value]
        "things",
        "doc",
        lambda raw: (raw["doc"], raw["handler"]),
    )
    d1a, d1b, d2a, d3a, d1a_again = await asyncio.gather(
        finder.find(("d1", "a"), "d1"),
        finder.find(("d1", "b"), "d1"),
        finder.find(("d2", "a"), "d2"),
        finder.find(("d3", "a"), "d3"),
        finder.find(("d1", "a"), "d1"),
    )
    assert things.finds == [{"doc": {"$in": ["d1", "d2", "d3"]}}]
    assert [r["_id"] for r in d1a] == [1] and [r["_id"] for r in d1b] == [2]
    assert [r["_id"] for r in d2a] == [3] and d3a == []
    assert d1a_again == d1a and d1a_again is not d1a  # each caller owns its list


async def test_store_errors_of_grouped_writes_are_translated_for_each_caller(
    store: Store,
) -> None:
    counting = Counting(store.database["llm_calls"])
    counting.failure = AutoReconnect("primary stepped down")
    store._writers["llm_calls"] = writer(counting)
    with pytest.raises(StoreUnavailable, match="record llm call"):
        await store.record_llm_call({"batch_id": "b1", "doc_id": "d1"})


async def test_a_write_concern_timeout_of_a_group_is_transient_for_each_caller(
    store: Store, things: Counting
) -> None:
    # What a replica set answers when the majority (or the journal) did not confirm in time.
    things.failure = BulkWriteError(
        {
            "writeErrors": [],
            "writeConcernErrors": [
                {"code": 64, "errmsg": "waiting for replication timed out", "errInfo": {}}
            ],
            "nInserted": 2,
        }
    )
    group = writer(things)
    outcomes = await asyncio.gather(
        group.write(InsertOne({"_id": "a"})),
        group.write(InsertOne({"_id": "b"})),
        return_exceptions=True,
    )
    assert [type(outcome) for outcome in outcomes] == [WTimeoutError, WTimeoutError]
    with pytest.raises(StoreUnavailable, match="timed out"), _translated("write"):
        raise outcomes[0]
    # a write concern the server cannot meet at all is no timeout: the operator must act
    unsatisfiable = GroupWriter(
        lambda: store.database.get_collection("things", write_concern=WriteConcern(w=5)), "w5"
    )
    with pytest.raises(WriteConcernError) as caught:
        await unsatisfiable.write(InsertOne({"_id": "c"}))
    assert not isinstance(caught.value, WTimeoutError)


async def test_closing_the_store_sends_what_its_groups_still_hold(store: Store) -> None:
    counting = Counting(store.database["llm_calls"])
    counting.gate = asyncio.Event()
    store._writers["llm_calls"] = writer(counting)
    pending = asyncio.ensure_future(store.record_llm_call({"batch_id": "b1", "doc_id": "d1"}))
    await counting.entered.wait()
    closing = asyncio.ensure_future(store.close())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not closing.done()  # close waits for the command held at the gate
    counting.gate.set()
    await closing
    assert pending.done() and not pending.exception()
    await store.connect()
    assert await store.database["llm_calls"].count_documents({"doc_id": "d1"}) == 1


async def test_a_write_the_driver_cannot_encode_fails_alone(things: Counting) -> None:
    group = writer(things)
    outcomes = await asyncio.gather(
        group.write(InsertOne({"_id": "fine"})),
        group.write(InsertOne({"_id": "bad", "value": object()})),
        group.write(InsertOne({"_id": "also fine"})),
        return_exceptions=True,
    )
    assert outcomes[0] is False and outcomes[2] is False
    assert isinstance(outcomes[1], InvalidDocument)
    assert {doc["_id"] async for doc in things.collection.find({})} == {"fine", "also fine"}


async def test_increments_made_during_a_command_are_summed_into_the_next(
    things: Counting,
) -> None:
    await things.collection.insert_one({"_id": "b1", "n": 0})
    group = writer(things)
    things.gate = asyncio.Event()
    first = asyncio.ensure_future(group.increment("b1", {"n": 1}))
    await things.entered.wait()
    later = [asyncio.ensure_future(group.increment("b1", {"n": 10})) for _ in range(3)]
    things.gate.set()
    await asyncio.gather(first, *later)
    assert things.bulk_writes == [1, 1]
    assert await things.collection.find_one({"_id": "b1"}) == {"_id": "b1", "n": 31}


async def test_requests_left_when_the_sending_task_is_cancelled_are_cancelled_too(
    things: Counting,
) -> None:
    group = writer(things)
    things.gate = asyncio.Event()
    first = asyncio.ensure_future(group.write(InsertOne({"_id": "a"})))
    await things.entered.wait()
    queued = asyncio.ensure_future(group.write(InsertOne({"_id": "b"})))
    await asyncio.sleep(0)
    assert group._flight is not None
    group._flight.cancel()  # the loop shutting down
    await group.drain()  # returns: nothing left to wait for
    for request in (first, queued):
        with pytest.raises(asyncio.CancelledError):
            await request


async def test_reads_that_agree_on_a_filter_send_it_to_the_server(things: Counting) -> None:
    await things.collection.insert_many(
        [{"_id": 1, "doc": "d1", "handler": "a"}, {"_id": 2, "doc": "d1", "handler": "b"}]
    )
    finder: GroupFinder[tuple[str, str]] = GroupFinder(
        lambda: things,  # type: ignore[arg-type,return-value]
        "things",
        "doc",
        lambda raw: (raw["doc"], raw["handler"]),
    )
    [found] = await asyncio.gather(finder.find(("d1", "a"), "d1", {"handler": "a"}))
    assert things.finds == [{"doc": "d1", "handler": "a"}]
    assert [r["_id"] for r in found] == [1]


def lingering_group(counting: Counting, linger: float = 60.0) -> GroupWriter:
    return GroupWriter(lambda: counting, "things", linger=linger)  # type: ignore[arg-type,return-value]


async def test_patient_writes_made_apart_wait_for_each_other_up_to_the_linger(
    things: Counting,
) -> None:
    group = lingering_group(things, linger=0.3)
    with lingering():
        first = asyncio.ensure_future(group.write(InsertOne({"_id": "a"})))
    await asyncio.sleep(0.05)  # made later, in another turn of the loop: still the same command
    with lingering():
        second = asyncio.ensure_future(group.increment("a", {"n": 1}))
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert things.bulk_writes == [2]
    assert asyncio.get_running_loop().time() - started >= 0.2  # it waited for the linger


async def test_a_write_someone_waits_for_takes_the_lingering_ones_along_at_once(
    things: Counting,
) -> None:
    group = lingering_group(things)  # a minute: reaching it would fail the wait_for below
    with lingering():
        behind = [asyncio.ensure_future(group.write(InsertOne({"_id": i}))) for i in range(3)]
    await asyncio.sleep(0)  # the flight starts, and lingers
    await asyncio.wait_for(group.write(InsertOne({"_id": "now"})), 5)
    await asyncio.wait_for(asyncio.gather(*behind), 5)
    assert things.bulk_writes == [4]


async def test_hurry_and_drain_send_lingering_writes_at_once(things: Counting) -> None:
    group = lingering_group(things)
    with lingering():
        behind = asyncio.ensure_future(group.write(InsertOne({"_id": "x"})))
    await asyncio.sleep(0)
    send_lingering_writes()
    await asyncio.wait_for(behind, 5)
    with lingering():
        behind = asyncio.ensure_future(group.write(InsertOne({"_id": "y"})))
    await asyncio.sleep(0)
    await asyncio.wait_for(group.drain(), 5)
    assert behind.done() and things.bulk_writes == [1, 1]


async def test_writes_made_outside_patiently_never_linger(things: Counting) -> None:
    group = lingering_group(things)
    await asyncio.wait_for(group.write(InsertOne({"_id": "plain"})), 5)
    await asyncio.wait_for(group.increment("plain", {"n": 1}), 5)
    assert things.bulk_writes == [1, 1]
