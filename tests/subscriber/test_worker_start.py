"""``docbus worker``'s start: subscriptions are checked while the worker already receives, and
a missing one is still one line and exit 2, not a traceback — also beside a handler whose
subscription exists and has work waiting."""

from __future__ import annotations

import argparse
import logging
import socket
import time
from pathlib import Path

import pytest
from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr
from rich.console import Console

from docbus.cli import worker as worker_cli
from docbus.servicebus import MessagingEntityNotFound, MessagingUnavailable
from docbus.settings import ServiceBusSettings
from handlers import Context, Document, handler
from handlers.runtime import discover_handlers
from publisher import publish_documents
from subscriber.worker import Worker, WorkerOptions
from tests.stack import Stack

HANDLERS = """
from handlers import Context, Document, handler


@handler(topic="docs", subscription="work", version="1")
async def work(doc: Document, ctx: Context) -> dict[str, bool]:
    return {"ok": True}
"""

MISSING = """

@handler(topic="docs", subscription="nowhere", version="1")
async def lost(doc: Document, ctx: Context) -> dict[str, bool]:
    return {"ok": True}
"""


def worker_args(module: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    worker_cli.add_arguments(parser)
    return parser.parse_args(["--handlers", str(module), "--until-idle", "0.5"])


async def test_the_worker_cli_runs_while_its_subscriptions_are_checked(
    stack: Stack, tmp_path: Path
) -> None:
    docs = [{"doc_id": f"d{i}", "text": f"text {i}"} for i in range(5)]
    assert (await publish_documents(docs, topic="docs", batch_id="b1", settings=stack.settings)).ok
    module = tmp_path / "start_handlers.py"
    module.write_text(HANDLERS, encoding="utf-8")
    run = await worker_cli.run_worker(worker_args(module), Console(quiet=True), stack.settings)
    assert run.report.settled == 5
    assert worker_cli.exit_code(run) == 0


@pytest.mark.parametrize("with_work", [False, True], ids=["alone", "beside-work"])
async def test_a_missing_subscription_is_one_start_error(
    stack: Stack, tmp_path: Path, with_work: bool
) -> None:
    if with_work:
        docs = [{"doc_id": f"d{i}", "text": f"text {i}"} for i in range(5)]
        published = await publish_documents(
            docs, topic="docs", batch_id="b1", settings=stack.settings
        )
        assert published.ok
    module = tmp_path / "missing_handlers.py"
    module.write_text(HANDLERS + MISSING if with_work else HANDLERS.split("@handler")[0] + MISSING)
    with pytest.raises(worker_cli.WorkerStartError) as raised:
        await worker_cli.run_worker(worker_args(module), Console(quiet=True), stack.settings)
    assert str(raised.value).startswith("subscription docs/nowhere does not exist on the broker")
    assert raised.value.code == worker_cli.EXIT_USAGE


@handler(topic="nosuch", subscription="x", version="1")
async def lost(doc: Document, ctx: Context) -> dict[str, bool]:
    return {"ok": True}


async def test_a_missing_subscription_is_not_also_a_dead_letter_capture_warning(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead-letter capture starts with the receive loops; on a missing subscription both
    fail, and whichever came first decided whether a warning preceded the start error. Several
    starts: the capture lost the race about half the time."""
    caplog.set_level(logging.WARNING, logger="subscriber")
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        for _ in range(8):
            worker = Worker(
                discover_handlers([lost]), client=client, store=stack.store,
                options=WorkerOptions(until_idle=0.5, dlq_capture_interval=60.0),
            )  # fmt: skip
            with pytest.raises(MessagingEntityNotFound, match="nosuch/x"):
                await worker.run()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("subscriber")] == []


async def test_a_broker_that_does_not_answer_is_said_in_seconds(
    stack: Stack, tmp_path: Path
) -> None:
    """The check's probe answers within 3 s; the worker started beside it, whose receiver the
    SDK would go on retrying for longer, is stopped at once (it has taken nothing)."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    unreachable = (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=v;"
        "UseDevelopmentEmulator=true"
    )
    settings = stack.settings.model_copy(
        update={"servicebus": ServiceBusSettings(connection_string=SecretStr(unreachable))}
    )
    module = tmp_path / "start_handlers.py"
    module.write_text(HANDLERS, encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(MessagingUnavailable, match=f"127.0.0.1:{port}"):
        await worker_cli.run_worker(worker_args(module), Console(quiet=True), settings)
    assert time.monotonic() - started < 8
