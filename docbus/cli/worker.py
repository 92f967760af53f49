"""``docbus worker``: run handlers from a module against their subscriptions.

Wires settings, the Mongo store, the Service Bus client, the LLM client (when an LLM is configured:
otherwise its package is never imported) and the topology into a
:class:`~subscriber.worker.Worker`, installs SIGINT/SIGTERM handlers for a graceful stop, and
prints a summary table (or ``--json``) when it exits. What stops a worker from starting — a handler
module that does not import, settings or a connection string that do not parse, a subscription
missing on the broker, MongoDB or Service Bus out of reach — is one line on stderr and an exit
code, never a traceback (the worker's own errors are worded here, the rest by
:func:`docbus.cli.run_command`); :func:`exit_code` says how a run that did start ended
(:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from docbus.cli.arguments import (
    non_negative_int,
    non_negative_seconds,
    positive_int,
)
from docbus.cli.render import Table, make_console
from docbus.errors import ConfigurationError, DocbusError
from docbus.settings import Settings
from docbus.topology import TopologyError, load_topology
from subscriber.claims import rival_worker
from subscriber.settlement import Action
from subscriber.worker import Worker, WorkerOptions, WorkerReport, freeze_startup_heap

__all__ = [
    "EXIT_CODES",
    "WorkerRun",
    "WorkerStartError",
    "add_arguments",
    "exit_code",
    "report_table",
    "run",
    "run_worker",
]

EXIT_DONE = 0
EXIT_DEAD_LETTERED = 1
EXIT_USAGE = 2
EXIT_PARKED = 4

EXIT_CODES: Mapping[int, str] = {
    EXIT_DONE: "every message taken was completed (or there was nothing to do)",
    EXIT_DEAD_LETTERED: "some messages were dead-lettered (see `docbus dlq list`)",
    EXIT_PARKED: "messages are left parked (LLM unreachable, bad key, over budget): a worker "
    "resumes them once the cause is fixed; this wins over 1",
}
"""``docbus worker``'s own exit codes; ``--help`` lists them with the common ones of
:class:`docbus.cli.ExitCode` (2 usage or configuration, 3 MongoDB or Service Bus unreachable)."""


class WorkerStartError(DocbusError):
    """The worker cannot start; ``str()`` is the one line to show, ``code`` the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class WorkerRun:
    """How a worker run ended: its report, and what is left parked on its subscriptions."""

    report: WorkerReport
    parked: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Messages left parked, by (handler, reason): this run's and earlier runs'."""


def exit_code(run: WorkerRun) -> int:
    """The exit code of a worker run that started (see :data:`EXIT_CODES`)."""
    if sum(run.parked.values()):
        return EXIT_PARKED
    if run.report.count(Action.DEAD_LETTER):
        return EXIT_DEAD_LETTERED
    return EXIT_DONE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--handlers",
        required=True,
        action="append",
        metavar="MODULE",
        help="module (dotted name, found on the import path or in the working directory, or a "
        ".py path) whose @handler functions to run (repeatable)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, help="handlers running at once (default 16)"
    )
    parser.add_argument(
        "--receive-ahead",
        type=non_negative_int,
        metavar="N",
        help="messages received beyond the free handler slots (default: what the handlers get "
        "through in 0.1 s, between concurrency / 8 and 100)",
    )
    parser.add_argument("--prefetch", type=non_negative_int, help="SDK link prefetch (default 0)")
    parser.add_argument(
        "--until-idle", type=non_negative_seconds, metavar="SECONDS", help="exit when idle"
    )
    parser.add_argument(
        "--max-messages", type=positive_int, metavar="N", help="exit after N messages"
    )
    parser.add_argument("--topology", type=Path, help="topology file (default infra/topology.toml)")
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON document on stdout"
    )


def build_llm(settings: Settings, store: Any) -> Any:
    """The LLM client for ``ctx.llm``, or None when no LLM is configured (then the LLM package,
    openai's ~0.5 s of imports, is not imported at all)."""
    if not settings.llm.configured:
        return None
    from handlers.llm import LLMClient, LLMConfigError

    try:
        return LLMClient.from_settings(settings, store)
    except LLMConfigError:
        return None  # handlers that need one park their messages and the worker stops


async def run_worker(
    args: argparse.Namespace, console: Console, settings: Settings | None = None
) -> WorkerRun:
    """Start the worker ``args`` describe and run it to its end; raises
    :class:`WorkerStartError` when it cannot start (MongoDB or Service Bus out of reach raise
    their own errors, which the CLI's runner words)."""
    from docbus.cli.config import load_settings
    from docbus.store import Store
    from handlers.runtime import HandlerDiscoveryError, discover_handlers

    settings = settings or load_settings()
    # The LLM package (openai) takes ~0.5 s to import: when there is a client to build, let
    # that overlap the connecting below; when none is configured, never import it.
    llm_package = None
    if settings.llm.configured:
        llm_package = asyncio.create_task(
            asyncio.to_thread(importlib.import_module, "handlers.llm")
        )
    try:
        registered = discover_handlers(*args.handlers)
    except HandlerDiscoveryError as exc:
        # where to look only when the module was not found (not when it failed to import)
        missing = isinstance(exc.__cause__, ModuleNotFoundError) or (
            exc.__cause__ is None and ("does not exist" in str(exc))
        )
        hint = (
            " (give a module on the import path or in the working directory, or a .py file)"
            if missing
            else ""
        )
        raise WorkerStartError(f"{exc}{hint}") from exc
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        if args.topology is not None:
            raise WorkerStartError(str(exc)) from exc
        console.print(Text(f"no topology ({exc}); delivery limits default to 10", "yellow"))
        topology = None
    try:
        options = WorkerOptions.from_settings(
            settings.worker,
            concurrency=args.concurrency,
            receive_ahead=args.receive_ahead,
            prefetch=args.prefetch,
            until_idle=args.until_idle,
            max_messages=args.max_messages,
        )
    except ValueError as exc:
        raise WorkerStartError(str(exc)) from exc
    client = _servicebus_client(settings)
    closing: set[asyncio.Task[None]] = set()
    async with Store.from_settings(settings) as store, client:
        subscriptions = {(h.spec.topic, h.spec.subscription) for h in registered}
        checking = asyncio.create_task(
            _check_subscriptions(client, settings, subscriptions, closing)
        )
        try:
            # Before the first receive: the unique indexes of `results` are what refuses a
            # second current result, so they exist before any result is written.
            await store.ensure_indexes()
            if (rival := rival_worker(await store.heartbeats(), registered)) is not None:
                raise WorkerStartError(rival)
            if llm_package is not None:
                await llm_package
        except BaseException:
            await _cancelled(checking)
            raise
        llm = build_llm(settings, store)
        async with llm if llm is not None else contextlib.nullcontext():
            try:
                worker = Worker(
                    registered, client=client, store=store, options=options,
                    topology=topology, llm=llm,
                )  # fmt: skip
            except ValueError as exc:  # e.g. an ordered handler on a sessionless subscription
                await _cancelled(checking)
                raise WorkerStartError(str(exc)) from exc
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, worker.stop)
            names = ", ".join(
                f"{h.name} ({h.spec.topic}/{h.spec.subscription})" for h in registered
            )
            freeze_startup_heap()
            report = await _run_checked(
                worker,
                checking,
                # said once the subscriptions are known to exist: a start that fails is one line
                announce=lambda: console.print(f"worker running {names}; Ctrl-C stops gracefully"),
            )
            await asyncio.gather(*closing, return_exceptions=True)
            return WorkerRun(report, await _parked_left(store, registered))


