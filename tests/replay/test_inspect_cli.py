"""``docbus dlq list/show`` and ``docbus results history`` on records in a real store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from docbus import cli
from docbus.cli import dlq as dlq_cli
from docbus.cli import results as results_cli
from docbus.envelope import Envelope, message_id
from docbus.records import DeadLetterRecord
from docbus.store import Store
from tests.replay.helpers import command, command_streams, rows

NOW = datetime.now(UTC)

COMMANDS = {
    "dlq": "docbus.cli.dlq",
    "replay": "docbus.cli.replay",
    "results": "docbus.cli.results",
    "rollback": "docbus.cli.rollback",
}


async def dead_letters(store: Store) -> None:
    specs = [
        ("d1", "extract", "SchemaValidationFailed", "InvalidOutput", "missing field 'date'", 3),
        ("d2", "extract", "SchemaValidationFailed", "InvalidOutput", "missing field 'date'", 2),
        ("d3", "summarise", "RetriesExhausted", "RuntimeError", "upstream 503", 1),
        ("d4", None, "MaxDeliveryCountExceeded", None, None, 30 * 24),
    ]
    for doc, step, reason, error_type, error, hours_ago in specs:
        await store.record_dead_letter(
            DeadLetterRecord(
                message_id=message_id("b1", doc), subscription="alpha", topic="docs",
                handler="alpha" if error_type else None, handler_version="2", reason=reason,
                description=f"{error_type}: {error}" if error_type else "expired",
                error_type=error_type, error_message=error, step=step, batch_id="b1",
                doc_id=doc, generation=0,
                delivery_count=3, traceback="Traceback (most recent call last):\n" * 40 + "Boom",
                dead_lettered_at=NOW - timedelta(hours=hours_ago),
            )
        )  # fmt: skip
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=message_id("b2", "d9"), subscription="beta", topic="docs", handler="beta",
            reason="BadDocument", batch_id="b2", doc_id="d9", replayed_at=NOW,
        )
    )  # fmt: skip


async def test_dlq_list_filters_and_counts_by_group(mongo_env: Store) -> None:
    await dead_letters(mongo_env)
    code, out = await command(dlq_cli, "list", "--batch", "b1", "--since", "7d")
    assert code == 0, out
    assert "3 dead letter(s) · batch_id=b1" in out
    listed = [(r[0], r[1], r[2]) for r in rows(out)]
    assert listed == [
        ("alpha@b1:d1:0", "SchemaValidationFailed", "extract"),
        ("alpha@b1:d2:0", "SchemaValidationFailed", "extract"),
        ("alpha@b1:d3:0", "RetriesExhausted", "summarise"),
    ]

    code, out = await command(dlq_cli, "list", "--group-by", "reason")
    assert code == 0, out
    counts = {r[0]: (r[1], r[2], r[3]) for r in rows(out)}
    assert counts == {
        "SchemaValidationFailed": ("2", "0", "2"),  # count, replayed, documents
        "RetriesExhausted": ("1", "0", "1"),
        "MaxDeliveryCountExceeded": ("1", "0", "1"),
        "BadDocument": ("1", "1", "1"),
    }
    code, out = await command(dlq_cli, "list", "--group-by", "error", "--handler", "alpha")
    assert {r[0]: r[1] for r in rows(out)} == {
        "InvalidOutput: missing field 'date'": "2",
        "RuntimeError: upstream 503": "1",
    }
    code, out = await command(dlq_cli, "list", "--not-replayed", "--group-by", "batch")
    assert {r[0]: r[1] for r in rows(out)} == {"b1": "4"}
    code, out = await command(dlq_cli, "list", "--replayed")
    assert [r[0] for r in rows(out)] == ["beta@b2:d9:0"]


async def test_dlq_show_prints_the_record_the_document_and_its_llm_calls(mongo_env: Store) -> None:
    await dead_letters(mongo_env)
    long_text = "The quarterly report. " * 200
    await mongo_env.record_documents(
        [Envelope(doc_id="d1", batch_id="b1", topic="docs", content=long_text)]
    )
    await mongo_env.record_llm_call(
        {
            "batch_id": "b1", "doc_id": "d1", "handler": "alpha", "handler_version": "2",
            "step": "extract", "attempt": 1, "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "Extract the date from: " + long_text}],
            "response_text": '{"title": "Q3"}', "prompt_tokens": 900, "completion_tokens": 12,
            "cost_usd": 0.0002, "error_type": "SchemaValidationError",
            "error_message": "date: field required",
        }
    )  # fmt: skip
    code, out = await command(dlq_cli, "show", "alpha@b1:d1:0")
    assert code == 0, out
    facts = {r[0]: r[1] for r in rows(out) if len(r) == 2}
    assert facts["reason"] == "SchemaValidationFailed"
    assert facts["error"] == "InvalidOutput: missing field 'date'"
    assert facts["handler"] == "alpha (version 2)" and facts["step"] == "extract"
    assert facts["delivery count"] == "3"
    assert facts["doc / batch"] == "d1 / b1"
    assert f"({len(long_text)} characters)" in out
    assert "lines trimmed" in out and out.count("Traceback (most recent") == 25 - 1
    assert "gpt-4o-mini" in out and "SchemaValidationError" in out and '{"title": "Q3"}' in out
    assert long_text not in out  # trimmed

    code, out, err = await command_streams(dlq_cli, "show", "alpha@nothing")
    assert code == 1 and out == "" and "no dead letter" in err  # one line, on stderr


async def test_results_history_shows_every_version_and_which_is_current(
    mongo_env: Store,
) -> None:
    for generation, version in ((0, "1"), (1, "2")):
        await mongo_env.write_result(
            doc_id="d1", handler="alpha", handler_version=version, batch_id="b1",
            message_id=message_id("b1", "d1", generation), output={"v": version},
            generation=generation,
        )  # fmt: skip
    replayed = await mongo_env.result_versions(min_generation=1)
    await mongo_env.withdraw_results([r.id for r in replayed], "rollback-1")
    code, out = await command(results_cli, "history", "d1")
    assert code == 0, out
    assert [[*r[:5], r[6]] for r in rows(out)] == [
        ["alpha", "1", "0", "1", "b1", "current"],
        ["alpha", "2", "1", "2", "b1", "rolled back"],
    ]
    code, out = await command(results_cli, "history", "unknown")
    assert code == 1 and "no results" in out


async def test_the_commands_run_through_the_umbrella_cli(
    mongo_env: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, module in COMMANDS.items():
        assert cli.COMMANDS[name][0] == module
    await dead_letters(mongo_env)
    assert await asyncio.to_thread(cli.main, ["dlq", "list", "--group-by", "handler"]) == 0
    assert "5 dead letter(s) by handler" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, ["replay", "--batch", "b1", "--dry-run"]) == 0
    out = capsys.readouterr().out  # these records carry no body: nothing can be replayed
    assert "would send 0 message(s)" in out and "skipped: 4" in out
    assert await asyncio.to_thread(cli.main, ["results", "history", "d1"]) == 1
    capsys.readouterr()
    # b1 has dead letters only: nothing was published or written under it
    assert await asyncio.to_thread(cli.main, ["rollback", "--batch", "b1", "--yes"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "unknown batch 'b1'" in err
    assert await mongo_env.database["rollbacks"].count_documents({}) == 0


async def test_results_show_prints_the_current_output_or_any_version_safely(
    mongo_env: Store,
) -> None:
    hostile = "fine\x1b[2J\x1b]0;owned\x07 \u202eevil\u202c [bold]markup[/bold] \x9b31m"
    for generation, summary in ((0, "first"), (1, hostile)):
        await mongo_env.write_result(
            doc_id="d1", handler="alpha", handler_version="1", batch_id="b1",
            message_id=message_id("b1", "d1", generation), output={"summary": summary},
            generation=generation, run_id="b1" if generation == 0 else "replay-1",
            issued_at=NOW + timedelta(minutes=generation),
        )  # fmt: skip
    code, out = await command(results_cli, "show", "d1", "--handler", "alpha")
    assert code == 0, out
    assert "2 of 2 · current" in out and "replay-1" in out
    assert "\x1b" not in out and "\u202e" not in out and "\x9b" not in out and "\x07" not in out
    assert "fine\\u001b[2J\\u001b]0;owned\\u0007 \\u202eevil\\u202c [bold]markup[/bold]" in out
    code, out = await command(results_cli, "show", "d1", "--version", "1")  # one handler: found
    assert code == 0 and '"summary": "first"' in out and "1 of 2 · superseded" in out, out
    code, out, err = await command_streams(results_cli, "show", "d1", "--json")
    assert code == 0 and err == ""
    shown = json.loads(out)
    assert (shown["version"], shown["state"], shown["output"]["summary"]) == (2, "current", hostile)
    await mongo_env.write_result(
        doc_id="d1", handler="beta", handler_version="1", batch_id="b1",
        message_id=message_id("b1", "d1"), output={},
    )  # fmt: skip
    for argv, problem, exit_code in (
        (["d1"], "has results of 2 handlers (alpha, beta): name one with --handler", 2),
        (["d1", "--handler", "alpha", "--version", "7"], "has no version 7 (versions: 1, 2)", 1),
        (["nope", "--handler", "alpha"], "no results of handler 'alpha' for document 'nope'", 1),
    ):
        code, out, err = await command_streams(results_cli, "show", *argv)
        assert (code, out, err.count("\n")) == (exit_code, "", 1) and problem in err, err
