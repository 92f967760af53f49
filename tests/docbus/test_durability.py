"""Durable writes: what the store acknowledged survives a SIGKILL of the server.

Each test runs SecantusDB on a data directory, makes a few hundred acknowledged writes of one
kind, kills the server (SIGKILL) at once after the last acknowledgement, starts it again on the
same directory and counts what is there. Without a journaled write concern the server loses the
writes of its last few milliseconds (in trials, 5 to 66 of 300) however the test is timed; with
it, none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from docbus.envelope import Envelope, message_id
from docbus.local.mongo import LocalMongo
from docbus.records import DeadLetterRecord, ReplayRecord
from docbus.store import DeadLetterFilter, Store

WRITES = 300

Write = Callable[[Store, int], Awaitable[object]]
Count = Callable[[Store], Awaitable[int]]


def dead_letter(i: int) -> DeadLetterRecord:
    return DeadLetterRecord(
        message_id=message_id("b1", f"d{i}"), subscription="alpha", reason="BadDocument",
        handler="alpha", batch_id="b1", doc_id=f"d{i}", generation=0,
    )  # fmt: skip


async def write_result(store: Store, i: int) -> object:
    return await store.write_result(
        doc_id=f"d{i}", handler="alpha", handler_version="1", batch_id="b1",
        message_id=message_id("b1", f"d{i}"), output={"i": i},
    )  # fmt: skip


async def results(store: Store) -> int:
    return await store.database["current_results"].count_documents({})


async def write_results_together(store: Store, i: int) -> object:
    # Ten results at a time go as one bulk write (the group commit a busy worker uses).
    if i % 10 == 0:
        await asyncio.gather(*(write_result(store, i + k) for k in range(10)))
    return None


async def record_dead_letter(store: Store, i: int) -> object:
    return await store.record_dead_letter(dead_letter(i))


async def dead_letters(store: Store) -> int:
    return len(await store.dead_letters(DeadLetterFilter(batch_id="b1")))


async def record_document(store: Store, i: int) -> object:
    envelope = Envelope(doc_id=f"d{i}", batch_id="b1", topic="docs", content=f"text {i}")
    return await store.record_documents([envelope])


async def documents(store: Store) -> int:
    return await store.database["documents"].count_documents({"batch_id": "b1"})


async def put_payload(store: Store, i: int) -> object:
    return await store.put_payload(f"payload {i} " * 20)


async def payloads(store: Store) -> int:
    return await store.database["payloads"].count_documents({})


async def claim_replay(store: Store, i: int) -> object:
    record = dead_letter(i)
    await store.record_dead_letter(record)
    return await store.claim_dead_letter_replay(record)


async def claims(store: Store) -> int:
    return len(await store.dead_letters(DeadLetterFilter(batch_id="b1", replayed=True)))


async def record_replay(store: Store, i: int) -> object:
    return await store.record_replay(ReplayRecord(id=f"replay-{i}", kind="batch"))


async def replays(store: Store) -> int:
    return await store.database["replays"].count_documents({})


async def park(store: Store, i: int) -> object:
    # Parking writes through ``store.database`` (it is not in the store yet): its writes
    # must be as durable as the store's own.
    return await store.database["parked"].update_one(
        {"_id": f"alpha@b1:d{i}:0"}, {"$set": {"sequence_number": i}}, upsert=True
    )


async def parked(store: Store) -> int:
    return await store.database["parked"].count_documents({})


KINDS: dict[str, tuple[Write, Count]] = {
    "results": (write_result, results),
    "results written together": (write_results_together, results),
    "dead-letter records": (record_dead_letter, dead_letters),
    "documents": (record_document, documents),
    "claim-check payloads": (put_payload, payloads),
    "dead-letter replay claims": (claim_replay, claims),
    "replay records": (record_replay, replays),
    "parked records": (park, parked),
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_acknowledged_writes_survive_a_sigkill_of_the_server(
    kind: str, tmp_path: Path
) -> None:
    write, count = KINDS[kind]
    mongo = LocalMongo(data_dir=tmp_path / "mongo")
    await mongo.start()
    try:
        # (a short timeout: closing the client after the kill waits that long for the server)
        async with Store(mongo.uri, "durability", timeout=0.5) as store:
            await store.ensure_indexes()
            for i in range(WRITES):
                await write(store, i)
            await mongo.kill()  # right after the last acknowledgement
        await mongo.start()
        async with Store(mongo.uri, "durability", timeout=5.0) as store:
            assert await count(store) == WRITES
    finally:
        await mongo.stop()
