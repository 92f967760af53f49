"""An idle worker exits close to its idle time: no receive, capture or wait left to sit out."""

from __future__ import annotations

from tests.subscriber.conftest import Stack
from tests.subscriber.helpers import run_worker


async def test_a_worker_with_nothing_to_do_exits_soon_after_its_idle_time(stack: Stack) -> None:
    idle = 1.0
    # the defaults a `docbus worker --until-idle 1` runs with: 1 s receives, and the dead-letter
    # queues captured at start and before the exit
    report = await run_worker(stack, until_idle=idle, dlq_capture_interval=60.0)
    assert report.settled == 0
    # It took 3 s more: a last 0.5 s wait on the empty dead-letter queue, closing that
    # receiver, then one more 1 s receive on the subscription. What is left is attaching to
    # the dead-letter queue to peek, and closing receivers (the SDK waits up to 1 s for each
    # one's keep-alive task to wake).
    assert report.seconds < idle + 1.8, report.seconds
