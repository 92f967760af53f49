"""docbus against the raw azure-servicebus SDK, side by side on one local stack; one JSON line.

What a user could write instead of docbus is a loop over the SDK that sends in batches, or that
receives, writes one Mongo record per message and completes. This benchmark measures docbus
against exactly that, in one run, each comparison interleaved (A, B, A, B...) so that machine
noise hits both sides alike, on one emulator (``python -m docbus emulator``) and one SecantusDB
(:class:`docbus.local.mongo.LocalMongo`), each in a process of its own:

``publish``
    ``--docs`` documents (~``--doc-bytes`` each) by :func:`publisher.publish_documents` (called
    as a user would, with settings and the topology), by the ``docbus publish`` CLI (a JSONL
    file), by a raw batched send of the same bodies in this process (client, one sender,
    ``create_message_batch`` / ``send_messages``), and by the raw send as a script of its own
    (``bench/_overhead_raw.py send``, to set against the CLI: both pay a process start).
    Ratios are raw time / docbus time (1.0: as fast as raw). Also the Mongo commands
    ``publish_documents`` sent per document.
``publish_small``
    ``--small-docs`` (70) documents: the wall time until ``publish_documents`` returns, against
    the raw send of the same (client and link opened and closed inside the clock as well).
``noop``
    ``--messages`` messages through docbus's worker on a no-op handler
    (``bench/_overhead_worker.py``, set up as ``docbus worker`` sets up its own) against (a)
    ``bare``, a receive+complete loop, and (b) ``bulk``, the same plus one ``insert_many`` of the
    received batch's records (``bench/_overhead_raw.py``), with 1 and with 2 processes of each.
    Rates count from the first settlement to the last (every process prints the wall-clock times of
    its own), over 16,000 messages by default: 4,000 last about a second per consumer, mostly
    docbus's start (its receive-ahead grows with the handlers' pace: 2,700 msgs/s over 4,000
    messages, 3,850 over 16,000, in one session 19 run); also per message: Mongo commands,
    SecantusDB and emulator CPU (ms), and the SDK's receive sizes and completion latencies.
``reprocess``
    ``--reprocess-messages`` documents with fresh ids through docbus's worker, then the same
    ids published again under a new batch once their results exist (what nightly re-runs and
    replays do); ``results`` holds ``--results-fill`` filler results before the first round,
    and with ``--big-results N`` the comparison runs again on a collection of N results.
``first_result``
    From the start of a ``docbus worker`` process (the CLI) to its first stored result, against
    the raw bulk loop's process start to its first insert (both from the records' ``written_at``).
``publisher_rss``
    Peak RSS of ``docbus publish`` of a ``--rss-lines``-line JSONL against a tenth of that
    (``os.wait4``), and their ratio.

Every published message lands in a real subscription (``pub/sink``), drained outside the clocks.
The JSON line ends with ``aims``: each aim of issue 12 with its measured figure. Progress goes to
stderr. ``--quick`` shrinks every size and runs one round (1.5-2 minutes, a smoke run whose
figures mean little); ``--skip`` leaves phases out. A full run takes about 10 minutes.

    python bench/overhead.py [--quick] [--docs 10000] [--messages 16000] [--rounds 2]
        [--big-results 100000] [--skip publisher_rss,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _support import child, cpu_seconds
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError
from pydantic import SecretStr
from pymongo import monitoring
from rich.console import Console

from docbus.settings import MongoSettings, ServiceBusSettings, Settings
from docbus.topology import Topology, parse_topology, write_emulator_config

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
PUB_TOPIC, PUB_SUB = "pub", "sink"
WORK_TOPIC, WORK_SUB = "work", "noop"
ROUTE = {"docbus-route": "*"}
PHASES = ("publish", "publish_small", "noop", "reprocess", "first_result", "publisher_rss")

TOPOLOGY: Topology = parse_topology(
    {
        "defaults": {"max_delivery_count": 5, "lock_duration": "PT1M"},
        "topics": [
            {"name": PUB_TOPIC, "subscriptions": [{"name": PUB_SUB}]},
            {"name": WORK_TOPIC, "subscriptions": [{"name": WORK_SUB}]},
        ],
    }
)

WORDS = ("supplier", "shipment", "valves", "plant", "audit", "revenue", "flood", "warehouse",
         "delay", "buyers", "Europe", "quarter", "contract", "tariff", "port", "strike",
         "inventory", "forecast")  # fmt: skip

console = Console(stderr=True)


def say(text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", highlight=False)


# -- inputs --------------------------------------------------------------------------------------


def documents(count: int, prefix: str, size: int) -> list[dict[str, str]]:
    """``count`` documents of about ``size`` bytes of text, ids ``{prefix}-{i}``."""
    docs = []
    for i in range(count):
        head = f"Report {prefix}-{i}: "
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(size // 6)]
        docs.append({"doc_id": f"{prefix}-{i}", "text": (head + " ".join(words))[:size]})
    return docs


def write_jsonl(path: Path, docs: Iterable[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for doc in docs:
            file.write(json.dumps(doc) + "\n")
    return path


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- the stack ----------------------------------------------------------------------------------


class Commands(monitoring.CommandListener):
    """Mongo commands this process sent (``publish_documents`` runs here)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass
