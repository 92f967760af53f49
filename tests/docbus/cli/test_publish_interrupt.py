"""Ctrl-C during ``docbus publish``: one line saying the batch is incomplete and how to finish
it, exit 130; ``--resume`` then sends exactly what is missing, so every document arrives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from azure.servicebus.aio import ServiceBusClient

from docbus.envelope import Envelope
from docbus.store import Store
from tests.docbus.cli.test_publish import TOPIC, good, publish, write_jsonl

__all__ = ["broker_env", "clean_env", "mongo_env"]
from tests.docbus.cli.test_publish import broker_env, clean_env, mongo_env

DOCBUS = Path(sys.executable).parent / "docbus"
DOCS = 8_000


def _interruptible() -> None:
    # a child of a backgrounded shell inherits SIGINT ignored; Ctrl-C must reach this one
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_ctrl_c_says_how_to_finish_and_resume_sends_exactly_the_rest(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(tmp_path / "big.jsonl", [good(f"n{i}") for i in range(DOCS)])
    argv = [str(source), "--topic", TOPIC, "--id-field", "id", "--batch-id", "big"]
    process = subprocess.Popen(  # noqa: ASYNC220 - it runs while this test watches Mongo
        [str(DOCBUS), "publish", *argv], env=dict(os.environ), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible,
    )  # fmt: skip
    try:
        documents = store.database["documents"]
        while not await documents.count_documents({"batch_id": "big"}, limit=1):
            assert process.poll() is None, process.communicate()
            await asyncio.sleep(0.05)  # polling an observable condition: the first chunk recorded
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:  # (a hang must not outlive the test)
            process.kill()
    assert process.returncode == 130, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "batch big is incomplete" in lines[0] and "--batch-id big --resume" in lines[0]
    record = await store.get_batch("big")
    assert record is not None and record.status == "failed"
    sent_before = record.counts.get("sent", 0)
    assert sent_before < DOCS

    code, shown = await publish(*argv, "--resume")
    assert code == 0, shown
    assert await arrived(broker_env, "entities") == {f"n{i}" for i in range(DOCS)}


async def arrived(connection_string: str, subscription: str) -> set[str]:
    """The documents on ``subscription``, received until none comes for 2 s."""
    seen: set[str] = set()
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_subscription_receiver(TOPIC, subscription) as receiver:
            while batch := await receiver.receive_messages(max_message_count=500, max_wait_time=2):
                for message in batch:
                    seen.add(Envelope.from_bytes(b"".join(message.body)).doc_id)
                    await receiver.complete_message(message)
    return seen
