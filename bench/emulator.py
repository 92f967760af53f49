"""Benchmark of the Service Bus emulator with the real async SDK; prints one JSON line of figures.

Four phases against one queue, each timed from its first operation to its last (links are opened
before the clock starts and closed after it stops: the SDK polls for about half a second on each
open and close, which says nothing about the broker):

1. ``send``: ``--messages`` messages of ``--size`` bytes in batches (``create_message_batch``)
   from ``--senders`` concurrent senders;
2. ``receive_complete``: peek-lock receive and complete of all of them with one receiver
   (``prefetch_count=--prefetch``, ``receive_messages(max_message_count=--batch)``);
3. ``send_again``: the queue is filled again the same way;
4. ``receive_complete_concurrent``: the same receive + complete with ``--receivers`` concurrent
   receivers (each on its own connection, as the SDK opens one per receiver).

By default the emulator runs as a separate process (``python -m docbus emulator --port 0``) so
that it and the SDK do not share one GIL; ``--in-process`` runs it on a thread of this process
instead, and ``--connection-string`` uses an emulator that is already running (for profiling it:
start it with ``--config`` pointing at the output of ``--print-config``). For the separate
process the JSON also holds the CPU time each side used per phase, which shows which side is the
bottleneck (a side at ~1.0 CPU-seconds per second is saturated). Progress goes to stderr.

    python bench/emulator.py [--messages 20000] [--size 1024] [--receivers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _support import cpu_seconds, first_line
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

QUEUE = "bench"
STARTUP_TIMEOUT = 60.0


def bench_config(queue: str = QUEUE) -> dict[str, Any]:
    """The emulator config (Microsoft's Config.json schema) the benchmark runs against."""
    return {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": "sbemulatorns",
                    "Queues": [
                        {
                            "Name": queue,
                            "Properties": {
                                "LockDuration": "PT5M",
                                "MaxDeliveryCount": 10,
                                "MaxSizeInMegabytes": 5120,
                            },
                        }
                    ],
                    "Topics": [],
                }
            ],
            "Logging": {"Type": "Console"},
        }
    }


# ----------------------------------------------------------------------------------------------
# The emulator under test


@dataclass
class EmulatorUnderTest:
    mode: str  # "subprocess", "in-process" or "external"
    connection_string: str
    pid: int | None = None

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid is not None else None


@contextlib.contextmanager
def subprocess_emulator(queue: str) -> Iterator[EmulatorUnderTest]:
    with tempfile.TemporaryDirectory(prefix="docbus-bench-") as tmp:
        config = Path(tmp) / "Config.json"
        config.write_text(json.dumps(bench_config(queue)), encoding="utf-8")
        log = Path(tmp) / "emulator.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "docbus", "emulator", "--port", "0"),
                    *("--config", str(config), "--log-level", "warning"),
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
            )
            try:
                line = first_line(process, STARTUP_TIMEOUT)
                if not line.startswith("Endpoint="):
                    raise RuntimeError(
                        "the emulator did not start: " + log.read_text(errors="replace")[-2000:]
                    )
                yield EmulatorUnderTest("subprocess", line, process.pid)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@contextlib.contextmanager
def in_process_emulator(queue: str) -> Iterator[EmulatorUnderTest]:
    from docbus.local.emulator import EmulatorThread, parse_config

    with EmulatorThread(parse_config(bench_config(queue))) as emulator:
        yield EmulatorUnderTest("in-process", emulator.connection_string)


# ----------------------------------------------------------------------------------------------
# Phases


@dataclass
class Phase:
    name: str
    messages: int
    seconds: float = 0.0
    emulator_cpu: float | None = None  # CPU-seconds per second of the phase
    client_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class Clock:
    """Times one phase and the CPU each side spent in it; ``stop`` is called once, at the end."""

    def __init__(self, emulator: EmulatorUnderTest, phase: Phase) -> None:
        self.emulator = emulator
        self.phase = phase
        self._started = 0.0
        self._cpu: tuple[float | None, float] = (None, 0.0)

    def start(self) -> None:
        self._cpu = (self.emulator.cpu_seconds(), time.process_time())
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self.phase.seconds:
            return
        self.phase.seconds = time.perf_counter() - self._started
        emulator_cpu, client_cpu = self.emulator.cpu_seconds(), time.process_time()
        if emulator_cpu is not None and self._cpu[0] is not None:
            self.phase.emulator_cpu = (emulator_cpu - self._cpu[0]) / self.phase.seconds
            self.phase.client_cpu = (client_cpu - self._cpu[1]) / self.phase.seconds


Link = ServiceBusSender | ServiceBusReceiver
Body = Callable[[Callable[[int], None], Clock], Awaitable[None]]


