"""``docbus audit export``: a batch's LLM prompt/response pairs, as JSONL or CSV, from audit rows
written through the real store."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from docbus.cli import audit
from docbus.cli.audit import RowWriter, export_calls
from docbus.local.mongo import LocalMongo
from docbus.ops.audit import EXPORT_FIELDS, ExportFilter
from docbus.records import LLMCallRecord
from docbus.store import Store

BATCH = "b-audit"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
PROMPT = [
    {"role": "system", "content": "Extract the invoice."},
    {"role": "user", "content": 'Invoice "INV-7", total 12,450.00 EUR;\nsecond line'},
]


def row(doc: str, step: str | None, seconds: int, **fields: Any) -> LLMCallRecord:
    values: dict[str, Any] = {
        "batch_id": BATCH, "doc_id": doc, "handler": "invoices", "handler_version": "2",
        "step": step, "attempt": 1, "model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024",
        "kind": "extract", "mode": "json_schema", "messages": PROMPT,
        "response_text": '{"number": "INV-7", "total": 12450.0}',
        "parsed": {"number": "INV-7", "total": 12450.0}, "finish_reason": "stop",
        "prompt_tokens": 120, "completion_tokens": 18, "cost_usd": 0.0000288,
        "latency_s": 0.25, "request_id": f"req-{doc}-{seconds}",
        "created_at": T0 + timedelta(seconds=seconds),
    }  # fmt: skip
    values.update(fields)
    return LLMCallRecord(**values)


@pytest.fixture
async def calls(store: Store) -> list[LLMCallRecord]:
    """Five rows of the batch (written out of time order) and one of another batch."""
    rows = [
        row("d2", "summarise", 4),
        row("d1", "classify", 0),
        row("d1", "extract", 1, reask=0, error_type="SchemaValidationError",
            error_message="total: Input should be a valid number", parsed=None,
            response_text='{"number": "INV-7", "total": "lots"}'),
        row("d1", "extract", 2, reask=1, category="reask"),
        row("d2", "classify", 3, handler="other", retry=1, category="retry", attempt=2,
            error_type="RateLimitError", error_message="429", response_text=None, parsed=None,
            prompt_tokens=0, completion_tokens=0, cost_usd=0.0),
    ]  # fmt: skip
    for call in rows:
        await store.record_llm_call(call)
    await store.record_llm_call(row("d9", "classify", 5, batch_id="another"))
    return sorted(await store.llm_calls(BATCH), key=lambda c: c.created_at)


async def exported(store: Store, fmt: str, **selection: Any) -> str:
    stream = io.StringIO()
    await export_calls(store, ExportFilter(BATCH, **selection), RowWriter(stream, fmt))  # type: ignore[arg-type]
    return stream.getvalue()


async def test_jsonl_has_one_complete_line_per_call_oldest_first(
    store: Store, calls: list[LLMCallRecord]
) -> None:
    lines = [json.loads(line) for line in (await exported(store, "jsonl")).splitlines()]
    assert [(r["doc_id"], r["step"]) for r in lines] == [
        ("d1", "classify"), ("d1", "extract"), ("d1", "extract"), ("d2", "classify"),
        ("d2", "summarise"),
    ]  # fmt: skip
    assert all(list(r) == list(EXPORT_FIELDS) for r in lines)
    first = lines[0]
    assert first["messages"] == PROMPT  # the prompt as sent, structured
    assert first["parsed"] == {"number": "INV-7", "total": 12450.0}
    assert first["response_text"] == '{"number": "INV-7", "total": 12450.0}'
    assert (first["prompt_tokens"], first["completion_tokens"]) == (120, 18)
    assert (first["cost_usd"], first["latency_s"]) == (0.0000288, 0.25)
    assert (first["model"], first["handler_version"], first["id"]) == (
        "gpt-4o-mini", "2", calls[0].id
    )  # fmt: skip
    failed = lines[1]
    assert failed["error_type"] == "SchemaValidationError" and failed["parsed"] is None
    assert "valid number" in failed["error_message"]
    assert (lines[2]["reask"], lines[2]["category"]) == (1, "reask")
    assert (lines[3]["retry"], lines[3]["attempt"], lines[3]["category"]) == (1, 2, "retry")


async def test_filters_by_step_handler_and_document(
    store: Store, calls: list[LLMCallRecord]
) -> None:
    def ids(text: str) -> list[tuple[str, str]]:
        return [(r["doc_id"], r["step"]) for r in map(json.loads, text.splitlines())]

    assert ids(await exported(store, "jsonl", step="classify")) == [
        ("d1", "classify"),
        ("d2", "classify"),
    ]
    assert ids(await exported(store, "jsonl", handler="other")) == [("d2", "classify")]
    assert ids(await exported(store, "jsonl", doc_id="d2", step="summarise")) == [
        ("d2", "summarise")
    ]
    assert await exported(store, "jsonl", step="nope") == ""


async def test_csv_round_trips_messages_and_parsed_output_as_json_cells(
    store: Store, calls: list[LLMCallRecord]
) -> None:
    text = await exported(store, "csv")
    records = list(csv.DictReader(io.StringIO(text)))
    assert len(records) == 5
    assert tuple(records[0]) == EXPORT_FIELDS
    first = records[0]
    assert json.loads(first["messages"]) == PROMPT  # quotes, commas and newlines survive
    assert json.loads(first["parsed"]) == {"number": "INV-7", "total": 12450.0}
    assert (first["prompt_tokens"], first["cost_usd"]) == ("120", "2.88e-05")
    refused = records[3]
    assert (refused["error_type"], refused["response_text"], refused["parsed"]) == (
        "RateLimitError", "", ""
    )  # fmt: skip


async def test_each_row_is_written_before_the_next_is_read(
    store: Store, calls: list[LLMCallRecord]
) -> None:
    stream = io.StringIO()
    written_before: list[int] = []

    class Watched:
        """The store, noting how much was written whenever the cursor hands over a row."""

        async def iter_llm_calls(self, *args: Any, **kwargs: Any) -> AsyncIterator[LLMCallRecord]:
            async for call in store.iter_llm_calls(*args, **kwargs):
                written_before.append(len(stream.getvalue().splitlines()))
                yield call

    count = await export_calls(Watched(), ExportFilter(BATCH), RowWriter(stream, "jsonl"))  # type: ignore[arg-type]
    assert count == 5
    assert written_before == [0, 1, 2, 3, 4]  # streamed, never gathered first


# -- the command --------------------------------------------------------------------------------


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, store: Store, local_mongo: LocalMongo) -> None:
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)


def command(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    audit.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = audit.run(parser.parse_args(list(argv)), stdout=out, errors=Console(file=err, width=200))
    return code, out.getvalue(), err.getvalue()


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.mark.usefixtures("store_env", "calls")
async def test_export_to_stdout_as_jsonl_by_default() -> None:
    code, out, err = await asyncio.to_thread(
        command, "export", "--batch", BATCH, "--step", "extract"
    )
    assert code == 0, err
    assert [json.loads(line)["reask"] for line in out.splitlines()] == [0, 1]
    assert "exported 2 LLM call(s) as jsonl to stdout" in err


@pytest.mark.usefixtures("store_env", "calls")
async def test_output_dash_is_stdout_not_a_file_named_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = await asyncio.to_thread(
        command, "export", "--batch", BATCH, "--step", "extract", "-o", "-"
    )
    assert code == 0, err
    assert [json.loads(line)["reask"] for line in out.splitlines()] == [0, 1]
    assert "exported 2 LLM call(s) as jsonl to stdout" in err
    assert await asyncio.to_thread(names, tmp_path) == []


@pytest.mark.usefixtures("store_env", "calls")
async def test_export_to_a_file_takes_the_format_from_its_suffix(tmp_path: Path) -> None:
    target = tmp_path / "review.csv"
    code, out, err = await asyncio.to_thread(
        command, "export", "--batch", BATCH, "--output", str(target)
    )
    assert code == 0, err
    assert out == ""
    assert await asyncio.to_thread(names, tmp_path) == ["review.csv"]  # no .partial left
    text = await asyncio.to_thread(target.read_text, encoding="utf-8")
    assert len(list(csv.DictReader(io.StringIO(text)))) == 5


@pytest.mark.usefixtures("store_env", "calls")
async def test_nothing_matching_is_an_error_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "review.jsonl"
    code, out, _ = await asyncio.to_thread(
        command, "export", "--batch", "missing", "--output", str(target)
    )
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert err == "docbus audit export: error: no batch 'missing' in the store\n"
    assert await asyncio.to_thread(names, tmp_path) == []