class Stack:
    """The emulator and SecantusDB, where they listen, and what this bench needs of them."""

    connection_string: str
    mongo_uri: str
    pids: dict[str, int | None]
    tmp: Path
    topology_file: Path
    commands: Commands
    logs: list[Path] = field(default_factory=list)

    def settings(self, database: str) -> Settings:
        return Settings(
            servicebus=ServiceBusSettings(connection_string=SecretStr(self.connection_string)),
            mongodb=MongoSettings(uri=SecretStr(self.mongo_uri), database=database),
        )

    def env(self, database: str) -> dict[str, str]:
        """The environment of a child: no developer settings, this stack's."""
        prefixes = ("DOCBUS_", "OPENAI_", "AZURE_", "MONGODB_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env["DOCBUS_SERVICEBUS__CONNECTION_STRING"] = self.connection_string
        env["DOCBUS_MONGODB__URI"] = self.mongo_uri
        env["DOCBUS_MONGODB__DATABASE"] = database
        return env

    def cpu(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def log(self, name: str) -> Path:
        path = self.tmp / f"{name}.{len(self.logs)}.log"
        self.logs.append(path)
        return path


@contextlib.asynccontextmanager
async def stack(options: argparse.Namespace) -> AsyncIterator[Stack]:
    from docbus.local.mongo import LocalMongo

    commands = Commands()
    monitoring.register(commands)  # before any client exists: it applies to new clients
    with tempfile.TemporaryDirectory(prefix="docbus-overhead-") as name:
        tmp = Path(name)
        config = write_emulator_config(TOPOLOGY, tmp / "Config.json")
        topology_file = tmp / "topology.toml"
        topology_file.write_text(_topology_toml(), encoding="utf-8")
        emulator_argv = [PYTHON, "-m", "docbus", "emulator", "--port", "0", "--config",
                         str(config), "--log-level", "warning"]  # fmt: skip
        with child(emulator_argv, tmp / "emulator.log", "Endpoint=") as (connection, sb_pid):
            data_dir = tmp / "mongo" if options.mongo_on_disk else None
            async with LocalMongo(data_dir=data_dir) as mongo:
                yield Stack(
                    connection_string=connection,
                    mongo_uri=mongo.uri,
                    pids={"emulator": sb_pid, "mongo": mongo.pid},
                    tmp=tmp,
                    topology_file=topology_file,
                    commands=commands,
                )


def _topology_toml() -> str:
    """The bench topology as the TOML ``docbus`` reads with ``--topology``."""
    lines = ["[defaults]", "max_delivery_count = 5", 'lock_duration = "PT1M"', ""]
    for topic in TOPOLOGY.topics:
        lines += ["[[topics]]", f'name = "{topic.name}"']
        for sub in topic.subscriptions:
            lines += ["  [[topics.subscriptions]]", f'  name = "{sub.name}"']
        lines.append("")
    return "\n".join(lines)


def docbus_command() -> list[str]:
    """How a user runs ``docbus``: the console script next to this interpreter."""
    script = Path(PYTHON).parent / "docbus"
    return [str(script)] if script.exists() else [PYTHON, "-m", "docbus"]


# -- raw SDK sending and draining ----------------------------------------------------------------


async def raw_send(connection_string: str, topic: str, docs: Sequence[dict[str, str]],
                   prefix: str) -> float:  # fmt: skip
    """The plain batched send of ``docs`` (JSON bodies) on one sender; seconds, all included."""
    started = time.perf_counter()
    client = ServiceBusClient.from_connection_string(connection_string)
    async with client, client.get_topic_sender(topic) as sender:
        await send_batched(
            sender,
            (
                ServiceBusMessage(
                    json.dumps(doc).encode(),
                    message_id=f"{prefix}-{number}",
                    application_properties=ROUTE,  # type: ignore[arg-type]
                )
                for number, doc in enumerate(docs)
            ),
        )
    return time.perf_counter() - started


async def send_batched(sender: ServiceBusSender, messages: Iterable[ServiceBusMessage]) -> None:
    """Send ``messages`` in batches as full as the SDK allows, one batch after the other."""
    batch = await sender.create_message_batch()
    for message in messages:
        try:
            batch.add_message(message)
        except MessageSizeExceededError:
            await sender.send_messages(batch)
            batch = await sender.create_message_batch()
            batch.add_message(message)
    if len(batch):
        await sender.send_messages(batch)


async def fill(stack: Stack, batch_id: str, docs: Sequence[dict[str, str]]) -> None:
    """Put ``docs`` on ``work/noop`` as docbus's publisher would build them (envelopes), sent
    raw on four senders: how they get there is not what the worker phases measure."""
    from docbus.envelope import Envelope
    from docbus.servicebus import build_message

    messages = [
        build_message(
            Envelope(content=d["text"], doc_id=d["doc_id"], batch_id=batch_id, topic=WORK_TOPIC)
        )
        for d in docs
    ]
    lanes = [messages[i::4] for i in range(4)]

    async def lane(client: ServiceBusClient, items: list[ServiceBusMessage]) -> None:
        async with client.get_topic_sender(WORK_TOPIC) as sender:
            await send_batched(sender, items)

    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        await asyncio.gather(*(lane(client, items) for items in lanes if items))


async def drain(stack: Stack, expected: int, topic: str = PUB_TOPIC, sub: str = PUB_SUB) -> int:
    """Take up to ``expected`` messages off a subscription (receive-and-delete)."""
    taken = empty = 0
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        receiver = client.get_subscription_receiver(
            topic, sub, receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, prefetch_count=1000
        )
        async with receiver:
            while taken < expected and empty < 3:
                got = await receiver.receive_messages(max_message_count=1000, max_wait_time=1)
                taken += len(got)
                empty = 0 if got else empty + 1
    return taken


# -- child processes -----------------------------------------------------------------------------


@dataclass
class Measured:
    """A child process run to its end: wall time, stdout, peak RSS (KiB), exit code."""

    seconds: float
    stdout: str
    max_rss_kb: int
    returncode: int

    def last_json(self) -> dict[str, Any]:
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
        raise RuntimeError(f"no JSON line in: {self.stdout[-500:]!r}")


# A small parent that runs a command and writes its peak RSS: a child forked from this bench
# (which holds every generated document) is charged the bench's pages until it execs, so
# ``ru_maxrss`` from here would measure the bench, not the command.
_SMALL_PARENT = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(
    argv: list[str], env: dict[str, str], log: Path, *, small_parent: bool = False
) -> Measured:
    """Run ``argv`` to its end; its peak RSS comes from ``os.wait4`` (this child alone), taken
    by a small parent process with ``small_parent`` (what a memory figure needs)."""
    out = log.with_suffix(".out")
    rss_file = log.with_suffix(".rss")
    if small_parent:
        argv = [sys.executable, "-c", _SMALL_PARENT, str(rss_file), *argv]
    with out.open("wb") as stdout, log.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    max_rss = int(rss_file.read_text()) if small_parent and rss_file.exists() else usage.ru_maxrss
    return Measured(seconds, out.read_text(errors="replace"), max_rss, process.returncode)


@dataclass
class Consumers:
    """One run of consumer processes over a filled subscription."""

    kind: str  # "docbus", "bare" or "bulk"
    processes: int
    messages: int
    settled: int = 0
    rate: float = 0.0
    commands_per_msg: float = 0.0
    commands: dict[str, int] = field(default_factory=dict)
    mongo_cpu_ms_per_msg: float | None = None
    emulator_cpu_ms_per_msg: float | None = None
    consumer_cpu_ms_per_msg: float | None = None
    receive_mean: float | None = None
    receive_ms_p50: float | None = None
    complete_ms_p50: float | None = None
    complete_ms_p90: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "msgs_s": round(self.rate, 1),
            "settled": self.settled,
            "commands_per_msg": round(self.commands_per_msg, 2),
            "mongo_cpu_ms_per_msg": rnd(self.mongo_cpu_ms_per_msg),
            "emulator_cpu_ms_per_msg": rnd(self.emulator_cpu_ms_per_msg),
            "consumer_cpu_ms_per_msg": rnd(self.consumer_cpu_ms_per_msg),
            "receive_mean": rnd(self.receive_mean, 1),
            "receive_ms_p50": rnd(self.receive_ms_p50, 1),
            "complete_ms_p50": rnd(self.complete_ms_p50, 2),
            "complete_ms_p90": rnd(self.complete_ms_p90, 2),
        }


def _raw_idle(options: argparse.Namespace) -> list[str]:
    """The raw loop's exit when idle: two empty receives of half ``--idle`` each."""
    return ["--wait", str(options.idle / 2), "--idle-receives", "2"]


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def consume(  # noqa: C901 - the bench's consumer loop: each branch is one consumer kind it compares
    stack: Stack,
    kind: str,
    processes: int,
    messages: int,
    database: str,
    options: argparse.Namespace,
) -> Consumers:
    """Start ``processes`` consumers of ``kind`` on the filled ``work/noop``, let them set up,
    start them together and wait until they exit (idle); their figures, summed."""
    if kind == "docbus":
        argv = [PYTHON, str(HERE / "_overhead_worker.py"), "--topology", str(stack.topology_file),
                "--until-idle", str(options.idle)]  # fmt: skip
        if options.concurrency is not None:
            argv += ["--concurrency", str(options.concurrency)]
    else:
        argv = [PYTHON, str(HERE / "_overhead_raw.py"), kind, "--handshake",
                "--connection-string", stack.connection_string, "--topic", WORK_TOPIC,
                "--subscription", WORK_SUB, "--mongo-uri", stack.mongo_uri,
                "--database", database, "--batch", str(options.raw_batch),
                *_raw_idle(options)]  # fmt: skip
    env = stack.env(database)
    children = []
    logs = []
    for index in range(processes):
        log = stack.log(f"{kind}{processes}-{index}").open("wb")
        logs.append(log)
        children.append(
            await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env
            )
        )
    try:
        for proc in children:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"ready":
                raise RuntimeError(f"{kind} consumer did not start (see {logs[0].name})")
        cpu_before = stack.cpu()
        for proc in children:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        outputs = await asyncio.gather(*(proc.communicate() for proc in children))
        cpu_after = stack.cpu()
    finally:
        for proc in children:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for log in logs:
            log.close()
    figures = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
    run = Consumers(kind, processes, messages)
    run.settled = sum(f["settled"] for f in figures)
    firsts = [f["first"] for f in figures if f["settled"]]
    lasts = [f["last"] for f in figures if f["settled"]]
    if firsts and max(lasts) > min(firsts):
        run.rate = (run.settled - 1) / (max(lasts) - min(firsts))
    for f in figures:
        for name, count in f["commands"].items():
            run.commands[name] = run.commands.get(name, 0) + count
    run.commands = dict(sorted(run.commands.items()))
    settled = max(1, run.settled)
    run.commands_per_msg = sum(run.commands.values()) / settled
    for name in ("mongo", "emulator"):
        before, after = cpu_before.get(name), cpu_after.get(name)
        if before is not None and after is not None:
            setattr(run, f"{name}_cpu_ms_per_msg", 1000 * (after - before) / settled)
    run.consumer_cpu_ms_per_msg = 1000 * sum(f["cpu_s"] for f in figures) / settled
    sizes = [n for f in figures for n in f["receive_sizes"]]
    run.receive_mean = statistics.fmean(sizes) if sizes else None
    run.receive_ms_p50 = _quantile([x for f in figures for x in f.get("receive_ms", [])], 0.5)
    completions = [x for f in figures for x in f["complete_ms"]]
    run.complete_ms_p50 = _quantile(completions, 0.5)
    run.complete_ms_p90 = _quantile(completions, 0.9)
    if run.settled != messages:
        say(f"[yellow]{kind} x{processes}: settled {run.settled} of {messages}[/]")
        # what one run left must not be counted by the next one
        await drain(stack, max(1, messages - run.settled), WORK_TOPIC, WORK_SUB)
    return run


