"""Shared steps of the worker tests: run a worker in-process on the test stack."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from handlers.runtime import discover_handlers
from subscriber.worker import Worker, WorkerOptions, WorkerReport
from tests.stack import Stack
from tests.subscriber import sample_handlers

FAST = BackoffPolicy(base=0.2, cap=1.0, jitter=0.0)


async def run_worker(
    stack: Stack, handlers: ModuleType = sample_handlers, **options: Any
) -> WorkerReport:
    """``handlers`` until nothing arrives for ``until_idle`` (1 s); fast backoff, and no
    dead-letter capture unless asked (most tests look at the broker's dead-letter queue)."""
    options.setdefault("until_idle", 1.0)
    options.setdefault("dlq_capture_interval", None)
    options.setdefault("backoff", FAST)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = Worker(
            discover_handlers(handlers),
            client=client,
            store=stack.store,
            options=WorkerOptions(**options),
            topology=stack.topology,
        )
        return await worker.run()