@dataclass
class Bench:
    client: ServiceBusClient
    queue: str
    emulator: EmulatorUnderTest
    progress: Progress
    options: argparse.Namespace
    phases: list[Phase] = field(default_factory=list)

    async def measure(self, name: str, label: str, links: Sequence[Link], body: Body) -> None:
        """Run one phase, opening its links before the clock starts and closing them after."""
        phase = Phase(name, self.options.messages)
        clock = Clock(self.emulator, phase)
        task = self.progress.add_task(label, total=phase.messages)
        async with contextlib.AsyncExitStack() as stack:
            for link in links:
                await stack.enter_async_context(link)
            clock.start()
            await body(lambda n: self.progress.advance(task, n), clock)
            clock.stop()
        self.phases.append(phase)

    async def send(self, name: str, label: str) -> None:
        count, senders = self.options.messages, self.options.senders
        shares = [count // senders + (1 if i < count % senders else 0) for i in range(senders)]
        body = (b"0123456789abcdef" * (self.options.size // 16 + 1))[: self.options.size]
        links = [self.client.get_queue_sender(self.queue) for _ in shares]

        async def run(advance: Callable[[int], None], clock: Clock) -> None:
            await asyncio.gather(
                *(_send(link, n, body, advance) for link, n in zip(links, shares, strict=True))
            )

        await self.measure(name, label, links, run)

    async def receive(self, name: str, label: str, receivers: int) -> None:
        links = [
            self.client.get_queue_receiver(self.queue, prefetch_count=self.options.prefetch)
            for _ in range(receivers)
        ]
        countdown = _Countdown(self.options.messages)

        async def run(advance: Callable[[int], None], clock: Clock) -> None:
            batch = self.options.batch
            await asyncio.gather(
                *(_receive(link, batch, countdown, advance, clock) for link in links)
            )
            if countdown.remaining > 0:
                raise RuntimeError(f"{countdown.remaining} messages were not received")

        await self.measure(name, label, links, run)


async def _send(
    sender: ServiceBusSender, count: int, body: bytes, advance: Callable[[int], None]
) -> None:
    sent = 0
    while sent < count:
        batch = await sender.create_message_batch()
        size = 0
        while sent + size < count:
            try:
                batch.add_message(ServiceBusMessage(body))
            except MessageSizeExceededError:
                break
            size += 1
        await sender.send_messages(batch)
        sent += size
        advance(size)


@dataclass
class _Countdown:
    remaining: int


async def _receive(
    receiver: ServiceBusReceiver,
    batch: int,
    countdown: _Countdown,
    advance: Callable[[int], None],
    clock: Clock,
) -> None:
    idle_rounds = 0
    while countdown.remaining > 0:
        messages = await receiver.receive_messages(max_message_count=batch, max_wait_time=1)
        if not messages:
            idle_rounds += 1
            if idle_rounds >= 10:  # the other receivers hold the rest in their prefetch
                return
            continue
        idle_rounds = 0
        for message in messages:
            await receiver.complete_message(message)
        countdown.remaining -= len(messages)
        advance(len(messages))
        if countdown.remaining <= 0:
            clock.stop()  # not when the other receivers' last (empty) waits end


async def run_bench(emulator: EmulatorUnderTest, options: argparse.Namespace) -> list[Phase]:
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
            bench = Bench(client, options.queue, emulator, progress, options)
            await bench.send("send", f"send ({options.senders} senders)")
            await bench.receive("receive_complete", "receive+complete (1 receiver)", 1)
            await bench.send("send_again", "send again")
            await bench.receive(
                "receive_complete_concurrent",
                f"receive+complete ({options.receivers} receivers)",
                options.receivers,
            )
    return bench.phases


def report(emulator: EmulatorUnderTest, options: argparse.Namespace, phases: list[Phase]) -> str:
    by_name = {phase.name: phase for phase in phases}
    figures: dict[str, Any] = {
        "bench": "emulator",
        "emulator": emulator.mode,
        "messages": options.messages,
        "size": options.size,
        "senders": options.senders,
        "receivers": options.receivers,
        "prefetch": options.prefetch,
        "send_msgs_s": round(by_name["send"].rate),
        "send_again_msgs_s": round(by_name["send_again"].rate),
        "receive_complete_msgs_s": round(by_name["receive_complete"].rate),
        "receive_complete_concurrent_msgs_s": round(by_name["receive_complete_concurrent"].rate),
        "seconds": {phase.name: round(phase.seconds, 2) for phase in phases},
    }
    if all(phase.emulator_cpu is not None for phase in phases):
        figures["cpu_per_second"] = {
            phase.name: {
                "emulator": round(phase.emulator_cpu or 0.0, 2),
                "client": round(phase.client_cpu or 0.0, 2),
            }
            for phase in phases
        }
    figures["cpus"] = os.cpu_count()
    figures["python"] = platform.python_version()
    return json.dumps(figures)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per phase")
    parser.add_argument("--size", type=int, default=1024, help="body size in bytes")
    parser.add_argument("--receivers", type=int, default=4, help="receivers in the last phase")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders")
    parser.add_argument("--prefetch", type=int, default=300, help="receiver prefetch_count")
    parser.add_argument("--batch", type=int, default=100, help="receive max_message_count")
    parser.add_argument("--in-process", action="store_true", help="emulator on a thread here")
    parser.add_argument("--connection-string", help="use an emulator that is already running")
    parser.add_argument("--queue", default=QUEUE, help="queue name (default: bench)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the emulator config and exit"
    )
    options = parser.parse_args(argv)
    for name in ("messages", "size", "receivers", "senders", "prefetch", "batch"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.print_config:
        print(json.dumps(bench_config(options.queue), indent=2))
        return 0
    if options.connection_string:
        emulator_cm: contextlib.AbstractContextManager[EmulatorUnderTest] = contextlib.nullcontext(
            EmulatorUnderTest("external", options.connection_string)
        )
    elif options.in_process:
        emulator_cm = in_process_emulator(options.queue)
    else:
        emulator_cm = subprocess_emulator(options.queue)
    with emulator_cm as emulator:
        phases = asyncio.run(run_bench(emulator, options))
    print(report(emulator, options, phases), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
