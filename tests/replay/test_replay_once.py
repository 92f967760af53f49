"""Replay safety: a dry run sends nothing, a dead letter is replayed once unless --again."""

from __future__ import annotations

import io

from azure.servicebus.aio import ServiceBusClient

from docbus.cli import replay as replay_cli
from docbus.envelope import Envelope
from docbus.records import DeadLetterRecord
from docbus.store import DeadLetterFilter
from tests.replay.conftest import Stack
from tests.replay.helpers import command, command_streams, pending_on_broker, rows


async def dead_letter(stack: Stack, doc_id: str, subscription: str) -> str:
    envelope = Envelope(doc_id=doc_id, batch_id="b3", topic="docs", content=f"text {doc_id}")
    await stack.store.record_documents([envelope])
    record = DeadLetterRecord(
        message_id=envelope.message_id, subscription=subscription, topic="docs",
        handler=subscription, reason="RetriesExhausted", batch_id="b3", doc_id=doc_id,
        generation=0, body=envelope.to_bytes(),
    )  # fmt: skip
    await stack.store.record_dead_letter(record)
    return record.id


async def test_a_dead_letter_is_replayed_once_and_a_dry_run_sends_nothing(stack: Stack) -> None:
    first = await dead_letter(stack, "d1", "alpha")
    second = await dead_letter(stack, "d2", "beta")
    await stack.store.record_dead_letter(
        DeadLetterRecord(
            message_id="raw-1", subscription="alpha", reason="InvalidEnvelope", body=b"{"
        )
    )

    code, out = await command(replay_cli, "--dry-run")
    assert code == 0, out
    planned = [(r[1], r[2], r[3], r[4]) for r in rows(out) if r[0].isdigit()]
    assert planned == [(first, "1", "alpha", "b3:d1:1"), (second, "1", "beta", "b3:d2:1")]
    assert any(r[0] == "alpha@raw-1" and "not a valid envelope" in r[1] for r in rows(out))
    assert "nothing was sent" in out
    assert await pending_on_broker(stack) == {"alpha": 0, "beta": 0}
    assert all(r.replayed_at is None for r in await stack.store.dead_letters())

    code, out = await command(replay_cli, stdin=io.StringIO(""))  # no --yes, no terminal
    assert code == 2 and "refusing to send without confirmation" in out

    code, out = await command(replay_cli, "--yes")
    assert code == 0 and "replayed: 2 message(s)" in out, out
    code, out = await command(replay_cli, "--yes")
    assert code == 0 and "nothing to replay" in out, out
    assert "2 matching dead letter(s) were replayed already" in out
    code, out = await command(replay_cli, "--again", "--subscription", "alpha", "--yes")
    assert code == 0 and "replayed: 1 message(s)" in out, out

    assert await pending_on_broker(stack) == {"alpha": 2, "beta": 1}
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        async with client.get_subscription_receiver("docs", "alpha") as receiver:
            sent = await receiver.peek_messages(10, sequence_number=1)
    assert [m.message_id for m in sent] == ["b3:d1:1", "b3:d1:2"]
    replayed = Envelope.from_bytes(b"".join(sent[1].body))
    assert (replayed.replay_of, replayed.target_subscription) == ("b3:d1:0", "alpha")
    assert replayed.content == "text d1" and replayed.replayed_at is not None
    assert await stack.store.database["replays"].count_documents({}) == 2


async def test_a_replay_that_cannot_send_is_recorded_as_failed_with_its_error(
    stack: Stack,
) -> None:
    envelope = Envelope(doc_id="d1", batch_id="b4", topic="gone", content="text d1")
    await stack.store.record_dead_letter(
        DeadLetterRecord(
            message_id=envelope.message_id, subscription="alpha", topic="gone", handler="alpha",
            reason="RetriesExhausted", batch_id="b4", doc_id="d1", body=envelope.to_bytes(),
        )
    )  # fmt: skip
    code, out, err = await command_streams(replay_cli, "--yes")
    assert code == 2, out  # the runner's code for an entity missing on the broker
    (line,) = [line for line in err.splitlines() if "error" in line]  # (and the progress bar)
    assert line.startswith("docbus replay: error:") and "gone" in line
    (record,) = [r async for r in stack.store.database["replays"].find()]
    assert (record["status"], record["count"]) == ("failed", 0)
    assert "gone" in record["error"]
    assert record["finished_at"] is not None
    # its claim was released: the dead letter can be replayed once the topic exists
    (dead,) = await stack.store.dead_letters(DeadLetterFilter(batch_id="b4"))
    assert dead.replayed_at is None