async def _run_checked(
    worker: Worker, checking: asyncio.Task[None], *, announce: Callable[[], None]
) -> WorkerReport:
    """Run ``worker`` while its subscriptions are checked, rather than after: the check
    attaches a receiver of its own (a connection, a token, a link: ~0.5 s), which the first
    result need not wait for. A failed check stops the worker and is raised as the start error
    it is, whatever the worker met meanwhile (a receiver on a missing subscription fails as
    well): at once when it has taken no message yet (its receivers may still be retrying a
    broker that does not answer, which the check says in seconds), else gracefully — what is in
    flight finishes within the grace period."""
    running = asyncio.create_task(worker.run())
    try:
        await checking
    except BaseException:
        worker.stop()
        grace = worker.options.shutdown_grace if worker.vitals().taken else 0.0
        _, pending = await asyncio.wait({running}, timeout=grace)
        for task in pending:
            await _cancelled(task)
        if not running.cancelled() and running.done():
            running.exception()  # the check's error is the one to tell
        raise
    announce()
    return await running


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _servicebus_client(settings: Settings) -> Any:
    from docbus.servicebus import servicebus_client

    try:
        return servicebus_client(settings)
    except ConfigurationError as exc:
        raise WorkerStartError(str(exc)) from exc
    except ValueError as exc:  # the SDK's word for a connection string it cannot parse
        raise WorkerStartError(
            "the Service Bus connection string (DOCBUS_SERVICEBUS__CONNECTION_STRING) is "
            "malformed: expected Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=..."
        ) from exc


