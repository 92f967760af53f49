"""A replay keeps its batch's LLM mode unless ``--llm-mode`` is given, and refuses batch mode
for an ordered handler — ``docbus replay`` against the emulator and SecantusDB."""

from __future__ import annotations

import json

from docbus.cli import replay as replay_cli
from publisher import publish_documents
from tests.replay.conftest import Stack
from tests.replay.helpers import command, command_streams, pending_on_broker


async def publish_in(stack: Stack, batch_id: str, llm_mode: str | None) -> None:
    report = await publish_documents(
        [{"doc_id": "d1", "text": "one"}, {"doc_id": "d2", "text": "two"}],
        topic="docs", batch_id=batch_id, settings=stack.settings, store=stack.store,
        llm_mode=llm_mode,  # type: ignore[arg-type]
    )  # fmt: skip
    assert report.ok and report.llm_mode == llm_mode


async def test_a_batch_replay_keeps_the_batch_mode_unless_told(stack: Stack) -> None:
    await publish_in(stack, "b1", "batch")
    code, out = await command(replay_cli, "--batch", "b1", "--only", "all", "--dry-run")
    assert code == 0 and "LLM mode: batch" in out, out
    code, out, err = await command_streams(
        replay_cli, "--batch", "b1", "--only", "all", "--dry-run", "--json"
    )
    assert code == 0 and json.loads(out)["llm_modes"] == {"b1": "batch"}, err
    # A real replay without --llm-mode leaves the record alone ...
    code, out = await command(replay_cli, "--batch", "b1", "--only", "all", "--yes")
    assert code == 0 and "LLM mode: batch" in out, out
    record = await stack.store.get_batch("b1")
    assert record is not None and record.llm_mode == "batch"
    # ... one with --llm-mode sets it before the first message goes, and says so in its record.
    code, out, err = await command_streams(
        replay_cli, "--batch", "b1", "--only", "all", "--yes", "--llm-mode", "live", "--json"
    )
    assert code == 0, err
    sent = json.loads(out)
    assert sent["llm_modes"] == {"b1": "live"}
    record = await stack.store.get_batch("b1")
    assert record is not None and record.llm_mode == "live"
    replay = await stack.store.get_replay(sent["replay"]["id"])
    assert replay is not None and replay.llm_mode == "live" and replay.count == 2
    earlier = [r for r in await stack.store.replays_of_batch("b1") if r.id != replay.id]
    assert [r.llm_mode for r in earlier] == [None]
    assert (await pending_on_broker(stack)) == {"alpha": 6, "beta": 6}  # 2 published + 2 x 2


async def test_batch_mode_is_refused_for_an_ordered_handler_and_nothing_is_sent(
    stack: Stack,
) -> None:
    await publish_in(stack, "b2", None)
    code, out, err = await command_streams(
        replay_cli, "--batch", "b2", "--only", "all", "--yes", "--llm-mode", "batch",
        "--handlers", "tests.publisher.ordered_handlers",
    )  # fmt: skip
    assert code == 2, out + err
    assert "handler 'in_order' is ordered" in err and "--llm-mode live" in err
    assert err.strip().count("\n") == 0
    record = await stack.store.get_batch("b2")
    assert record is not None and record.llm_mode is None
    assert await stack.store.replays_of_batch("b2") == []


async def test_a_mode_cannot_be_kept_for_a_batch_without_a_record(stack: Stack) -> None:
    from docbus.envelope import Envelope

    await stack.store.record_documents(
        [Envelope(doc_id="d1", batch_id="lib", topic="docs", content="x")]
    )
    code, out, err = await command_streams(
        replay_cli, "--batch", "lib", "--only", "all", "--yes", "--llm-mode", "batch"
    )
    assert code == 2 and "no record to keep --llm-mode on" in err, out + err
