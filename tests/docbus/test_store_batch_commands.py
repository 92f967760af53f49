"""What a batch-mode round costs the server: Mongo commands per delivery, and ``$in`` sizes.

A round re-runs every parked delivery at once: each registers its next request, parks (record,
confirmation), is marked resumed when fetched back, and the submitter marks a whole provider
batch's deliveries for resumption. Those writes and reads must go grouped — a few commands
for a round's concurrent deliveries, not one or two each — and the round-wide ones in ``$in``
slices (a ``$in`` of thousands of keys is quadratic on SecantusDB). Counted with the pymongo
command listener of tests/docbus/test_store_commands.py; what the writes mean is
tests/docbus/test_store_llm_batch.py's and tests/subscriber/test_batch_parking.py's.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from docbus.llm_batch import BatchRequest
from docbus.store import LLMRequestState, ParkedMessage, Store
from docbus.store._base import IN_SLICE
from tests.docbus import test_store_commands
from tests.docbus.test_store_commands import WRITE_COMMANDS, Commands

counted = test_store_commands.counted
"""The fixture: a store on a fresh database whose commands are counted."""

DELIVERIES = 60
ROUND = 2 * IN_SLICE + 50
"""Requests of a round-wide command: more than two slices."""
AWAITING = "AwaitingBatch"


def request(i: int) -> BatchRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": f"Summarise {i}."}]}
    return BatchRequest.of(f"step-{i}", body)


async def registered(store: Store, count: int) -> list[BatchRequest]:
    """``count`` requests registered one by one (not counted: the caller takes the commands)."""
    made = [request(i) for i in range(count)]
    for i, r in enumerate(made):
        await store.register_llm_request(r, step_id=f"step-{i}")
    return made


def parked(i: int, keys: list[str], reason: str = AWAITING) -> ParkedMessage:
    return ParkedMessage(
        topic="t", subscription="s", sequence_number=i + 1, reason=reason, doc_id=f"d{i}",
        llm_requests=keys,
    )  # fmt: skip


def names(sent: list[tuple[str, dict[str, Any]]]) -> Counter[str]:
    return Counter(name for name, _ in sent)


def assert_durable(sent: list[tuple[str, dict[str, Any]]]) -> None:
    for name, command in sent:
        if name in WRITE_COMMANDS:
            concern = command.get("writeConcern", {})
            assert (concern.get("w"), concern.get("j")) == ("majority", True), (name, concern)


async def test_a_round_of_registrations_is_a_few_grouped_commands(
    counted: tuple[Store, Commands],
) -> None:
    store, commands = counted
    made = [request(i) for i in range(DELIVERIES)]
    records = await asyncio.gather(
        *(store.register_llm_request(r, step_id=f"step-{i}", doc_id=f"d{i}") for i, r in
          enumerate(made))
    )  # fmt: skip
    sent = commands.take()
    # was one findAndModify per request
    assert len(sent) <= 6, names(sent)
    assert_durable(sent)
    # inserts, not upserts: an upsert costs the server a lookup before each insert
    assert set(names(sent)) == {"insert"}, names(sent)
    assert all(record.state is LLMRequestState.PENDING for record in records)
    # what each got back is what is stored
    stored = await store.llm_requests([r.key for r in made])
    assert [stored[r.key] for r in made] == list(records)

    # registering again (a redelivery) finds the same records, in a few grouped reads
    again = await asyncio.gather(
        *(store.register_llm_request(r, step_id=f"step-{i}", doc_id=f"d{i}") for i, r in
          enumerate(made))
    )  # fmt: skip
    assert list(again) == list(records)
    assert len(commands.take()) <= 10
    assert await store.count_llm_requests() == {
        "pending": DELIVERIES, "submitted": 0, "answered": 0, "failed": 0, "held": 0,
    }  # fmt: skip


async def test_parking_a_round_of_deliveries_is_a_few_grouped_commands(
    counted: tuple[Store, Commands],
) -> None:
    store, commands = counted
    made = await registered(store, DELIVERIES)
    records = [parked(i, [r.key]) for i, r in enumerate(made)]
    commands.take()

    # park, the park-time look at the requests, confirm: as every delivery of a round does
    async def park(record: ParkedMessage) -> None:
        await store.park(record)
        assert not await store.resume_parked_if_answered(record)  # still pending
        await store.mark_parked_deferred(record)

    await asyncio.gather(*(park(record) for record in records))
    sent = commands.take()
    # was 6 commands per delivery (replace, upsert, 2 finds, confirm... )
    assert len(sent) <= 12, names(sent)
    assert_durable(sent)
    fetchable = await store.parked(topic="t", subscription="s", fetchable=True)
    assert [p.id for p in fetchable] == [p.id for p in records]

    # parked again before being resumed: the first record stays (its reason, its keys)
    await asyncio.gather(*(store.park(parked(i, [], reason="Other")) for i in range(3)))
    kept = await store.parked(topic="t", subscription="s")
    assert all(p.reason == AWAITING and p.llm_requests for p in kept)

    # fetched back and parked again for the next round: the resumed records are replaced
    await store.mark_parked_resumed(records)
    commands.take()
    following = [request(100 + i) for i in range(DELIVERIES)]
    await asyncio.gather(
        *(store.park(parked(i, [r.key])) for i, r in enumerate(following))
    )  # fmt: skip
    assert len(commands.take()) <= 6
    replaced = await store.parked(topic="t", subscription="s")
    assert [p.llm_requests for p in replaced] == [[r.key] for r in following]
    assert all(p.resumed_at is None and not p.deferred for p in replaced)


async def test_marking_a_round_for_resumption_sends_the_keys_in_slices(
    counted: tuple[Store, Commands],
) -> None:
    store, commands = counted
    keys = [r.key for r in await registered(store, ROUND)]
    count = len(keys)
    await asyncio.gather(*(store.park(parked(i, [k])) for i, k in enumerate(keys)))
    # the first half answered (as an apply leaves them), the rest still submitted
    done, open_ = keys[: count // 2], keys[count // 2 :]
    requests = store.database["llm_requests"]
    await requests.update_many({"_id": {"$in": done}}, {"$set": {"state": "answered"}})
    await requests.update_many({"_id": {"$in": open_}}, {"$set": {"state": "submitted"}})
    commands.take()

    assert await store.request_resume_for_llm_requests(keys) == len(done)
    sent = commands.take()
    longest = max(_longest_in(command) for _, command in sent)
    # was one $in of every key (quadratic on SecantusDB: 2.8 s for 2,000 keys)
    assert longest <= IN_SLICE, names(sent)
    marked = await store.database["parked"].count_documents({"resume_requested_at": {"$ne": None}})
    assert marked == len(done)
    assert await store.request_resume_for_llm_requests(keys) == 0  # marked once


async def test_a_delivery_whose_requests_were_answered_while_it_parked_is_marked(
    counted: tuple[Store, Commands],
) -> None:
    store, _ = counted
    made = await registered(store, 2)
    record = parked(0, [r.key for r in made])
    await store.park(record)
    requests = store.database["llm_requests"]
    await requests.update_one({"_id": made[0].key}, {"$set": {"state": "answered"}})
    assert not await store.resume_parked_if_answered(record)  # one still open
    await requests.update_one({"_id": made[1].key}, {"$set": {"state": "failed"}})
    assert await store.resume_parked_if_answered(record)
    [stored] = await store.parked(topic="t", subscription="s")
    assert stored.resume_requested_at is not None


def _longest_in(value: Any) -> int:
    """The most values of any ``$in`` in a command."""
    if isinstance(value, dict):
        here = len(value["$in"]) if isinstance(value.get("$in"), list) else 0
        return max([here, *(_longest_in(v) for v in value.values())])
    if isinstance(value, list):
        return max([0, *(_longest_in(v) for v in value)])
    return 0


async def test_claiming_a_round_sends_the_keys_in_slices_and_claims_each_once(
    counted: tuple[Store, Commands],
) -> None:
    store, commands = counted
    made = await registered(store, ROUND)
    keys, endpoint = [r.key for r in made], made[0].endpoint
    commands.take()
    first = await store.claim_llm_requests("pb-1", endpoint, "m", keys[:10], token=1)
    second = await store.claim_llm_requests("pb-2", endpoint, "m", keys, token=1)
    sent = commands.take()
    assert max(_longest_in(command) for _, command in sent) <= IN_SLICE, names(sent)
    # a request already claimed by an open record is not claimed again
    assert first.keys == keys[:10] and second.keys == keys[10:]
    assert await store.count_llm_requests() == {
        "pending": 0, "submitted": ROUND, "answered": 0, "failed": 0, "held": 0,
    }  # fmt: skip
