"""An idle worker exits close to its idle time: no receive, capture or wait left to sit out."""

from __future__ import annotations

from azure.servicebus.aio import ServiceBusClient

from handlers import discover_handlers
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack


async def test_a_worker_with_nothing_to_do_exits_soon_after_its_idle_time(stack: Stack) -> None:
    idle = 1.0
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers(sample_handlers),
            client=client,
            store=stack.store,
            # the defaults a `docbus worker --until-idle 1` runs with: 1 s receives, and the
            # dead-letter queues captured at start and before the exit
            options=WorkerOptions(until_idle=idle),
            topology=stack.topology,
        )
        report = await worker.run()
    assert report.settled == 0
    # It took 3 s more: a last 0.5 s wait on the empty dead-letter queue, closing that
    # receiver, then one more 1 s receive on the subscription. What is left is attaching to
    # the dead-letter queue to peek, and closing receivers (the SDK waits up to 1 s for each
    # one's keep-alive task to wake).
    assert report.seconds < idle + 1.8, report.seconds
