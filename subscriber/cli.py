"""``docbus worker``: run handlers from a module against their subscriptions.

Wires settings, the Mongo store, the Service Bus client, the LLM client (when the handlers'
LLM package is installed) and the topology into a :class:`~subscriber.worker.Worker`, installs
SIGINT/SIGTERM handlers for a graceful stop, and prints a summary table when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from docbus.settings import Settings
from docbus.topology import TopologyError, load_topology
from subscriber.worker import Worker, WorkerOptions, WorkerReport, settle_heap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--handlers",
        required=True,
        action="append",
        metavar="MODULE",
        help="module (dotted name or .py path) whose @handler functions to run (repeatable)",
    )
    parser.add_argument("--concurrency", type=int, help="handlers running at once (default 16)")
    parser.add_argument(
        "--receive-ahead",
        type=int,
        metavar="N",
        help="messages received beyond the free handler slots (default: concurrency / 8)",
    )
    parser.add_argument("--prefetch", type=int, help="SDK link prefetch (default 0)")
    parser.add_argument("--until-idle", type=float, metavar="SECONDS", help="exit when idle")
    parser.add_argument("--max-messages", type=int, metavar="N", help="exit after N messages")
    parser.add_argument("--topology", type=Path, help="topology file (default infra/topology.toml)")


def build_llm(settings: Settings, store: Any) -> Any:
    """The LLM client for ``ctx.llm``, or None when the LLM package is not available."""
    from handlers.llm import LLMClient, LLMConfigError

    try:
        return LLMClient.from_settings(settings, store)
    except LLMConfigError:
        return None  # handlers that need one park their messages and the worker stops


async def run_worker(args: argparse.Namespace, console: Console) -> WorkerReport:
    from docbus.servicebus import servicebus_client
    from docbus.store import Store
    from handlers.discovery import discover_handlers

    settings = Settings()
    registered = [h for source in args.handlers for h in discover_handlers(source)]
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        if args.topology is not None:
            raise
        console.print(f"[yellow]no topology ({exc}); delivery limits default to 10[/]")
        topology = None
    options = WorkerOptions.from_settings(
        settings.worker,
        concurrency=args.concurrency,
        receive_ahead=args.receive_ahead,
        prefetch=args.prefetch,
        until_idle=args.until_idle,
        max_messages=args.max_messages,
    )
    async with Store.from_settings(settings) as store, servicebus_client(settings) as client:
        await store.ensure_indexes()
        llm = build_llm(settings, store)
        async with llm if llm is not None else contextlib.nullcontext():
            worker = Worker(
                registered, client=client, store=store, options=options, topology=topology, llm=llm
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, worker.stop)
            names = ", ".join(
                f"{h.name} ({h.spec.topic}/{h.spec.subscription})" for h in registered
            )
            console.print(f"worker running {names}; Ctrl-C stops gracefully")
            settle_heap()
            return await worker.run()


def report_table(report: WorkerReport) -> Table:
    table = Table(title=f"worker summary ({report.seconds:.1f}s)")
    table.add_column("handler")
    table.add_column("outcome")
    table.add_column("messages", justify="right")
    for (handler, outcome), count in sorted(report.outcomes.items()):
        table.add_row(handler, outcome, str(count))
    for (handler, reason), count in sorted(report.reasons.items()):
        table.add_row(handler, f"  dead-lettered: {reason}", str(count))
    return table


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    report = asyncio.run(run_worker(args, console))
    Console().print(report_table(report))
    return 0
