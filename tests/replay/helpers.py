"""Shared steps of the replay tests: publish, run a worker in-process, run a command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from azure.servicebus.aio import ServiceBusClient

from docbus import cli
from docbus.backoff import BackoffPolicy
from handlers.runtime import HandlerFunction, discover_handlers
from publisher import publish_documents
from subscriber.worker import Worker, WorkerOptions, WorkerReport
from tests.replay.conftest import Stack, recording_console
from tests.replay.replay_handlers import make_handlers

FAST = BackoffPolicy(base=0.2, cap=1.0, jitter=0.0)


async def publish(stack: Stack, doc_ids: Sequence[str], batch_id: str) -> None:
    docs = [{"doc_id": doc_id, "text": f"the text of {doc_id}"} for doc_id in doc_ids]
    report = await publish_documents(
        docs, topic="docs", batch_id=batch_id, settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok, report


async def run_worker(
    stack: Stack, handlers: Sequence[HandlerFunction] | None = None
) -> WorkerReport:
    """Both handlers (``alpha`` at version 1 unless given) until nothing arrives for 1 s."""
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers(handlers or make_handlers()),
            client=client,
            store=stack.store,
            options=WorkerOptions(until_idle=1.0, backoff=FAST, receive_wait=0.5),
            topology=stack.topology,
        )
        return await worker.run()


async def fail(stack: Stack, handler: str, doc_id: str, reason: str) -> None:
    """Make ``handler`` dead-letter ``doc_id`` with ``reason`` until :func:`fix` is called."""
    await stack.store.database["faults"].insert_one(
        {"_id": f"{handler}:{doc_id}", "reason": reason, "description": f"{reason} in {doc_id}"}
    )


async def fix(stack: Stack) -> None:
    await stack.store.database["faults"].delete_many({})


async def invocations(stack: Stack, **match: Any) -> list[tuple[str, str, int]]:
    """(handler, doc_id, generation) of every handler invocation matching ``match``, sorted."""
    cursor = stack.store.database["invocations"].find(match)
    return sorted([(i["handler"], i["doc_id"], i["generation"]) async for i in cursor])


async def pending_on_broker(stack: Stack) -> dict[str, int]:
    """Messages waiting in each subscription of ``docs``."""
    found = {}
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        for name in ("alpha", "beta"):
            async with client.get_subscription_receiver("docs", name) as receiver:
                found[name] = len(await receiver.peek_messages(max_message_count=100))
    return found


def _command(
    module: ModuleType, argv: Sequence[str], stdin: io.StringIO | None
) -> tuple[int, str, str]:
    """Run a command as ``docbus`` does (its failures become one line on stderr)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    console, buffer = recording_console()
    extra: dict[str, Any] = {} if stdin is None else {"stdin": stdin}
    name = next(name for name, (path, _) in cli.COMMANDS.items() if path == module.__name__)
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = cli.run_command(name, lambda: module.run(args, console=console, **extra))
    return code, buffer.getvalue(), errors.getvalue()


async def command(
    module: ModuleType, *argv: str, stdin: io.StringIO | None = None
) -> tuple[int, str]:
    """Run a command module's ``run(args)`` in a thread (it runs its own event loop); what
    it wrote to stdout, then to stderr."""
    code, out, err = await asyncio.to_thread(_command, module, argv, stdin)
    return code, out + err


async def command_streams(
    module: ModuleType, *argv: str, stdin: io.StringIO | None = None
) -> tuple[int, str, str]:
    """:func:`command`, with stdout and stderr apart."""
    return await asyncio.to_thread(_command, module, argv, stdin)


def rows(text: str) -> list[list[str]]:
    """The cells of every table row in rendered output."""
    found = []
    for line in text.splitlines():
        if line.startswith("│") and line.endswith("│"):
            found.append([cell.strip() for cell in line.strip("│").split("│")])
    return found