# -- phases -------------------------------------------------------------------------------------


async def phase_publish(stack: Stack, options: argparse.Namespace) -> dict[str, Any]:
    from publisher import publish_documents

    settings = stack.settings("publish")
    api_s: list[float] = []
    raw_s: list[float] = []
    cli_s: list[float] = []
    cli_reported_s: list[float] = []
    raw_script_s: list[float] = []
    commands_per_doc: list[float] = []
    n = options.docs
    for r in range(options.rounds):
        docs = documents(n, f"p{r}", options.doc_bytes)
        jsonl = write_jsonl(stack.tmp / f"publish-{r}.jsonl", docs)

        before = stack.commands.count
        started = time.perf_counter()
        report = await publish_documents(
            docs, topic=PUB_TOPIC, batch_id=f"api-{r}", settings=settings, topology=TOPOLOGY,
        )  # fmt: skip
        api_s.append(time.perf_counter() - started)
        commands_per_doc.append((stack.commands.count - before) / n)
        if report.sent != n:
            raise RuntimeError(f"publish_documents sent {report.sent} of {n}")
        await drain(stack, n)

        raw_s.append(await raw_send(stack.connection_string, PUB_TOPIC, docs, f"raw-{r}"))
        await drain(stack, n)

        cli = run_measured(
            [*docbus_command(), "publish", str(jsonl), "--topic", PUB_TOPIC, "--id-field",
             "doc_id", "--batch-id", f"cli-{r}", "--topology", str(stack.topology_file), "--json"],
            stack.env("publish"), stack.log("publish-cli"),
        )  # fmt: skip
        if cli.returncode != 0:
            raise RuntimeError(f"docbus publish failed ({cli.returncode}): {cli.stdout[-500:]}")
        cli_s.append(cli.seconds)
        cli_reported_s.append(float(cli.last_json()["duration_s"]))
        await drain(stack, n)

        script = run_measured(
            [PYTHON, str(HERE / "_overhead_raw.py"), "send", "--file", str(jsonl),
             "--connection-string", stack.connection_string, "--topic", PUB_TOPIC,
             "--id-prefix", f"rawcli-{r}"],
            stack.env("publish"), stack.log("publish-raw-script"),
        )  # fmt: skip
        raw_script_s.append(script.seconds)
        await drain(stack, n)
        say(
            f"publish {n}: api {api_s[-1]:.2f} s, raw {raw_s[-1]:.2f} s, "
            f"cli {cli_s[-1]:.2f} s, raw script {raw_script_s[-1]:.2f} s"
        )
    return {
        "docs": n,
        "doc_bytes": options.doc_bytes,
        "api_s": [round(x, 2) for x in api_s],
        "raw_s": [round(x, 2) for x in raw_s],
        "cli_s": [round(x, 2) for x in cli_s],
        "cli_reported_s": cli_reported_s,
        "raw_script_s": [round(x, 2) for x in raw_script_s],
        "api_per_raw": rnd(median([r / a for r, a in zip(raw_s, api_s, strict=True)])),
        "cli_per_raw_script": rnd(
            median([r / c for r, c in zip(raw_script_s, cli_s, strict=True)])
        ),
        "api_docs_s": round(n / statistics.median(api_s)),
        "raw_docs_s": round(n / statistics.median(raw_s)),
        "api_mongo_commands_per_doc": rnd(median(commands_per_doc)),
    }


