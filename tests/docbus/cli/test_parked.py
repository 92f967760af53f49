"""``docbus parked list`` and ``docbus parked resume`` on records in a real store."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from docbus import cli
from docbus.cli import parked as parked_cli
from docbus.store import ParkedMessage, Store

NOW = datetime.now(UTC)


@pytest.fixture
def mongo_env(store: Store, local_mongo, monkeypatch: pytest.MonkeyPatch) -> Store:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)
    return store


def _command(argv: Sequence[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    parked_cli.add_arguments(parser)
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None, force_terminal=False)
    return parked_cli.run(parser.parse_args(list(argv)), console=console), buffer.getvalue()


async def command(*argv: str) -> tuple[int, str]:
    return await asyncio.to_thread(_command, argv)  # it runs its own event loop


async def park_some(store: Store) -> None:
    specs = [
        ("b1", "d1", "extract", "SystemicFailure", "AuthenticationFailed: the key was refused", 1),
        ("b1", "d2", "extract", "SystemicFailure", "EndpointUnreachable: connection refused", 2),
        ("b1", "d3", "summarise", "OverBudget", "batch b1 spent $1.02 of its $1.00", 3),
        ("b2", "d9", "extract", "SystemicFailure", "AuthenticationFailed: the key was refused", 4),
    ]
    for batch, doc, handler, reason, why, seq in specs:
        record = ParkedMessage(
            topic="docs", subscription=handler, sequence_number=seq, reason=reason,
            description=why, batch_id=batch, doc_id=doc, handler=handler,
            parked_at=NOW - timedelta(minutes=10 - seq),
        )  # fmt: skip
        await store.park(record)
        await store.mark_parked_deferred(record)


async def test_parked_list_counts_per_handler_and_reason_and_says_why(mongo_env: Store) -> None:
    await park_some(mongo_env)
    code, out = await command("list", "--batch", "b1")
    assert code == 0, out
    assert "3 parked message(s) · batch=b1" in out
    assert "EndpointUnreachable: connection refused" in out  # the latest why of its group
    assert "b1/d3" in out and "b2/d9" not in out

    code, out = await command("list", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["total"] == 4
    groups = {(g["handler"], g["reason"]): g["count"] for g in data["groups"]}
    assert groups == {
        ("extract", "SystemicFailure"): 3,
        ("summarise", "OverBudget"): 1,
    }
    assert {p["doc_id"] for p in data["parked"]} == {"d1", "d2", "d3", "d9"}


async def test_parked_resume_marks_the_records_workers_fetch_back_next(mongo_env: Store) -> None:
    await park_some(mongo_env)
    code, out = await command("resume", "--batch", "b1", "--reason", "SystemicFailure", "--json")
    assert code == 0, out
    assert json.loads(out) == {"requested": 2}
    asked = {p.doc_id for p in await mongo_env.parked() if p.resume_requested_at is not None}
    assert asked == {"d1", "d2"}
    code, out = await command("resume", "--batch", "nope")
    assert code == 0 and "nothing to resume" in out


def test_parked_is_a_docbus_command() -> None:
    parser = cli.build_parser("parked")
    args = parser.parse_args(["list", "--batch", "b1", "--json"])
    assert args._module is parked_cli and args.batch == "b1" and args.json
