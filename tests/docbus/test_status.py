"""``docbus status``: per-batch and per-handler progress read from records in a real store."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from docbus import status as status_cli
from docbus.envelope import Envelope, message_id
from docbus.mongo_local import LocalMongo
from docbus.records import BatchCounts, BatchRecord, DeadLetterRecord, HandlerCounts
from docbus.status import (
    BatchStatus,
    collect_status,
    render_status,
    retrying_counts,
    throughput,
    watch,
)
from docbus.store import Store

DOCS = ["d1", "d2", "d3", "d4", "d5"]


async def publish(store: Store, batch_id: str, docs: list[str] = DOCS) -> None:
    await store.record_batch(batch_id, topic="documents", source=["news.jsonl"])
    await store.record_documents(
        Envelope(doc_id=doc, batch_id=batch_id, topic="documents", content=f"text of {doc}")
        for doc in docs
    )
    await store.update_batch(batch_id, status="published", counts={"documents": len(docs)})


async def result(store: Store, batch_id: str, doc: str, handler: str) -> None:
    await store.write_result(
        doc_id=doc,
        handler=handler,
        handler_version="1",
        batch_id=batch_id,
        message_id=message_id(batch_id, doc),
        output={"ok": True},
    )


async def dead_letter(store: Store, batch_id: str, doc: str, handler: str) -> None:
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=message_id(batch_id, doc),
            subscription=handler,
            reason="SchemaValidationFailed",
            handler=handler,
            batch_id=batch_id,
            doc_id=doc,
        )
    )


async def llm_call(store: Store, batch_id: str, doc: str, handler: str, attempt: int) -> None:
    await store.record_llm_call(
        {"batch_id": batch_id, "doc_id": doc, "handler": handler, "attempt": attempt}
    )


def rows(text: str) -> dict[str, list[str]]:
    """Table rows by their first cell."""
    found = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            found[cells[0]] = cells[1:]
    return found


def rendered(statuses: list[BatchStatus], width: int = 200) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render_status(statuses))
    return console.export_text()


@pytest.fixture
async def mixed_batch(store: Store) -> str:
    """Two handlers part way through: done, dead-lettered, retrying and untouched documents."""
    batch = "b-mixed"
    await publish(store, batch)
    for doc in ("d1", "d2", "d3"):
        await result(store, batch, doc, "entities")
    await dead_letter(store, batch, "d4", "entities")
    await llm_call(store, batch, "d5", "entities", attempt=1)
    await llm_call(store, batch, "d5", "entities", attempt=2)  # failed once, trying again
    for doc in ("d1", "d2", "d4"):
        await result(store, batch, doc, "supplier_risk")
    await llm_call(store, batch, "d3", "supplier_risk", attempt=3)
    await llm_call(store, batch, "d1", "supplier_risk", attempt=2)  # retried, then done
    await store.add_batch_usage(batch, usd=0.0100, prompt_tokens=800, completion_tokens=200)
    await store.add_batch_usage(
        batch, usd=0.0023, prompt_tokens=200, completion_tokens=34, category="retry"
    )
    await store.set_batch_budget(batch, 0.01)
    await store.set_batch_over_budget(batch, True)  # spent 0.0123 of 0.01
    return batch


async def test_counts_per_batch_and_handler_add_up_with_retrying_from_llm_attempts(
    store: Store, mixed_batch: str
) -> None:
    (status,) = await collect_status(store, [mixed_batch])
    assert status.counts.published == 5
    assert (status.counts.done, status.counts.dead_lettered) == (2, 1)
    # d5 retries in entities and d3 in supplier_risk; d1's retry already succeeded.
    assert status.retrying == 2
    assert status.handler_retrying == {"entities": 1, "supplier_risk": 1}
    assert status.pending() == 0
    assert status.record.budget_usd == 0.01
    assert not status.complete

    table = rows(rendered([status]))
    # published, done, retrying, dead-lettered, pending, progress, docs/s
    assert table["all handlers"][:5] == ["5", "2", "2", "1", "0"]
    assert table["entities"][:5] == ["5", "3", "1", "1", "0"]
    assert table["supplier_risk"][:5] == ["5", "3", "1", "0", "1"]
    assert table["entities"][5].endswith("80%")  # 3 done + 1 dead of 5
    assert table["supplier_risk"][5].endswith("60%")


async def test_the_table_names_the_batch_topic_cost_budget_and_over_budget_flag(
    store: Store, mixed_batch: str
) -> None:
    text = rendered(await collect_status(store, [mixed_batch]))
    assert "batch b-mixed → documents" in text
    assert "cost $0.0123 (2 LLM calls, 1234 tokens; retries $0.0023)" in text
    assert "budget $0.01" in text
    assert "OVER BUDGET" in text
    assert "published" in text and "retrying" in text and "dead-lettered" in text


async def test_a_handler_known_only_from_its_llm_calls_keeps_documents_pending(
    store: Store,
) -> None:
    await publish(store, "b-early", ["d1", "d2"])
    await result(store, "b-early", "d1", "entities")
    await result(store, "b-early", "d2", "entities")
    await llm_call(store, "b-early", "d1", "supplier_risk", attempt=1)
    (status,) = await collect_status(store, ["b-early"])
    assert set(status.counts.handlers) == {"entities", "supplier_risk"}
    assert (status.counts.done, status.pending()) == (0, 2)
    assert not status.complete


async def test_recent_batches_are_listed_newest_first_and_unknown_ids_refused(
    store: Store,
) -> None:
    await publish(store, "b-old", ["d1"])
    await publish(store, "b-new", ["d1"])
    statuses = await collect_status(store)
    assert [s.batch_id for s in statuses] == ["b-new", "b-old"]
    assert [s.batch_id for s in await collect_status(store, limit=1)] == ["b-new"]
    with pytest.raises(LookupError):
        await collect_status(store, ["nope"])


async def test_a_complete_batch_measures_throughput_up_to_its_last_result(
    store: Store,
) -> None:
    await publish(store, "b-done", ["d1", "d2"])
    await result(store, "b-done", "d1", "entities")
    await dead_letter(store, "b-done", "d2", "entities")
    (status,) = await collect_status(store, ["b-done"])
    assert status.complete
    assert status.last_activity is not None
    assert status.record.created_at <= status.last_activity <= status.observed_at
    assert "complete" in rendered([status])


async def test_a_batch_is_complete_once_publishing_ended_and_nothing_sent_is_pending(
    store: Store,
) -> None:
    await store.record_batch("b-open", topic="documents")  # still publishing, nothing yet
    await publish(store, "b-unsent", ["d1", "d2"])
    await store.update_batch("b-unsent", status="failed", counts={"sent": 1, "failed": 1})
    await result(store, "b-unsent", "d1", "entities")
    opened, unsent = await collect_status(store, ["b-open", "b-unsent"])
    assert not opened.complete
    assert unsent.complete  # d2 was never sent: nothing more will arrive


def make_status(
    done: int, dead: int, *, created: datetime, observed: datetime, status: str = "published"
) -> BatchStatus:
    published = 10
    pending = published - done - dead
    return BatchStatus(
        record=BatchRecord(id="b", topic="documents", status=status, created_at=created),
        counts=BatchCounts(
            batch_id="b",
            published=published,
            done=done,
            dead_lettered=dead,
            pending=pending,
            handlers={"h": HandlerCounts(done=done, dead_lettered=dead, pending=pending)},
        ),
        observed_at=observed,
    )


def test_throughput_since_creation_and_over_the_last_interval() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    first = make_status(4, 1, created=t0, observed=t0 + timedelta(seconds=10))
    assert throughput(first) == {None: 0.5, "h": 0.5}
    second = make_status(8, 2, created=t0, observed=t0 + timedelta(seconds=12))
    assert throughput(second, first) == {None: 2.5, "h": 2.5}


def test_retrying_follows_the_batch_count_rules() -> None:
    attempted = {"a": {"x", "y", "z"}, "b": {"w"}}
    done = {"a": {"x"}, "b": {"y", "z"}}
    dead = {"b": {"w"}, "a": {"y"}}
    overall, per_handler = retrying_counts(attempted, done, dead, ["a", "b"])
    # a: x done, y dead → z retrying; b: w dead → nothing. Overall: z (done in b only).
    assert per_handler == {"a": 1}
    assert overall == 1
    # once z is done everywhere it no longer retries anywhere
    done["a"].add("z")
    assert retrying_counts(attempted, done, dead, ["a", "b"]) == (0, {})


async def test_watch_returns_once_every_batch_shown_is_complete(store: Store) -> None:
    await publish(store, "b-watch", ["d1", "d2"])
    await result(store, "b-watch", "d1", "entities")
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    watching = asyncio.create_task(watch(store, console, ["b-watch"], interval=0.02))
    await result(store, "b-watch", "d2", "entities")
    final = await asyncio.wait_for(watching, timeout=20)
    assert [s.complete for s in final] == [True]
    assert rows(out.getvalue())["entities"][:5] == ["2", "2", "0", "0", "0"]


def status_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    status_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def mongo_env(monkeypatch: pytest.MonkeyPatch, local_mongo: LocalMongo, store: Store) -> None:
    for name in list(os.environ):
        if name.startswith("DOCBUS_") or name == "MONGODB_URI":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = status_cli.run(status_args(*argv), console=Console(file=out, width=200))
    return code, out.getvalue()


@pytest.mark.usefixtures("mongo_env")
async def test_the_command_reads_the_configured_store(store: Store, mixed_batch: str) -> None:
    code, text = await asyncio.to_thread(run_cli, "--batch", mixed_batch)
    assert code == 0
    assert rows(text)["all handlers"][:5] == ["5", "2", "2", "1", "0"]
    code, text = await asyncio.to_thread(run_cli, "--batch", "missing")
    assert code == 1
    assert "no batch 'missing'" in text


def test_an_unreachable_store_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DOCBUS_") or name == "MONGODB_URI":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", "mongodb://127.0.0.1:9/")
    monkeypatch.setenv("DOCBUS_MONGODB__TIMEOUT", "0.3")
    code, text = run_cli()
    assert code == 1
    assert "cannot reach MongoDB" in text
    assert "docbus up" in text
