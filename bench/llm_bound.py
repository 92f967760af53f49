"""Benchmark of an LLM-bound batch: a 3-step handler against a 200 ms model; one JSON line.

Every component runs for real and the three stand-ins each in a process of their own, so the
worker does not share a GIL with them:

- the offline LLM server (``python -m docbus.local.llm_server --port 0 --latency S``);
- the Service Bus emulator (``python -m docbus emulator --port 0 --config FILE``, the config
  generated from a one-topic :class:`~docbus.topology.Topology`);
- SecantusDB (:class:`docbus.local.mongo.LocalMongo`).

``--docs`` documents are published, then a :class:`~subscriber.worker.Worker` in this process
runs a handler of three checkpointed steps (``ctx.step``), each one ``ctx.llm.extract`` of a
small pydantic model, at ``--concurrency`` handlers at once. This process is set up as
``docbus worker`` sets up its own (:func:`~subscriber.worker.freeze_startup_heap`). The processing
phase is timed from the first handler call to the last settlement: the SDK's receiver attach
before it (about half a second, whatever the batch size) is reported apart as ``startup_s``,
and the idle wait after it is not counted. Its docs/s is compared with the ideal,
``concurrency / (3 * latency)``: every handler slot always busy waiting on the model and
nothing else costing time.

That ideal is a steady rate, and a batch's end is not steady: once fewer documents are left
than slots, slots fall idle until the last one finishes. ``drain_s`` (from the last handler
start to the last settlement) shows that cost, about half a handler's run for every slot
whatever the batch size; the default of 1,920 documents (30 per slot) keeps it near 1 % of
the run, where 640 would make it about 4 %.

To say where the rest of the time goes, the JSON line also holds: the share of handler-slot
time (concurrency x seconds) spent waiting for LLM answers (the audit rows' latencies) and for
MongoDB replies (a pymongo command listener), the Mongo commands per document and their mean
round trip, and the CPU each process used per second of the phase (1.0 = one core saturated).
The batch's ``docbus report`` goes to stderr with the progress bars; the JSON line to stdout.

``--mongo-on-disk`` runs SecantusDB on a data directory, so its journal and the fsyncs that
durable writes ask for cost what they cost (in memory they cost nothing).
``--mongo-options`` adds URI options for SecantusDB. LocalMongo already turns retryable writes
off: with them SecantusDB's writes slow down as they accumulate (each one scans its record of
earlier ones), which would make the figure depend on ``--docs``.

    python bench/llm_bound.py [--docs 1920] [--concurrency 64] [--latency 0.2] [--mongo-on-disk]
        [--mongo-options ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _support import CommandCounter, child, cpu_seconds
from pydantic import BaseModel, SecretStr
from pymongo import monitoring
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docbus.settings import LLMSettings, MongoSettings, ServiceBusSettings, Settings
from docbus.topology import Topology, parse_topology, write_emulator_config
from handlers import Context, Document, handler

TOPIC = "bench"
BATCH = "bench"
SUBSCRIPTION = "extract"
STEPS = 3

TOPOLOGY: Topology = parse_topology(
    {
        "defaults": {"max_delivery_count": 5, "lock_duration": "PT1M"},
        "topics": [{"name": TOPIC, "subscriptions": [{"name": SUBSCRIPTION}]}],
    }
)

SUPPLIERS = ["Acme Industrial", "Globex", "Initech", "Umbrella Components", "Stark Valves"]
CITIES = ["Lyon, France", "Porto, Portugal", "Gdansk, Poland", "Osaka, Japan", "Austin, USA"]
EVENTS = ["a delayed shipment of valves", "a strike at its main plant", "a new safety audit",
          "record quarterly revenue", "a flood near its warehouse"]  # fmt: skip


# -- the handler under test ---------------------------------------------------------------------


class Kind(BaseModel):
    kind: str
    language: str


class Parties(BaseModel):
    supplier: str
    country: str


class Risk(BaseModel):
    score: int
    keywords: list[str]


FIRST_CALL: list[float] = []
"""When the handler first ran (the processing phase starts there, not at the receiver's
link attach, which the SDK takes about half a second to do)."""
LAST_CALL: list[float] = [0.0]
"""When the handler last started (the batch drains from there)."""


@handler(topic=TOPIC, subscription=SUBSCRIPTION, version="1")
async def three_steps(doc: Document, ctx: Context) -> dict[str, Any]:
    """Three checkpointed steps, one LLM extraction each."""
    LAST_CALL[0] = time.perf_counter()
    if not FIRST_CALL:
        FIRST_CALL.append(LAST_CALL[0])
    llm = ctx.llm
    assert llm is not None, "the bench always configures the offline LLM"
    kind = await ctx.step("classify", llm.extract, Kind, f"Classify: {doc.text}")
    parties = await ctx.step("parties", llm.extract, Parties, f"Who and where: {doc.text}")
    risk = await ctx.step("risk", llm.extract, Risk, f"Supply risk: {doc.text}")
    return {"kind": kind.kind, "supplier": parties.supplier, "risk": risk.score}


def documents(count: int) -> list[dict[str, Any]]:
    return [
        {
            "doc_id": f"doc-{i:05d}",
            "text": f"{SUPPLIERS[i % 5]} of {CITIES[i // 5 % 5]} reports {EVENTS[i // 25 % 5]} "
            f"(item {i}); buyers in Europe expect knock-on effects next quarter.",
        }
        for i in range(count)
    ]


# -- the stand-ins, each in its own process ----------------------------------------------------


@dataclass
class StandIns:
    """Where the three stand-ins listen, and their process ids (for their CPU time)."""

    llm_base_url: str
    connection_string: str
    mongo_uri: str
    pids: dict[str, int | None]


@contextlib.asynccontextmanager
async def stand_ins(options: argparse.Namespace) -> AsyncIterator[StandIns]:
    from docbus.local.mongo import LocalMongo

    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="docbus-bench-") as tmp:
        config = write_emulator_config(TOPOLOGY, Path(tmp) / "Config.json")
        llm_argv = [python, "-m", "docbus", "llm-server", "--port", "0", "--latency",
                    str(options.latency), "--log-level", "warning"]  # fmt: skip
        emulator_argv = [python, "-m", "docbus", "emulator", "--port", "0", "--config",
                         str(config), "--log-level", "warning"]  # fmt: skip
        with (
            child(llm_argv, Path(tmp) / "llm.log", "http://") as (llm_line, llm_pid),
            child(emulator_argv, Path(tmp) / "emulator.log", "Endpoint=") as (connection, sb_pid),
        ):
            data_dir = Path(tmp) / "mongo" if options.mongo_on_disk else None
            async with LocalMongo(data_dir=data_dir) as mongo:
                mongo_pid = mongo.pid
                # LocalMongo's URI already carries retryWrites=false; options add to it.
                query = f"&{options.mongo_options}" if options.mongo_options else ""
                yield StandIns(
                    llm_base_url=llm_line.rsplit(" at ", 1)[1],
                    connection_string=connection,
                    mongo_uri=mongo.uri + query,
                    pids={
                        "worker": os.getpid(),
                        "llm_server": llm_pid,
                        "emulator": sb_pid,
                        "mongo": mongo_pid,
                    },
                )


def server_stats(base_url: str) -> dict[str, Any]:
    url = base_url.removesuffix("/v1") + "/_admin/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
    return stats


class MongoTime(CommandCounter):
    """Counts Mongo commands and the seconds handlers waited for their replies."""

    def __init__(self) -> None:
        super().__init__()
        self.commands = 0
        self.seconds = 0.0

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.commands += 1
        self.seconds += event.duration_micros / 1e6

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self.commands += 1
        self.seconds += event.duration_micros / 1e6


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Figures:
    completed: int = 0
    other_outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    startup: float = 0.0
    drain: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    llm_requests: int = 0
    llm_seconds: float = 0.0
    latency_p50: float | None = None
    latency_p95: float | None = None
    mongo_commands: int = 0
    mongo_seconds: float = 0.0
    mongo_by_command: dict[str, int] = field(default_factory=dict)


async def run_bench(options: argparse.Namespace, console: Console) -> Figures:
    from docbus.store import Store
    from publisher import publish_documents

    mongo_time = MongoTime()
    monitoring.register(mongo_time)  # before any client exists: it applies to new clients
    async with stand_ins(options) as stack:
        console.print(
            f"offline LLM server at {stack.llm_base_url} ({options.latency:g} s per call); "
            f"Mongo options {options.mongo_options or '(none)'}"
        )
        settings = Settings(
            servicebus=ServiceBusSettings(connection_string=SecretStr(stack.connection_string)),
            mongodb=MongoSettings(uri=SecretStr(stack.mongo_uri), database="bench"),
            llm=LLMSettings(
                base_url=stack.llm_base_url,
                model="docbus-offline",
                max_concurrency=max(64, options.concurrency),
            ),
        )
        async with Store.from_settings(settings) as store:
            await store.ensure_indexes()
            published = await publish_documents(
                documents(options.docs), topic=TOPIC, batch_id=BATCH, settings=settings,
                store=store,
            )  # fmt: skip
            if not published.ok:
                raise RuntimeError(f"publishing failed: {published}")
            commands_before, mongo_before = mongo_time.commands, mongo_time.seconds
            names_before = dict(mongo_time.by_name)
            figures = await process(options, settings, store, stack, console)
            figures.mongo_commands = mongo_time.commands - commands_before
            figures.mongo_seconds = mongo_time.seconds - mongo_before
            figures.mongo_by_command = {
                name: count - names_before.get(name, 0)
                for name, count in sorted(mongo_time.by_name.items())
                if count > names_before.get(name, 0)
            }
            await add_llm_figures(figures, store, stack, console)
    return figures


async def process(
    options: argparse.Namespace,
    settings: Settings,
    store: Any,
    stack: StandIns,
    console: Console,
) -> Figures:
    """Run the worker until every document is settled; time it from the first handler call to
    the last settlement (the receiver's start-up is reported apart)."""
    from azure.servicebus.aio import ServiceBusClient

    from handlers.llm import LLMClient
    from handlers.runtime import discover_handlers
    from subscriber.worker import Worker, WorkerOptions, freeze_startup_heap

    figures = Figures()
    progress = Progress(
        TextColumn("processing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip
    task = progress.add_task("processing", total=options.docs)
    last = [0.0]

    def on_outcome(outcome: Any) -> None:
        last[0] = time.perf_counter()
        name = outcome.action.value
        if name == "completed":
            figures.completed += 1
        else:
            figures.other_outcomes[name] = figures.other_outcomes.get(name, 0) + 1
        progress.advance(task)

    async with (
        ServiceBusClient.from_connection_string(stack.connection_string) as client,
        LLMClient.from_settings(settings, store) as llm,
    ):
        worker = Worker(
            discover_handlers([three_steps]),
            client=client,
            store=store,
            options=WorkerOptions(
                concurrency=options.concurrency, until_idle=2.0, max_messages=options.docs
            ),
            topology=TOPOLOGY,
            llm=llm,
            on_outcome=on_outcome,
        )
        cpu_before = {name: cpu_seconds(pid) for name, pid in stack.pids.items()}
        freeze_startup_heap()
        with progress:
            started = time.perf_counter()
            await worker.run()
        cpu_after = {name: cpu_seconds(pid) for name, pid in stack.pids.items()}
    first = FIRST_CALL[0] if FIRST_CALL else started
    figures.startup = first - started
    figures.seconds = last[0] - first
    figures.drain = last[0] - LAST_CALL[0]
    for name, before in cpu_before.items():
        after = cpu_after[name]
        figures.cpu[name] = (
            round((after - before) / figures.seconds, 2)
            if before is not None and after is not None and figures.seconds > 0
            else None
        )
    return figures


async def add_llm_figures(figures: Figures, store: Any, stack: StandIns, console: Console) -> None:
    """The batch's report (on stderr) and the LLM figures the JSON line needs."""
    from docbus.cli.report import render_report
    from docbus.ops.report import collect_report

    report = await collect_report(store, BATCH)
    console.print(render_report(report))
    figures.latency_p50, figures.latency_p95 = report.latency_p50, report.latency_p95
    async for row in store.iter_llm_usage(BATCH):
        figures.llm_seconds += float(row.get("latency_s") or 0.0)
    figures.llm_requests = int(server_stats(stack.llm_base_url)["requests"])


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=1920, help="documents (1920)")
    parser.add_argument("--concurrency", type=int, default=64, help="handlers at once (64)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per LLM call (0.2)")
    parser.add_argument(
        "--mongo-options",
        default="",
        help="extra MongoDB URI options for SecantusDB, e.g. maxPoolSize=200",
    )
    parser.add_argument(
        "--mongo-on-disk",
        action="store_true",
        help="SecantusDB keeps its data in a directory (journal and fsyncs) instead of memory",
    )
    options = parser.parse_args(argv)
    console = Console(stderr=True)
    figures = asyncio.run(run_bench(options, console))
    seconds = figures.seconds
    rate = figures.completed / seconds if seconds > 0 else 0.0
    ideal = options.concurrency / (STEPS * options.latency)
    slot_seconds = options.concurrency * seconds
    line = {
        "bench": "llm_bound",
        "docs": options.docs,
        "completed": figures.completed,
        "other_outcomes": figures.other_outcomes,
        "concurrency": options.concurrency,
        "steps": STEPS,
        "llm_latency_s": options.latency,
        "startup_s": round(figures.startup, 2),
        "seconds": round(seconds, 2),
        "drain_s": round(figures.drain, 2),
        "docs_per_s": round(rate, 1),
        "ideal_docs_per_s": round(ideal, 1),
        "ratio": round(rate / ideal, 3),
        "llm_requests": figures.llm_requests,
        "llm_latency_p50_s": _round(figures.latency_p50),
        "llm_latency_p95_s": _round(figures.latency_p95),
        "mongo_commands_per_doc": round(figures.mongo_commands / max(1, figures.completed), 1),
        "mongo_commands": figures.mongo_by_command,
        "mongo_ms_per_command": round(
            1000 * figures.mongo_seconds / max(1, figures.mongo_commands), 1
        ),
        "slot_time_share": {
            "llm": _round(figures.llm_seconds / slot_seconds if slot_seconds else None),
            "mongo": _round(figures.mongo_seconds / slot_seconds if slot_seconds else None),
        },
        "cpu_per_s": figures.cpu,
        "mongo_options": options.mongo_options,
        "mongo_on_disk": options.mongo_on_disk,
        "python": platform.python_version(),
    }
    print(json.dumps(line), flush=True)
    return 0 if figures.completed == options.docs else 1


if __name__ == "__main__":
    sys.exit(main())
