"""The heartbeat ends when the worker cancels it, however the cancellation falls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient

from handlers.discovery import discover_handlers
from subscriber import heartbeat
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import Stack


async def test_a_cancellation_as_a_heartbeat_write_completes_ends_the_beat(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker cancels its heartbeat as it ends. A cancellation landing in the same turn of
    # the loop as a heartbeat write completing was swallowed by asyncio.wait_for (Python
    # 3.11): the beat went on for ever, and the worker's end waited for it (a test worker
    # that never finished, after a lock lost, in two full runs of the suite).
    beating: list[asyncio.Task[None]] = []
    states: list[str] = []
    record = stack.store.record_heartbeat

    async def written_then_cancelled(heartbeat_record: Any) -> None:
        await record(heartbeat_record)
        states.append(heartbeat_record.state)
        if len(states) == 2:  # the second beat: cancelled just as its write completes
            asyncio.get_running_loop().call_soon(beating[0].cancel)

    monkeypatch.setattr(stack.store, "record_heartbeat", written_then_cancelled)
    work = [h for h in discover_handlers(sample_handlers) if h.spec.name == "work"]
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(work, client=client, store=stack.store, topology=stack.topology,
                        options=WorkerOptions())  # fmt: skip
        beating.append(asyncio.create_task(heartbeat.beat(worker, interval=0.01)))
        await asyncio.wait_for(asyncio.gather(beating[0], return_exceptions=True), 10)
    assert states == ["running", "running", "stopped"]
