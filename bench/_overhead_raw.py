"""The plainest thing a user could write instead of docbus: bare azure-servicebus loops.

``bench/overhead.py`` runs this script as a process of its own, against the same emulator and
SecantusDB as docbus, in one of three modes:

- ``bare``: receive (``receive_messages(max_message_count=--batch)``) and complete each message;
- ``bulk``: the same, plus one ``insert_many`` of the received batch's records (one per message,
  the body's ``doc_id`` and a tiny output) before the batch's messages are completed;
- ``send``: read a JSONL file and send its lines as message bodies in batches
  (``create_message_batch`` / ``send_messages``), as ``docbus publish`` would send them.

It imports only the SDKs and ``bench/_support.py`` (no docbus), so its start-up is what a bare
script's is. With ``--handshake`` a receive loop opens its link, prints ``ready`` and waits for a
line on stdin before it receives (so several processes start together); without it, it starts at
once (the time-to-first-result phase). When done it prints one JSON line: wall-clock times
(``time.time``) of its first and last settlement, how many it settled, its receive sizes and
settlement latencies, and the Mongo commands it sent (a pymongo command listener).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from _support import CommandCounter
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageSizeExceededError
from pymongo import AsyncMongoClient, monitoring

ROUTE = {"docbus-route": "*"}
"""The application property the generated subscription rules match (docbus.topology)."""


def record(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """The one record a plain loop stores per message (the no-op handler's result)."""
    body = json.loads(b"".join(message.body))
    return {
        "_id": f"raw@{message.message_id}",
        "doc_id": body.get("doc_id"),
        "batch_id": body.get("batch_id"),
        "output": {"ok": True},
        "written_at": datetime.now(UTC),
    }


async def receive_loop(options: argparse.Namespace, commands: CommandCounter) -> dict[str, Any]:
    mongo: AsyncMongoClient[dict[str, Any]] | None = None
    if options.mode == "bulk":
        mongo = AsyncMongoClient(options.mongo_uri)
    receive_sizes: list[int] = []
    complete_ms: list[float] = []
    insert_ms: list[float] = []
    first = last = 0.0
    first_insert = 0.0
    settled = 0
    before: dict[str, int] = {}
    async with ServiceBusClient.from_connection_string(options.connection_string) as client:
        receiver = client.get_subscription_receiver(options.topic, options.subscription)
        async with receiver:
            if options.handshake:
                print("ready", flush=True)
                await asyncio.to_thread(sys.stdin.readline)
            before = dict(commands.by_name)
            cpu = time.process_time()
            empty = 0
            while empty < options.idle_receives:
                messages = await receiver.receive_messages(
                    max_message_count=options.batch, max_wait_time=options.wait
                )
                if not messages:
                    empty += 1
                    continue
                empty = 0
                receive_sizes.append(len(messages))
                if mongo is not None:
                    started = time.perf_counter()
                    await mongo[options.database]["raw_results"].insert_many(
                        [record(m) for m in messages], ordered=False
                    )
                    insert_ms.append(1000 * (time.perf_counter() - started))
                    first_insert = first_insert or time.time()
                for message in messages:
                    started = time.perf_counter()
                    await receiver.complete_message(message)
                    complete_ms.append(1000 * (time.perf_counter() - started))
                    last = time.time()
                    first = first or last
                    settled += 1
            cpu = time.process_time() - cpu
    if mongo is not None:
        await mongo.close()
    return {
        "mode": options.mode,
        "settled": settled,
        "cpu_s": cpu,
        "first": first,
        "last": last,
        "first_insert": first_insert,
        "receive_sizes": receive_sizes,
        "complete_ms": complete_ms,
        "insert_ms": insert_ms,
        "commands": {k: v - before.get(k, 0) for k, v in commands.by_name.items()},
    }


async def send_lines(options: argparse.Namespace, lines: list[bytes]) -> dict[str, Any]:
    """Send every line as one message body, in batches, on one sender."""
    started = time.time()
    sent = batches = 0
    client = ServiceBusClient.from_connection_string(options.connection_string)
    async with client, client.get_topic_sender(options.topic) as sender:
        batch = await sender.create_message_batch()
        for number, line in enumerate(lines):
            message = ServiceBusMessage(
                line,
                message_id=f"{options.id_prefix}-{number}",
                application_properties=ROUTE,  # type: ignore[arg-type]
            )
            try:
                batch.add_message(message)
            except MessageSizeExceededError:
                await sender.send_messages(batch)
                sent, batches = sent + len(batch), batches + 1
                batch = await sender.create_message_batch()
                batch.add_message(message)
        if len(batch):
            await sender.send_messages(batch)
            sent, batches = sent + len(batch), batches + 1
    return {"mode": "send", "sent": sent, "batches": batches, "seconds": time.time() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=["bare", "bulk", "send"])
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--subscription")
    parser.add_argument("--mongo-uri")
    parser.add_argument("--database", default="overhead")
    parser.add_argument("--batch", type=int, default=100, help="receive max_message_count")
    parser.add_argument("--wait", type=float, default=1.0, help="receive max_wait_time")
    parser.add_argument("--idle-receives", type=int, default=2, help="empty receives to exit")
    parser.add_argument("--handshake", action="store_true", help="print ready, wait for stdin")
    parser.add_argument("--file", help="JSONL file to send (mode send)")
    parser.add_argument("--id-prefix", default="raw", help="message id prefix (mode send)")
    options = parser.parse_args(argv)
    if options.mode == "send":
        with open(options.file, "rb") as file:
            lines = [line.rstrip(b"\n") for line in file if line.strip()]
        figures = asyncio.run(send_lines(options, lines))
    else:
        commands = CommandCounter()
        monitoring.register(commands)
        figures = asyncio.run(receive_loop(options, commands))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
