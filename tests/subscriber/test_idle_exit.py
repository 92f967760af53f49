"""An idle worker exits close to its idle time: no receive, capture or wait left to sit out."""

from __future__ import annotations

import asyncio
import threading

from publisher import publish_documents
from subscriber.settlement import Action
from tests.subscriber.conftest import Stack
from tests.subscriber.helpers import run_worker


async def test_a_worker_with_nothing_to_do_exits_soon_after_its_idle_time(stack: Stack) -> None:
    idle = 1.0
    # the defaults a `docbus worker --until-idle 1` runs with: 1 s receives, and the dead-letter
    # queues captured at start and before the exit
    report = await run_worker(stack, until_idle=idle, dlq_capture_interval=60.0)
    assert report.settled == 0
    # (counted from when the receiver began receiving: opening it is start-up, not idleness)
    assert report.receiving_after is not None
    # It took 3 s more: a last 0.5 s wait on the empty dead-letter queue, closing that
    # receiver, then one more 1 s receive on the subscription. What is left is attaching to
    # the dead-letter queue to peek, and closing receivers (the SDK waits up to 1 s for each
    # one's keep-alive task to wake).
    assert report.seconds - report.receiving_after < idle + 1.8, report


async def test_idle_time_counts_from_when_receiving_began_not_from_the_start(stack: Stack) -> None:
    """A worker whose receiver takes longer to open than its idle time (a loaded machine, a
    slow broker) still works through what is waiting: it exited with 0 settled, exit 0."""
    docs = [{"doc_id": f"slow{i}", "text": f"text {i}"} for i in range(20)]
    published = await publish_documents(
        docs, topic="docs", batch_id="b1", settings=stack.settings, store=stack.store
    )
    assert published.ok
    idle = 0.5
    stalled, release = threading.Event(), threading.Event()

    def stall() -> None:  # on the emulator's own loop: the broker answers nothing meanwhile
        stalled.set()
        release.wait(30)

    broker = asyncio.create_task(asyncio.to_thread(stack.emulator.call, stall))
    assert await asyncio.to_thread(stalled.wait, 30)
    worker = asyncio.create_task(run_worker(stack, until_idle=idle))
    try:
        # the start takes three idle times: the receiver's link cannot open before the release
        done, _ = await asyncio.wait({worker}, timeout=3 * idle)
        assert not done
    finally:
        release.set()
        await broker
    report = await worker
    assert report.count(Action.COMPLETE, "work") == 20, report.outcomes