async def phase_publish_small(stack: Stack, options: argparse.Namespace) -> dict[str, Any]:
    from publisher import publish_documents

    settings = stack.settings("publish")
    n = options.small_docs
    api_s: list[float] = []
    raw_s: list[float] = []
    for r in range(options.small_rounds):
        docs = documents(n, f"s{r}", options.doc_bytes)
        started = time.perf_counter()
        await publish_documents(
            docs, topic=PUB_TOPIC, batch_id=f"small-{r}", settings=settings, topology=TOPOLOGY,
        )  # fmt: skip
        api_s.append(time.perf_counter() - started)
        await drain(stack, n)
        raw_s.append(await raw_send(stack.connection_string, PUB_TOPIC, docs, f"rawsmall-{r}"))
        await drain(stack, n)
    say(f"publish {n}: api {[round(x, 2) for x in api_s]} s, raw {[round(x, 2) for x in raw_s]} s")
    return {
        "docs": n,
        "api_s": [round(x, 2) for x in api_s],
        "raw_s": [round(x, 2) for x in raw_s],
        "api_median_s": rnd(median(api_s), 2),
        "raw_median_s": rnd(median(raw_s), 2),
    }


async def phase_noop(stack: Stack, options: argparse.Namespace) -> dict[str, Any]:
    variants = [(kind, p) for p in (1, 2) for kind in ("docbus", "bare", "bulk")]
    runs: dict[str, list[Consumers]] = {f"{k}{p}": [] for k, p in variants}
    n = options.messages
    for r in range(options.rounds):
        for kind, processes in variants:
            name = f"{kind}{processes}"
            await fill(stack, f"noop-{name}-{r}", documents(n, f"{name}-{r}", options.doc_bytes))
            run = await consume(stack, kind, processes, n, "noop", options)
            runs[name].append(run)
            say(f"no-op {name}: {run.rate:.0f} msgs/s, {run.commands_per_msg:.2f} commands/msg")

    def rates(name: str) -> list[float]:
        return [run.rate for run in runs[name]]

    def ratio(a: str, b: str) -> float | None:
        return rnd(median([x / y for x, y in zip(rates(a), rates(b), strict=True) if y]))

    return {
        "messages": n,
        "concurrency": options.concurrency or Settings().worker.concurrency,
        "raw_batch": options.raw_batch,
        "msgs_s": {name: [round(x) for x in rates(name)] for name in runs},
        "docbus_per_bulk": ratio("docbus1", "bulk1"),
        "docbus_per_bare": ratio("docbus1", "bare1"),
        "two_per_one": {
            "docbus": ratio("docbus2", "docbus1"),
            "bare": ratio("bare2", "bare1"),
            "bulk": ratio("bulk2", "bulk1"),
        },
        "last_round": {name: items[-1].summary() for name, items in runs.items()},
        "commands": {name: items[-1].commands for name, items in runs.items()},
    }