async def _check_subscriptions(
    client: Any,
    settings: Settings,
    subscriptions: set[tuple[str, str]],
    closing: set[asyncio.Task[None]],
) -> None:
    """Attach to each subscription's dead-letter queue (which no session requirement guards)
    before anything runs, so a missing one is one line now, not a traceback from a receive
    loop later; a broker that does not answer is said in seconds, not after the SDK's retries.
    The receivers close in the background (tasks in ``closing``): closing waits for the SDK's
    keep-alive task to wake, up to 1 s, which a start need not wait for."""
    from azure.servicebus import ServiceBusSubQueue

    from docbus.servicebus import MessagingEntityNotFound, probe_endpoint, translated

    await probe_endpoint(settings)
    for topic, subscription in sorted(subscriptions):
        receiver = client.get_subscription_receiver(
            topic, subscription, sub_queue=ServiceBusSubQueue.DEAD_LETTER
        )
        try:
            with translated(f"attach to {topic}/{subscription}"):
                await receiver.__aenter__()
        except MessagingEntityNotFound as exc:
            raise WorkerStartError(
                f"subscription {topic}/{subscription} does not exist on the broker: create it "
                "(infra/topology.toml, `docbus topology`) or fix the handler's topic/subscription"
            ) from exc
        closing.add(asyncio.create_task(receiver.close()))


async def _parked_left(store: Any, registered: list[Any]) -> Counter[tuple[str, str]]:
    from subscriber.parking import parked_messages

    left: Counter[tuple[str, str]] = Counter()
    for handler in registered:
        spec = handler.spec
        for parked in await parked_messages(store, spec.topic, spec.subscription, limit=0):
            left[(spec.name, parked.reason)] += 1
    return left


def report_table(run: WorkerRun) -> Table:
    report = run.report
    table = Table(title=f"worker summary ({report.seconds:.1f}s)")
    table.add_column("handler")
    table.add_column("outcome")
    table.add_column("messages", justify="right")
    for (handler, outcome), count in sorted(report.outcomes.items()):
        table.add_row(handler, outcome, str(count))
    for (handler, reason), count in sorted(report.reasons.items()):
        table.add_row(handler, f"  dead-lettered: {reason}", str(count))
    for (handler, reason), count in sorted(run.parked.items()):
        table.add_row(handler, f"left parked: {reason}", str(count))
    return table


def report_json(run: WorkerRun) -> dict[str, Any]:
    """The summary as plain data: per handler, outcomes, dead-letter reasons and parked left."""
    handlers: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return handlers.setdefault(
            name, {"outcomes": {}, "dead_letter_reasons": {}, "parked_left": {}}
        )

    for (handler, outcome), count in sorted(run.report.outcomes.items()):
        entry(handler)["outcomes"][outcome] = count
    for (handler, reason), count in sorted(run.report.reasons.items()):
        entry(handler)["dead_letter_reasons"][reason] = count
    for (handler, reason), count in sorted(run.parked.items()):
        entry(handler)["parked_left"][reason] = count
    return {
        "exit_code": exit_code(run),
        "seconds": round(run.report.seconds, 3),
        "settled": run.report.settled,
        "handlers": handlers,
    }


def run(args: argparse.Namespace) -> int:
    from docbus.cli import run_async

    return run_async(lambda settings: _run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from docbus.cli import print_json, say_error

    try:
        result = await run_worker(args, make_console(stderr=True), settings)
    except WorkerStartError as exc:
        say_error("worker", str(exc))
        return exc.code
    if args.json:
        print_json(make_console(), report_json(result))
    else:
        make_console().print(report_table(result))
    return exit_code(result)
