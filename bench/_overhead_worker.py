"""docbus's worker on the no-op handler, as a process of its own, for ``bench/overhead.py``.

Set up as ``docbus worker`` sets up its own (settings from the environment, the store with its
indexes, the Service Bus client, the topology, :class:`~subscriber.worker.WorkerOptions` from
the settings, :func:`~subscriber.worker.freeze_startup_heap`, logging at ``warning``), with the
library API rather than the CLI so that it can say when each message was settled: it prints
``ready``, waits for a line on stdin (so several workers start together), runs until idle and
prints one JSON line: wall-clock times (``time.time``) of its first and last settlement, how
many it settled, what it did with them, its receive sizes as the SDK saw them (a thin wrapper
around the receiver, below the worker's turns), how long a completion took from the worker's
asking to its confirmation (``subscriber.receiver.Receiver.complete``: completions that arrive
together leave as one disposition, which the SDK's ``complete_message`` never sees), and the
Mongo commands it sent (a pymongo command listener).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from _support import CommandCounter
from pymongo import monitoring

HERE = Path(__file__).resolve().parent


class Timings:
    """What the receiver did: receive sizes and completion latencies (ms)."""

    def __init__(self) -> None:
        self.receive_sizes: list[int] = []
        self.receive_ms: list[float] = []
        self.complete_ms: list[float] = []


class TimedReceiver:
    """A receiver whose receives and completions are timed; everything else passes through."""

    def __init__(self, receiver: Any, timings: Timings) -> None:
        self._receiver = receiver
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._receiver, name)

    async def __aenter__(self) -> TimedReceiver:
        await self._receiver.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._receiver.__aexit__(*exc)

    async def receive_messages(self, **kwargs: Any) -> Any:
        started = time.perf_counter()
        messages = await self._receiver.receive_messages(**kwargs)
        if messages:
            self._timings.receive_sizes.append(len(messages))
            self._timings.receive_ms.append(1000 * (time.perf_counter() - started))
        return messages


class TimedClient:
    """A Service Bus client whose subscription receivers (not dead-letter ones) are timed."""

    def __init__(self, client: Any, timings: Timings) -> None:
        self._client = client
        self._timings = timings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_subscription_receiver(self, *args: Any, **kwargs: Any) -> Any:
        receiver = self._client.get_subscription_receiver(*args, **kwargs)
        if kwargs.get("sub_queue") is not None:
            return receiver
        return TimedReceiver(receiver, self._timings)


def time_completions(timings: Timings) -> None:
    """Time every completion the worker asks for, from its asking to its confirmation."""
    from subscriber.receiver import Receiver

    complete = Receiver.complete

    async def timed(self: Receiver, message: Any) -> None:
        started = time.perf_counter()
        await complete(self, message)
        timings.complete_ms.append(1000 * (time.perf_counter() - started))

    Receiver.complete = timed  # type: ignore[method-assign]


async def run(options: argparse.Namespace, commands: CommandCounter) -> dict[str, Any]:
    from docbus.servicebus import servicebus_client
    from docbus.settings import Settings
    from docbus.store import Store
    from docbus.topology import load_topology
    from handlers.runtime import discover_handlers
    from subscriber.worker import Worker, WorkerOptions, freeze_startup_heap

    settings = Settings()
    registered = discover_handlers(HERE / "_overhead_noop.py")
    topology = load_topology(options.topology)
    worker_options = WorkerOptions.from_settings(
        settings.worker, concurrency=options.concurrency, until_idle=options.until_idle
    )
    timings = Timings()
    time_completions(timings)
    settled: list[float] = []
    actions: dict[str, int] = {}

    def on_outcome(outcome: Any) -> None:
        settled.append(time.time())
        actions[outcome.action.value] = actions.get(outcome.action.value, 0) + 1

    async with Store.from_settings(settings) as store, servicebus_client(settings) as client:
        await store.ensure_indexes()
        worker = Worker(
            registered,
            client=TimedClient(client, timings),  # type: ignore[arg-type]  # a passing-through wrapper
            store=store,
            options=worker_options,
            topology=topology,
            llm=None,  # what `docbus worker` passes when no LLM is configured
            on_outcome=on_outcome,
        )
        freeze_startup_heap()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        before = dict(commands.by_name)
        cpu = time.process_time()
        await worker.run()
        cpu = time.process_time() - cpu
    return {
        "mode": "docbus",
        "settled": len(settled),
        "first": settled[0] if settled else 0.0,
        "last": settled[-1] if settled else 0.0,
        "actions": actions,
        "cpu_s": cpu,
        "receive_sizes": timings.receive_sizes,
        "receive_ms": timings.receive_ms,
        "complete_ms": timings.complete_ms,
        "commands": {k: v - before.get(k, 0) for k, v in commands.by_name.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--topology", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, help="handlers at once (default: settings)")
    parser.add_argument("--until-idle", type=float, default=1.5, help="exit when idle (1.5 s)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # as `docbus worker` by default
    commands = CommandCounter()
    monitoring.register(commands)  # before any client exists: it applies to new clients
    print(json.dumps(asyncio.run(run(options, commands))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