async def fill_results(stack: Stack, database: str, count: int) -> None:
    """``count`` filler results of other documents, shaped as docbus writes them."""
    from pymongo import AsyncMongoClient

    from docbus.store import Store

    async with Store.from_settings(stack.settings(database)) as store:
        await store.ensure_indexes()
    now = datetime.now(UTC)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri)
    try:
        results = client[database]["results"]
        for start in range(0, count, 5000):
            await results.insert_many(
                [
                    {"_id": f"noop@filler-{i}", "doc_id": f"filler-{i}", "handler": "noop",
                     "handler_version": "1", "rolled_back": False, "batch_id": "filler",
                     "generation": 0, "message_id": f"filler-{i}", "run_id": None, "issued_at": now,
                     "output": {"ok": True}, "written_at": now, "delivery_count": 1}
                    for i in range(start, min(count, start + 5000))
                ],
                ordered=False,
            )  # fmt: skip
    finally:
        await client.close()


async def count_results(stack: Stack, database: str) -> int:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri)
    try:
        return await client[database]["results"].count_documents({})
    finally:
        await client.close()


async def reprocess_rounds(
    stack: Stack, options: argparse.Namespace, database: str, fill_count: int, rounds: int
) -> dict[str, Any]:
    """Fresh ids, then the same ids under a new batch, ``rounds`` times (interleaved)."""
    from docbus.store import Store
    from publisher import publish_documents

    await fill_results(stack, database, fill_count)
    n = options.reprocess_messages
    fresh: list[Consumers] = []
    again: list[Consumers] = []
    sizes: list[int] = []
    settings = stack.settings(database)
    async with Store.from_settings(settings) as store:
        for r in range(rounds):
            docs = documents(n, f"{database}-r{r}", options.doc_bytes)
            for label, runs in (("fresh", fresh), ("again", again)):
                sizes.append(await count_results(stack, database))
                await publish_documents(
                    docs, topic=WORK_TOPIC, batch_id=f"{label}-{r}", settings=settings,
                    store=store, topology=TOPOLOGY,
                )  # fmt: skip
                run = await consume(stack, "docbus", 1, n, database, options)
                runs.append(run)
                say(
                    f"{database} {label} (results: {sizes[-1]}): {run.rate:.0f} msgs/s, "
                    f"{run.commands_per_msg:.2f} commands/msg"
                )
    return {
        "messages": n,
        "results_before_each_run": sizes,
        "fresh_msgs_s": [round(run.rate, 1) for run in fresh],
        "existing_msgs_s": [round(run.rate, 1) for run in again],
        "existing_per_fresh": rnd(
            median([a.rate / f.rate for f, a in zip(fresh, again, strict=True) if f.rate])
        ),
        "commands_per_msg": {
            "fresh": rnd(median([run.commands_per_msg for run in fresh]), 2),
            "existing": rnd(median([run.commands_per_msg for run in again]), 2),
        },
        "mongo_cpu_ms_per_msg": {
            "fresh": fresh[-1].mongo_cpu_ms_per_msg and rnd(fresh[-1].mongo_cpu_ms_per_msg),
            "existing": again[-1].mongo_cpu_ms_per_msg and rnd(again[-1].mongo_cpu_ms_per_msg),
        },
        "commands": {"fresh": fresh[-1].commands, "existing": again[-1].commands},
    }


