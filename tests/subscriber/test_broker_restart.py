"""A broker restart under a running worker: settlements that find the link gone are one warning
line each, the worker reconnects, and every document still ends as one result."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.envelope import Envelope
from docbus.local.emulator import EmulatorThread
from docbus.local.emulator.config import parse_config
from docbus.servicebus import build_message
from docbus.store import Store
from handlers.runtime import discover_handlers
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions
from tests.subscriber import sample_handlers
from tests.subscriber.conftest import TOPOLOGY


def restartable(data_dir: Path, port: int = 0) -> EmulatorThread:
    return EmulatorThread(parse_config(TOPOLOGY.emulator_config()), port=port, data_dir=data_dir)


async def test_settling_after_a_broker_restart_is_a_warning_and_nothing_is_lost(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="subscriber")
    emulator = restartable(tmp_path).start()
    port = emulator.emulator.port
    connection_string = emulator.connection_string
    docs = [f"r{i}" for i in range(4)]
    try:
        async with ServiceBusClient.from_connection_string(connection_string) as client:
            async with client.get_topic_sender("docs") as sender:
                for doc_id in docs:
                    envelope = Envelope(
                        doc_id=doc_id, batch_id="b1", topic="docs", content="text",
                        metadata={"behaviour": "slow:1.5"}, target_subscription="work",
                    )  # fmt: skip
                    await sender.send_messages(build_message(envelope))
        async with ServiceBusClient.from_connection_string(
            connection_string, retry_total=10, retry_backoff_factor=0.2
        ) as client:
            worker = Worker(
                discover_handlers(sample_handlers),
                client=client,
                store=store,
                options=WorkerOptions(
                    until_idle=4.0,
                    concurrency=4,
                    dlq_capture_interval=None,
                    backoff=BackoffPolicy(base=0.2, cap=1.0, jitter=0.0),
                ),
                topology=TOPOLOGY,
            )
            running = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 20
            while await store.database["invocations"].count_documents({"event": "start"}) < 4:
                assert time.monotonic() < deadline, "the handlers never started"
                await asyncio.sleep(0.05)
            # Restarted while all four handlers run: their settlements meet the closed link.
            await asyncio.to_thread(emulator.stop)
            emulator = await asyncio.to_thread(lambda: restartable(tmp_path, port).start())
            report = await asyncio.wait_for(running, 60)
    finally:
        emulator.stop()
    assert report.count(Action.COMPLETE) == len(docs)  # the lost completions are not counted
    for doc_id in docs:
        # one version (a redelivery stores none), and so the current one
        versions = await store.database["results"].count_documents({"doc_id": doc_id})
        assert versions == 1, doc_id
    problems = [r for r in caplog.records if r.name.startswith("subscriber") and (
        r.levelno >= logging.ERROR or r.exc_info
    )]  # fmt: skip
    assert not problems, "\n".join(r.getMessage() for r in problems)
