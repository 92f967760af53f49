"""Writes behind the handler (handlers.writes): it goes on, nothing is lost, order holds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from docbus.local.llm_server import LLMServer
from docbus.store import Store, StoreUnavailable
from docbus.store._group import GroupWriter
from handlers import Retry
from handlers.runtime import delivery_of
from handlers.writes import (
    PendingWrites,
    WriteCancelled,
    backlog_of,
    drain_backlog,
    durably,
)
from tests.handlers.llm_support import INVOICE_TEXT, Invoice, Summary, make_client, make_ctx


class Gate:
    """A collection whose bulk writes wait at a gate (or fail) until the test says so."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.open = asyncio.Event()
        self.reached = asyncio.Event()
        self.failure: BaseException | None = None

    async def bulk_write(self, ops: list[Any], ordered: bool = True) -> Any:
        self.reached.set()
        await self.open.wait()
        if self.failure is not None:
            raise self.failure
        return await self.collection.bulk_write(ops, ordered=ordered)


def gate(store: Store, name: str) -> Gate:
    held = Gate(store.database[name])
    store._writers[name] = GroupWriter(lambda: held, name)  # type: ignore[arg-type,return-value]
    return held


async def test_the_handler_goes_on_while_its_audit_rows_and_checkpoints_are_acknowledged(
    llm_server: LLMServer, store: Store
) -> None:
    audit = gate(store, "llm_calls")
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client, write_behind=True)
        invoice = await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT)
        summary = await ctx.step("summary", ctx.llm.extract, Summary, INVOICE_TEXT)
        # both steps are done while the first audit row still waits at the gate
        assert isinstance(invoice, Invoice) and isinstance(summary, Summary)
        assert audit.reached.is_set() and len(delivery_of(ctx).writes) > 0
        assert await store.database["llm_calls"].count_documents({}) == 0
        # a checkpoint waits for the audit rows written before it
        assert await store.database["checkpoints"].count_documents({}) == 0
        flushing = asyncio.ensure_future(delivery_of(ctx).writes.flush())
        await asyncio.sleep(0)
        assert not flushing.done()
        audit.open.set()
        await flushing
    assert len(delivery_of(ctx).writes) == 0
    assert await store.database["llm_calls"].count_documents({}) == 2
    assert await store.database["checkpoints"].count_documents({}) == 2
    batch = await store.get_batch("b1")
    assert batch is None or batch.cost.calls == 2  # no batch record: no totals kept


async def test_an_audit_write_refused_by_an_outage_is_held_until_stored_then_its_checkpoint(
    llm_server: LLMServer, store: Store
) -> None:
    audit = gate(store, "llm_calls")
    audit.failure = AutoReconnect("primary stepped down")
    audit.open.set()
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client, write_behind=True)
        await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT)
        flushing = asyncio.ensure_future(delivery_of(ctx).writes.flush())
        await asyncio.sleep(0.6)  # a few tries, all refused: the flush waits, it does not fail
        assert not flushing.done() and len(backlog_of(store)) >= 1
        assert await store.database["checkpoints"].count_documents({}) == 0  # not before it
        audit.failure = None  # the outage ends
        await asyncio.wait_for(flushing, 10)
    assert await store.database["llm_calls"].count_documents({}) == 1
    assert await store.database["checkpoints"].count_documents({}) == 1
    assert len(backlog_of(store)) == 0


async def test_an_audit_row_whose_first_try_was_stored_unbeknown_is_stored_once(
    llm_server: LLMServer, store: Store
) -> None:
    class StoredThenTimedOut(Gate):
        async def bulk_write(self, ops: list[Any], ordered: bool = True) -> Any:
            if self.failure is None:
                return await self.collection.bulk_write(ops, ordered=ordered)
            await self.collection.bulk_write(ops, ordered=ordered)
            failure, self.failure = self.failure, None
            raise failure  # written, but the answer was lost

    audit = StoredThenTimedOut(store.database["llm_calls"])
    audit.failure = AutoReconnect("timed out")
    store._writers["llm_calls"] = GroupWriter(lambda: audit, "llm_calls")  # type: ignore[arg-type,return-value]
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client, write_behind=True)
        await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT)
        await asyncio.wait_for(delivery_of(ctx).writes.flush(), 10)
    assert await store.database["llm_calls"].count_documents({}) == 1


async def test_a_redelivery_reuses_a_step_whose_checkpoint_is_still_held(
    llm_server: LLMServer, store: Store
) -> None:
    checkpoints = gate(store, "checkpoints")
    checkpoints.failure = AutoReconnect("primary stepped down")
    checkpoints.open.set()
    async with make_client(llm_server, store) as client:
        first = make_ctx(store, llm=client, write_behind=True)
        invoice = await first.step("invoice", first.llm.extract, Invoice, INVOICE_TEXT)
        await asyncio.sleep(0.3)  # its checkpoint is refused, and held
        again = make_ctx(store, llm=client, write_behind=True, attempt=2)
        assert await again.step("invoice", again.llm.extract, Invoice, INVOICE_TEXT) == invoice
        assert llm_server.stats()["requests"] == 1  # not run again
        flushing = asyncio.ensure_future(delivery_of(again).writes.flush())
        await asyncio.sleep(0.3)
        assert not flushing.done()  # its result would wait for the held checkpoint too
        checkpoints.failure = None
        await asyncio.wait_for(flushing, 10)
        await asyncio.wait_for(delivery_of(first).writes.flush(), 10)
    assert await store.database["checkpoints"].count_documents({}) == 1