async def phase_reprocess(stack: Stack, options: argparse.Namespace) -> dict[str, Any]:
    figures = await reprocess_rounds(
        stack, options, "reprocess", options.results_fill, options.rounds
    )
    if options.big_results:
        figures["big"] = await reprocess_rounds(
            stack, options, "reprocess_big", options.big_results, 1
        )
    return figures


async def first_written(stack: Stack, database: str, collection: str, batch_id: str) -> datetime:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongo_uri, tz_aware=True)
    try:
        cursor = client[database][collection].find({"batch_id": batch_id}).sort("written_at", 1)
        async for raw in cursor.limit(1):
            written: datetime = raw["written_at"]
            return written
    finally:
        await client.close()
    raise RuntimeError(f"no record of batch {batch_id} in {database}.{collection}")


FIRST_IDLE = 3.0
"""How long the processes of ``first_result`` wait idle before they exit: longer than the
no-op runs' ``--idle`` because a loaded machine can keep a starting worker from its first
receive for more than a second (it then exited with nothing done), and the figure is read from
the records' ``written_at``, not from when the process exits."""


async def phase_first_result(stack: Stack, options: argparse.Namespace) -> dict[str, Any]:
    database = "first"
    docbus_s: list[float] = []
    raw_s: list[float] = []
    docbus_wall: list[float] = []
    n = options.first_messages
    for r in range(options.first_rounds):
        for kind in ("docbus", "raw"):
            batch_id = f"first-{kind}-{r}"
            await fill(stack, batch_id, documents(n, batch_id, options.doc_bytes))
            if kind == "docbus":
                argv = [*docbus_command(), "worker", "--handlers", str(HERE / "_overhead_noop.py"),
                        "--topology", str(stack.topology_file),
                        "--until-idle", str(FIRST_IDLE)]  # fmt: skip
                collection = "results"
            else:
                argv = [PYTHON, str(HERE / "_overhead_raw.py"), "bulk", "--connection-string",
                        stack.connection_string, "--topic", WORK_TOPIC, "--subscription",
                        WORK_SUB, "--mongo-uri", stack.mongo_uri, "--database", database,
                        "--batch", str(options.raw_batch), "--wait", str(FIRST_IDLE / 2),
                        "--idle-receives", "2"]  # fmt: skip
                collection = "raw_results"
            spawned = datetime.now(UTC)
            run = await asyncio.to_thread(
                run_measured, argv, stack.env(database), stack.log(f"first-{kind}")
            )
            if run.returncode != 0:
                raise RuntimeError(f"{kind} exited with {run.returncode}: {run.stdout[-500:]}")
            first = await first_written(stack, database, collection, batch_id)
            (docbus_s if kind == "docbus" else raw_s).append((first - spawned).total_seconds())
            if kind == "docbus":
                docbus_wall.append(run.seconds)
        say(f"first result: docbus {docbus_s[-1]:.2f} s, raw {raw_s[-1]:.2f} s")
    return {
        "messages": n,
        "docbus_s": [round(x, 3) for x in docbus_s],
        "raw_s": [round(x, 3) for x in raw_s],
        "docbus_per_raw": rnd(median([d / r for d, r in zip(docbus_s, raw_s, strict=True)])),
    }


