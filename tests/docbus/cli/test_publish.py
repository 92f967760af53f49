"""``docbus publish`` end to end: real Service Bus SDK against the emulator, real SecantusDB.

The command runs in a worker thread (it owns its event loop, as from a shell), configured only
through ``DOCBUS_*`` environment variables; the test then receives what arrived on both
subscriptions with the SDK and reads what was recorded through the store.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient
from rich.console import Console

from docbus.cli import publish as cli
from docbus.envelope import Envelope
from docbus.local.mongo import LocalMongo
from docbus.store import Store

TOPIC = "documents"
SUBSCRIPTIONS = ("entities", "supplier-risk")


def good(doc_id: str, supplier: str = "Acme Castings") -> dict[str, Any]:
    return {
        "id": doc_id,
        "text": f"{supplier} reports a fire at its plant; deliveries slip by two weeks ({doc_id}).",
        "supplier": supplier,
        "country": "DE",
    }


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def publish_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_publish(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.run(publish_args(*argv), console=Console(file=out, width=250))
    return code, out.getvalue()


async def publish(*argv: str) -> tuple[int, str]:
    return await asyncio.to_thread(run_publish, *argv)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DOCBUS_") or name in ("MONGODB_URI",):
            monkeypatch.delenv(name)


@pytest.fixture
def mongo_env(monkeypatch: pytest.MonkeyPatch, local_mongo: LocalMongo, store: Store) -> None:
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)


@pytest.fixture
def broker_env(
    monkeypatch: pytest.MonkeyPatch, mongo_env: None, servicebus_connection_string: str
) -> str:
    monkeypatch.setenv("DOCBUS_SERVICEBUS__CONNECTION_STRING", servicebus_connection_string)
    monkeypatch.setenv("DOCBUS_PUBLISHER__SEND_CONCURRENCY", "1")  # one sender link: faster
    return servicebus_connection_string


async def receive_all(connection_string: str, subscription: str, expected: int) -> list[Envelope]:
    """Receive (and complete) until ``expected`` messages arrived, or 10 s passed."""
    got: list[Envelope] = []
    deadline = time.monotonic() + 10
    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_subscription_receiver(TOPIC, subscription) as receiver:
            while len(got) < expected and time.monotonic() < deadline:
                batch = await receiver.receive_messages(
                    max_message_count=expected - len(got), max_wait_time=1
                )
                for message in batch:
                    got.append(Envelope.from_bytes(b"".join(message.body)))
                    await receiver.complete_message(message)
    return got


async def waiting(connection_string: str) -> dict[str, int]:
    """How many messages wait on each subscription (peek: nothing is locked or removed)."""
    async with ServiceBusClient.from_connection_string(connection_string) as client:

        async def peek(subscription: str) -> int:
            async with client.get_subscription_receiver(TOPIC, subscription) as receiver:
                return len(await receiver.peek_messages(max_message_count=100))

        counts = await asyncio.gather(*(peek(s) for s in SUBSCRIPTIONS))
    return dict(zip(SUBSCRIPTIONS, counts, strict=True))


# -- sending -----------------------------------------------------------------------------------


async def test_a_jsonl_batch_reaches_both_subscriptions_and_is_recorded(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), good("n2"), good("n3", "Borealis")])
    code, out = await publish(
        str(source), "--topic", TOPIC, "--batch-id", "b-cli", "--id-field", "id",
        "--budget", "2.50",
    )  # fmt: skip
    assert code == 0, out
    for subscription in SUBSCRIPTIONS:
        envelopes = await receive_all(broker_env, subscription, 3)
        assert sorted(e.doc_id for e in envelopes) == ["n1", "n2", "n3"]
        assert {e.batch_id for e in envelopes} == {"b-cli"}
        by_id = {e.doc_id: e for e in envelopes}
        assert by_id["n3"].metadata["supplier"] == "Borealis"
        assert by_id["n3"].source is not None and by_id["n3"].source.line == 3
    record = await store.get_batch("b-cli")
    assert record is not None
    assert (record.topic, record.status) == (TOPIC, "published")
    assert record.counts["sent"] == 3 and record.counts["skipped"] == 0
    assert record.source == [str(source)]
    documents = [e.doc_id async for e in store.iter_documents("b-cli")]
    assert documents == ["n1", "n2", "n3"]
    assert record.budget_usd == 2.5
    assert "Batch b-cli → documents" in out
    assert "publishing b-cli" in out and "3/3" in out  # the progress bar, sized by the scan


async def test_skip_invalid_sends_the_rest_lists_every_skipped_input_and_exits_1(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(
        tmp_path / "mixed.jsonl",
        [good("n1"), "{not json", {"id": "n2", "body": "x"}, good("n3"), good("n1")],
    )
    code, out = await publish(
        str(source), "--topic", TOPIC, "--batch-id", "b-skip", "--id-field", "id",
        "--skip-invalid",
    )  # fmt: skip
    assert code == 1
    assert f"{source}:2" in out and "invalid JSON" in out
    assert f"{source}:3" in out and "missing text field 'text'" in out
    assert f"{source}:5" in out and "duplicate id 'n1'" in out
    assert "Skipped (invalid input): 3" in out
    envelopes = await receive_all(broker_env, "entities", 2)
    assert sorted(e.doc_id for e in envelopes) == ["n1", "n3"]
    record = await store.get_batch("b-skip")
    assert record is not None
    assert (record.counts["sent"], record.counts["skipped"]) == (2, 3)


async def test_an_unknown_topic_is_a_clear_error_and_records_nothing(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    code, out = await publish(str(source), "--topic", "no-such-topic", "--batch-id", "b-x")
    assert code == 1
    assert "cannot publish to topic 'no-such-topic'" in out
    assert await store.get_batch("b-x") is None


# -- refusing ----------------------------------------------------------------------------------

BAD_INPUTS: dict[str, tuple[list[dict[str, Any] | str], int, str]] = {
    # case: (lines, the bad line, the reason shown)
    "invalid-json": ([good("n1"), '{"id": "n2", "text": "unterminated'], 2, "invalid JSON"),
    "missing-text": ([{"id": "n1", "body": "words"}, good("n2")], 1, "missing text field 'text'"),
    "empty-text": ([good("n1"), {"id": "n2", "text": "   "}], 2, "empty document"),
    "duplicate-id": ([good("n1"), good("n2"), good("n1")], 3, "duplicate id 'n1'"),
    "missing-id": ([good("n1"), {"text": "no id here"}], 2, "missing id field 'id'"),
    "text-not-a-string": ([{"id": "n1", "text": 42}], 1, "is a JSON number, not a string"),
    "lone-surrogate": ([good("n1"), '{"id": "n2", "text": "bad \\ud800"}'], 2, "lone surrogate"),
    "deep-json": (
        [good("n1"), '{"id": "n2", "text": "x", "m": ' + "[" * 100_000 + "]" * 100_000 + "}"],
        2,
        "nested too deeply",
    ),
    "int-over-64-bits": ([good("n1"), {"id": "n2", "text": "x", "n": 2**64}], 2, "64-bit"),
    "nul-in-key": ([good("n1"), {"id": "n2", "text": "x", "a\x00b": 1}], 2, "NUL character"),
    "nan": ([good("n1"), {"id": "n2", "text": "x", "score": float("nan")}], 2, "not a finite"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_each_bad_input_is_reported_with_file_and_line_and_nothing_is_sent(
    case: str, tmp_path: Path, broker_env: str, store: Store
) -> None:
    lines, line, reason = BAD_INPUTS[case]
    source = write_jsonl(tmp_path / f"{case}.jsonl", lines)
    code, out = await publish(str(source), "--topic", TOPIC, "--id-field", "id", "--batch-id", "b")
    assert code == 1
    assert f"{source}:{line}" in out and reason in out
    assert "nothing was sent" in out
    if len(lines) > 1:  # a valid document is left: --skip-invalid would send it
        assert "pass --skip-invalid to send the other" in out
    else:  # nothing valid: --skip-invalid would send nothing
        assert "--skip-invalid" not in out and "no valid documents to send" in out
    assert await store.list_batches() == []
    assert await waiting(broker_env) == {"entities": 0, "supplier-risk": 0}


async def test_skip_invalid_sends_the_rest_when_some_values_mongo_cannot_store(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(
        tmp_path / "mixed.jsonl",
        [good("n1"), {"id": "n2", "text": "x", "a\x00b": 1}, {"id": "n3", "text": "x", "n": 2**64},
         good("n4")],
    )  # fmt: skip
    code, out = await publish(
        str(source), "--topic", TOPIC, "--batch-id", "b-skip", "--id-field", "id",
        "--skip-invalid",
    )  # fmt: skip
    assert code == 1
    assert f"{source}:2" in out and f"{source}:3" in out
    assert sorted(e.doc_id for e in await receive_all(broker_env, "entities", 2)) == ["n1", "n4"]
    assert [e.doc_id async for e in store.iter_documents("b-skip")] == ["n1", "n4"]


@pytest.mark.usefixtures("mongo_env")
async def test_files_that_cannot_be_read_are_reported(tmp_path: Path, store: Store) -> None:
    (tmp_path / "latin1.txt").write_bytes("Caf\xe9 supplier news".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("A readable news item about a supplier.", encoding="utf-8")
    missing = tmp_path / "missing.jsonl"
    pattern = tmp_path / "news [bold].jsonl"  # a glob that matches nothing; not rich markup
    code, out = await publish(str(tmp_path / "latin1.txt"), str(missing), str(pattern),
                              str(tmp_path / "ok.txt"), "--topic", TOPIC)  # fmt: skip
    assert code == 1
    assert f"{tmp_path / 'latin1.txt'}:1" in out and "not valid UTF-8" in out
    assert f"{missing}" in out and "no such file or directory" in out
    assert f"{pattern}" in out and "no files match this pattern" in out
    assert "Invalid input: 3" in out


# -- dry run and configuration -----------------------------------------------------------------


async def test_dry_run_shows_what_would_be_sent_and_sends_nothing(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), good("n2")])
    code, out = await publish(
        str(source), "--topic", TOPIC, "--id-field", "id", "--batch-id", "b-dry", "--dry-run"
    )
    assert code == 0, out
    assert "Would send to documents as batch b-dry" in out
    assert f"{source}:1" in out and f"{source}:2" in out
    assert "(dry run)" in out
    assert await store.list_batches() == []
    assert await waiting(broker_env) == {"entities": 0, "supplier-risk": 0}


def test_the_shipped_samples_hold_seventy_documents_and_four_distinct_defects() -> None:
    samples = str(files("docbus") / "samples" / "supplier_news.jsonl")
    code, out = run_publish(samples, "--topic", TOPIC, "--id-field", "id", "--dry-run",
                            "--skip-invalid")  # fmt: skip
    assert code == 1  # something was skipped
    assert "Skipped (invalid input): 4" in out
    for line, reason in (
        (12, "invalid JSON"),
        (27, "missing text field 'text'"),
        (45, "empty document"),
        (60, "duplicate id 'sn-005'"),
    ):
        assert f"supplier_news.jsonl:{line}" in out and reason in out
    assert "... and 50 more" in out  # 20 listed + 50 = 70 would be sent
    records = [
        json.loads(line)
        for number, line in enumerate(Path(samples).read_text("utf-8").splitlines(), start=1)
        if number not in (12, 27, 45, 60)
    ]
    assert len(records) == 70
    assert all(80 <= len(r["text"].split()) <= 250 for r in records)
    assert all(r["supplier"] and len(r["country"]) == 2 for r in records)
    assert len({r["country"] for r in records}) >= 30


def test_a_missing_broker_names_the_variable_and_docbus_up(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    code, out = run_publish(str(source), "--topic", TOPIC)
    assert code == 2
    assert "DOCBUS_SERVICEBUS__CONNECTION_STRING" in out and "docbus up" in out


def test_an_unreachable_store_names_the_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servicebus_connection_string: str
) -> None:
    monkeypatch.setenv("DOCBUS_SERVICEBUS__CONNECTION_STRING", servicebus_connection_string)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", "mongodb://127.0.0.1:9/")
    monkeypatch.setenv("DOCBUS_MONGODB__TIMEOUT", "0.3")
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    code, out = run_publish(str(source), "--topic", TOPIC)
    assert code == 3  # unavailable: try again later
    assert "cannot reach MongoDB" in out and "DOCBUS_MONGODB__URI" in out
    assert len(out.strip().splitlines()) == 1


def test_a_bad_batch_id_is_refused_before_reading_anything(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # a usage error, exit 2 (see test_bad_input.py)
        publish_args(str(tmp_path / "nothing.jsonl"), "--topic", TOPIC, "--batch-id", "a:b")


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        publish_args("x.jsonl", "--topic", TOPIC, "--budget", "0")