async def test_a_concurrent_deliverys_checkpoint_is_adopted_in_line_and_retried_behind(
    store: Store,
) -> None:
    async def answer(value: str) -> dict[str, str]:
        return {"answer": value}

    first = make_ctx(store)
    assert await first.step("ask", answer, "same input") == {"answer": "same input"}

    async def other(_: str) -> dict[str, str]:
        return {"answer": "something else"}

    # Same key (step name and input), another output: a concurrent delivery that lost.
    in_line = make_ctx(store, attempt=2)
    delivery_of(in_line).checkpoint_cache = {}  # as if it read before the first one stored
    assert await in_line.step("ask", other, "same input") == {"answer": "same input"}

    behind = make_ctx(store, attempt=2, write_behind=True)
    delivery_of(behind).checkpoint_cache = {}
    assert await behind.step("ask", other, "same input") == {"answer": "something else"}
    with pytest.raises(Retry, match="CheckpointConflict in step ask"):
        await delivery_of(behind).writes.flush()


async def test_flush_waits_for_every_write_and_raises_the_first_failure_after_all() -> None:
    writes = PendingWrites(behind=True)
    done: list[str] = []
    release = asyncio.Event()

    async def slow(name: str) -> None:
        await release.wait()
        done.append(name)

    async def failing() -> None:
        raise ValueError("refused")

    writes.start(slow("a"))
    writes.start(failing())
    writes.start(slow("b"), after_earlier=True)  # never runs: an earlier write failed
    flushing = asyncio.ensure_future(writes.flush())
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(ValueError, match="refused"):
        await flushing
    assert done == ["a"]
    assert len(writes) == 0


async def test_flushes_may_wait_together_and_a_cancelled_one_cancels_no_write() -> None:
    writes = PendingWrites(behind=True)
    release = asyncio.Event()
    done: list[str] = []

    async def slow() -> None:
        await release.wait()
        done.append("written")

    writes.start(slow())
    first = asyncio.ensure_future(writes.flush())
    second = asyncio.ensure_future(writes.flush())
    impatient = asyncio.ensure_future(writes.flush())
    await asyncio.sleep(0)
    impatient.cancel()
    await asyncio.sleep(0)
    assert not first.done() and not second.done()  # neither returns early
    release.set()
    await asyncio.gather(first, second)
    assert done == ["written"]  # the cancelled flush took no write with it


async def test_a_failed_write_fails_every_later_flush_even_if_the_handler_caught_it() -> None:
    writes = PendingWrites(behind=True)

    async def refused() -> None:
        raise ValueError("audit row refused")

    writes.start(refused())
    with pytest.raises(ValueError):
        await writes.flush()  # say a budget check in the middle of the handler, caught there
    with pytest.raises(ValueError, match="audit row refused"):
        await writes.flush()  # the worker's flush before the result still sees it


async def test_a_step_repeated_in_one_delivery_runs_once_and_conflicts_with_nothing(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client, write_behind=True)
        both = await asyncio.gather(
            ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT),
            ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT),
        )
        again = await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT)
        await delivery_of(ctx).writes.flush()
    assert both[0] == both[1] == again
    assert llm_server.stats()["requests"] == 1
    assert await store.database["checkpoints"].count_documents({}) == 1


async def test_writes_behind_linger_for_company_but_a_blocking_flush_sends_them_now(
    llm_server: LLMServer, store: Store
) -> None:
    store._write_linger = 60.0  # a minute: any wait for it fails the wait_for calls below
    async with make_client(llm_server, store, budget_per_document_usd=100.0) as client:
        ctx = make_ctx(store, llm=client, write_behind=True)
        # the per-document budget check before the second call flushes the first call's
        # audit row: lingering, it would hold the handler for the whole minute
        await asyncio.wait_for(ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT), 10)
        await asyncio.wait_for(ctx.step("summary", ctx.llm.extract, Summary, INVOICE_TEXT), 10)
        # the second call's row and the checkpoints wait for company, until a flush hurries
        await asyncio.sleep(0.3)  # ample for a write that would leave at once
        assert await store.database["llm_calls"].count_documents({}) == 1
        assert len(delivery_of(ctx).writes) > 0
        await asyncio.wait_for(delivery_of(ctx).writes.flush(hurry=True), 10)
    assert await store.database["llm_calls"].count_documents({}) == 2
    assert await store.database["checkpoints"].count_documents({}) == 2


async def test_what_an_outage_still_refuses_at_exit_is_given_up_after_the_grace(
    store: Store,
) -> None:
    tries = 0

    async def refused() -> None:
        nonlocal tries
        tries += 1
        raise StoreUnavailable("MongoDB unavailable")

    writes = PendingWrites(behind=True)
    writes.start(durably(store, refused, "an audit row"))
    await asyncio.sleep(0.5)
    assert tries >= 2 and len(backlog_of(store)) == 1
    assert await drain_backlog(store, within=0.2) == 1  # still refused: given up, said so
    with pytest.raises(WriteCancelled):
        await asyncio.wait_for(writes.flush(), 5)  # its waiter is not left hanging
    assert len(backlog_of(store)) == 0