async def phase_publisher_rss(stack: Stack, options: argparse.Namespace) -> dict[str, Any]:
    rss: dict[int, float] = {}
    seconds: dict[int, float] = {}
    for lines in (options.rss_lines // 10, options.rss_lines):
        jsonl = write_jsonl(
            stack.tmp / f"rss-{lines}.jsonl", documents(lines, f"rss{lines}", options.rss_doc_bytes)
        )
        run = await asyncio.to_thread(
            run_measured,
            [*docbus_command(), "publish", str(jsonl), "--topic", PUB_TOPIC, "--id-field",
             "doc_id", "--batch-id", f"rss-{lines}", "--topology", str(stack.topology_file),
             "--json"],
            stack.env("rss"), stack.log("rss"), small_parent=True,
        )  # fmt: skip
        if run.returncode != 0:
            raise RuntimeError(f"docbus publish failed ({run.returncode}): {run.stdout[-500:]}")
        rss[lines] = run.max_rss_kb / 1024
        seconds[lines] = run.seconds
        await drain(stack, lines)
        jsonl.unlink()
        say(f"docbus publish of {lines} lines: peak RSS {rss[lines]:.0f} MiB, {run.seconds:.1f} s")
    small, large = sorted(rss)
    return {
        "lines": [small, large],
        "doc_bytes": options.rss_doc_bytes,
        "peak_rss_mib": [round(rss[small], 1), round(rss[large], 1)],
        "seconds": [round(seconds[small], 1), round(seconds[large], 1)],
        "ratio": round(rss[large] / rss[small], 3),
        "kib_per_extra_line": round(1024 * (rss[large] - rss[small]) / (large - small), 3),
    }


# -- the run ------------------------------------------------------------------------------------

AIMS: list[tuple[str, Callable[[dict[str, Any]], float | None], str, float]] = [
    ("publish 10,000 docs / raw batched send",
     lambda f: f.get("publish", {}).get("api_per_raw"), ">=", 0.8),
    ("publish of 70 docs, wall time until publish_documents returns (s)",
     lambda f: f.get("publish_small", {}).get("api_median_s"), "<=", 1.2),
    ("no-op worker / raw loop + one bulk write per batch",
     lambda f: f.get("noop", {}).get("docbus_per_bulk"), ">=", 0.9),
    ("no-op worker / bare receive+complete loop",
     lambda f: f.get("noop", {}).get("docbus_per_bare"), ">=", 0.7),
    ("two workers / one worker, no-op",
     lambda f: f.get("noop", {}).get("two_per_one", {}).get("docbus"), ">=", 1.6),
    ("re-processing existing ids / fresh ids",
     lambda f: f.get("reprocess", {}).get("existing_per_fresh"), ">=", 0.9),
    ("re-processing existing ids / fresh ids, large results collection",
     lambda f: f.get("reprocess", {}).get("big", {}).get("existing_per_fresh"), ">=", 0.9),
    ("time to first result / raw loop's",
     lambda f: f.get("first_result", {}).get("docbus_per_raw"), "<=", 1.3),
    ("publisher RSS, 10x lines / 1x lines",
     lambda f: f.get("publisher_rss", {}).get("ratio"), "<=", 1.1),
]  # fmt: skip


def aims(figures: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name, get, op, target in AIMS:
        value = get(figures)
        if value is None:
            continue
        met = value >= target if op == ">=" else value <= target
        table[name] = {"value": value, "aim": f"{op} {target}", "met": met}
    return table


PHASE_FUNCTIONS: dict[str, Callable[[Stack, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "publish": phase_publish,
    "publish_small": phase_publish_small,
    "noop": phase_noop,
    "reprocess": phase_reprocess,
    "first_result": phase_first_result,
    "publisher_rss": phase_publisher_rss,
}


async def run_bench(options: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"bench": "overhead", "quick": options.quick}
    started = time.perf_counter()
    async with stack(options) as bench_stack:
        say(f"stack up: emulator pid {bench_stack.pids['emulator']}, "
            f"SecantusDB pid {bench_stack.pids['mongo']}")  # fmt: skip
        for phase in PHASES:
            if phase in options.skip:
                continue
            say(f"[bold]{phase}[/]")
            figures[phase] = await PHASE_FUNCTIONS[phase](bench_stack, options)
    figures["aims"] = aims(figures)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    figures["mongo_on_disk"] = options.mongo_on_disk
    figures["cpus"] = os.cpu_count()
    figures["python"] = platform.python_version()
    return figures


QUICK = {
    "docs": 500,
    "messages": 200,
    "rounds": 1,
    "small_rounds": 1,
    "reprocess_messages": 60,
    "results_fill": 200,
    "first_rounds": 1,
    "first_messages": 10,
    "rss_lines": 2000,
}
"""``--quick``: every phase once, at sizes a smoke test (tests/test_overhead_quick.py) affords;
the figures are too small to judge docbus by."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny sizes, one round: a smoke run (1.5-2 minutes)")
    add("--docs", type=int, default=10_000, help="documents per publish (10000)")
    add("--doc-bytes", type=int, default=1024, help="text bytes per document (1024)")
    add(
        "--rounds", type=int, default=2, help="interleaved rounds of publish, no-op, re-process (2)"
    )
    add("--small-docs", type=int, default=70, help="documents of the small publish (70)")
    add("--small-rounds", type=int, default=5, help="rounds of the small publish (5)")
    add("--messages", type=int, default=16_000, help="messages per no-op run (16000)")
    add("--concurrency", type=int, help="docbus worker concurrency (default: its settings')")
    add("--raw-batch", type=int, default=100, help="raw loops' max_message_count (100)")
    add("--reprocess-messages", type=int, default=1000, help="documents re-processed (1000)")
    add("--results-fill", type=int, default=3000, help="filler results before (3000)")
    add("--big-results", "--results-size", type=int, default=0, metavar="N",
        help="also re-process on a results collection of N filler results (0: not)")  # fmt: skip
    add("--first-rounds", type=int, default=3, help="rounds of time to first result (3)")
    add("--first-messages", type=int, default=50, help="messages waiting at start (50)")
    add("--rss-lines", type=int, default=100_000, help="lines of the larger JSONL (100000)")
    add("--rss-doc-bytes", type=int, default=256, help="text bytes per RSS line (256)")
    add("--idle", type=float, default=1.5,
        help="seconds without a message after which a no-op consumer exits (1.5)")  # fmt: skip
    add("--mongo-on-disk", action="store_true", help="SecantusDB on a data directory")
    add("--skip", default="", help=f"comma-separated phases to leave out: {', '.join(PHASES)}")
    options = parser.parse_args(argv)
    if options.quick:
        for name, value in QUICK.items():
            if getattr(options, name) == parser.get_default(name):
                setattr(options, name, value)
    options.skip = {name.strip() for name in options.skip.split(",") if name.strip()}
    unknown = options.skip - set(PHASES)
    if unknown:
        parser.error(f"unknown phases in --skip: {', '.join(sorted(unknown))}")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    figures = asyncio.run(run_bench(options))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
