"""A handler that blocks the event loop past its lock: said so, and never both done and dead.

The handler (:mod:`tests.subscriber.blocking_handlers`) calls ``time.sleep`` inside
``async def``; its subscription's lock is 1 s and its delivery limit 2, so the locks of the
messages in flight are lost while the loop stands still (nothing can renew them) and the
broker redelivers them, then dead-letters them itself (``MaxDeliveryCountExceeded``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from publisher import publish_documents
from subscriber.worker import WorkerReport
from tests.subscriber import blocking_handlers, helpers
from tests.subscriber.conftest import Stack


async def publish(stack: Stack, count: int, block: float, batch_id: str = "blk") -> None:
    docs = [
        {"doc_id": f"b{i}", "text": "x" * (i + 1), "metadata": {"block": block}}
        for i in range(count)
    ]
    report = await publish_documents(
        docs, topic="slow", batch_id=batch_id, settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok, report


async def run_worker(stack: Stack, **options: Any) -> WorkerReport:
    options.setdefault("until_idle", 2.0)
    return await helpers.run_worker(stack, blocking_handlers, **options)


async def test_a_handler_blocking_past_its_lock_leaves_no_document_both_done_and_dead(
    stack: Stack,
) -> None:
    await publish(stack, 3, block=1.3)
    # capture at start and at the idle exit: the broker's own dead letters get their records
    await run_worker(stack, dlq_capture_interval=30.0)
    db = stack.store.database
    for i in range(3):
        assert await db["results"].count_documents({"doc_id": f"b{i}"}) == 1
    done = {r["doc_id"] async for r in db["results"].find({"batch_id": "blk"})}
    dead = [d async for d in db["dead_letters"].find({"batch_id": "blk", "resolved_at": None})]
    assert [d["doc_id"] for d in dead if d["doc_id"] in done] == []
    counts = await stack.store.batch_counts("blk", handlers=["blocking"])
    assert (counts.done, counts.dead_lettered, counts.pending) == (3, 0, 0)


async def test_a_blocked_loop_is_reported_once_naming_the_handler_message_and_line(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    await publish(stack, 1, block=1.5)
    caplog.set_level(logging.INFO, logger="subscriber.watchdog")
    await run_worker(stack, dlq_capture_interval=None, until_idle=1.0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "subscriber.watchdog"]
    blocked = [w for w in warnings if w.startswith("event loop blocked")]
    assert len(blocked) == 1, warnings  # once per stall, not every look
    [line] = blocked
    assert "handler 'blocking' (message blk:b0:0)" in line
    assert "blocking_handlers.py:" in line and "in blocking" in line
    assert "asyncio.to_thread" in line
    assert any(w.startswith("event loop ran again after") for w in warnings)
