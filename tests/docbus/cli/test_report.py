"""``docbus report``: documents by outcome and LLM spend of a batch, from records in a real store,
and once end to end: a real worker run against the offline LLM server."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr
from rich.console import Console

from docbus.cli import report as report_cli
from docbus.cli.report import render_report
from docbus.cli.runner import rounded_money
from docbus.envelope import Envelope, message_id
from docbus.local.emulator import EmulatorThread
from docbus.local.llm_server import LLMServer
from docbus.local.mongo import LocalMongo
from docbus.ops.report import CallTally, collect_report, percentile, report_json
from docbus.records import DeadLetterRecord, LLMCallRecord
from docbus.settings import LLMSettings, MongoSettings, ServiceBusSettings, Settings
from docbus.store import Store
from docbus.topology import Topology, parse_topology

BATCH = "b-report"
DOCS = ["d1", "d2", "d3", "d4", "d5", "d6"]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


# -- pure figures -------------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_tally_groups_by_handler_and_step_and_splits_spend_by_category() -> None:
    tally = CallTally()
    rows: list[dict[str, Any]] = [
        {"handler": "h", "step": "a", "category": "first", "prompt_tokens": 10,
         "completion_tokens": 5, "cost_usd": 0.5, "latency_s": 1.0},
        {"handler": "h", "step": "a", "category": "reask", "prompt_tokens": 20,
         "completion_tokens": 7, "cost_usd": 0.25, "latency_s": 3.0,
         "error_type": "SchemaValidationError"},
        {"handler": "h", "step": None, "category": "retry", "prompt_tokens": 0,
         "completion_tokens": 0, "cost_usd": 0.0, "latency_s": 0.1,
         "error_type": "RateLimitError"},
    ]  # fmt: skip
    for row in rows:
        tally.add(row)
    step_a, no_step = tally.steps()
    assert (step_a.handler, step_a.step, no_step.step) == ("h", "a", None)
    assert (step_a.usage.calls, step_a.usage.failed, step_a.usage.tokens) == (2, 1, 42)
    assert step_a.usage.cost_usd == 0.75
    assert (step_a.latency_p50, step_a.latency_p95) == (2.0, pytest.approx(2.9))
    assert step_a.by_category["reask"].prompt_tokens == 20
    assert no_step.by_category["retry"].failed == 1


# -- from records in a real store ---------------------------------------------------------------


async def call(  # noqa: PLR0913 - keyword-only fields of the audit row it writes
    store: Store, doc: str, handler: str, step: str | None, *, category: str = "first",
    prompt: int = 100, completion: int = 20, latency: float = 0.2, error: str | None = None,
    attempt: int = 1, reask: int = 0, retry: int = 0, seconds: int = 0,
) -> LLMCallRecord:  # fmt: skip
    """One audit row, written the way the LLM client writes it (row + batch totals)."""
    if error is not None and not reask:  # refused: no answer, no tokens billed
        prompt = completion = 0
    row = LLMCallRecord(
        batch_id=BATCH, doc_id=doc, handler=handler, handler_version="1", step=step,
        attempt=attempt, reask=reask, retry=retry, category=category,  # type: ignore[arg-type]
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"about {doc}"}],
        response_text="{}", prompt_tokens=prompt, completion_tokens=completion,
        cost_usd=(prompt * 0.15 + completion * 0.6) / 1_000_000, latency_s=latency,
        error_type=error, created_at=T0 + timedelta(seconds=seconds),
    )  # fmt: skip
    await store.record_llm_call(row)
    await store.add_batch_usage(
        BATCH,
        usd=row.cost_usd,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        category=row.category,
    )
    return row


async def result(store: Store, doc: str, handler: str) -> None:
    await store.write_result(
        doc_id=doc, handler=handler, handler_version="1", batch_id=BATCH,
        message_id=message_id(BATCH, doc), output={"ok": True},
    )  # fmt: skip


async def dead_letter(store: Store, doc: str, handler: str, reason: str, minutes: int) -> None:
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=f"{message_id(BATCH, doc)}-{minutes}", subscription=handler,
            reason=reason, handler=handler, batch_id=BATCH, doc_id=doc,
            dead_lettered_at=T0 + timedelta(minutes=minutes),
        )
    )  # fmt: skip


@pytest.fixture
async def batch(store: Store) -> str:
    """Two handlers over six documents: done, dead-lettered for two reasons, re-dead-lettered
    under a new reason, replayed to success, and pending; LLM rows of every category."""
    await store.record_batch(BATCH, topic="documents", source=["news.jsonl"])
    await store.record_documents(
        Envelope(doc_id=d, batch_id=BATCH, topic="documents", content=f"text {d}") for d in DOCS
    )
    await store.update_batch(BATCH, status="published", counts={"documents": len(DOCS)})
    for doc in ("d1", "d2", "d3"):
        await result(store, doc, "entities")
    await dead_letter(store, "d4", "entities", "SchemaValidationFailed", 1)
    await dead_letter(store, "d5", "entities", "SchemaValidationFailed", 1)
    await dead_letter(store, "d5", "entities", "ContextLengthExceeded", 2)  # latest reason wins
    await dead_letter(store, "d3", "entities", "RetriesExhausted", 0)  # replayed, then done
    for doc in ("d1", "d2"):
        await result(store, doc, "risk")
    await dead_letter(store, "d6", "risk", "ContentFiltered", 3)
    for i, doc in enumerate(DOCS):
        await call(store, doc, "entities", "classify", latency=0.1 * (i + 1), seconds=i)
        await call(store, doc, "entities", "extract", prompt=300, completion=80, latency=1.0)
    await call(store, "d4", "entities", "extract", category="reask", reask=1, prompt=420,
               error="SchemaValidationError", latency=2.0)  # fmt: skip
    await call(store, "d4", "entities", "extract", category="reask", reask=2, prompt=520)
    await call(store, "d2", "entities", "extract", category="retry", retry=1,
               error="RateLimitError", latency=0.01)  # fmt: skip
    await call(store, "d2", "entities", "extract", category="retry", retry=2)
    await call(store, "d3", "risk", None, category="retry", attempt=2, prompt=50, completion=9)
    await call(store, "d1", "risk", None, prompt=50, completion=9)
    return BATCH


async def test_totals_and_categories_equal_the_sums_of_the_audit_rows(
    store: Store, batch: str
) -> None:
    report = await collect_report(store, batch)
    rows = await store.llm_calls(batch)
    assert report.total.calls == len(rows) == 18
    assert report.total.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert report.total.completion_tokens == sum(r.completion_tokens for r in rows)
    assert report.total.cost_usd == pytest.approx(math.fsum(r.cost_usd for r in rows), rel=1e-12)
    assert report.total.failed == sum(1 for r in rows if r.error_type is not None) == 2
    for category, expected_calls in (("first", 13), ("reask", 2), ("retry", 3)):
        mine = [r for r in rows if r.category == category]
        spent = report.spent_on(category)  # type: ignore[arg-type]
        assert spent.calls == len(mine) == expected_calls
        assert spent.tokens == sum(r.prompt_tokens + r.completion_tokens for r in mine)
        assert spent.cost_usd == pytest.approx(math.fsum(r.cost_usd for r in mine), rel=1e-12)
    # The per-step rows add up to the total, and the batch's running totals agree.
    assert sum(s.usage.calls for s in report.steps) == report.total.calls
    assert sum(s.usage.tokens for s in report.steps) == report.total.tokens
    assert not report.recorded_cost_differs


async def test_latency_percentiles_are_per_step(store: Store, batch: str) -> None:
    report = await collect_report(store, batch)
    steps = {(s.handler, s.step): s for s in report.steps}
    assert list(steps) == [("entities", "classify"), ("entities", "extract"), ("risk", None)]
    classify = steps[("entities", "classify")]
    assert classify.latency_p50 == pytest.approx(0.35)  # 0.1 .. 0.6
    assert classify.latency_p95 == pytest.approx(0.575)
    extract = [r.latency_s for r in await store.llm_calls(batch, step="extract")]
    assert steps[("entities", "extract")].latency_p95 == pytest.approx(percentile(extract, 95))


async def test_documents_by_outcome_split_dead_letters_by_their_latest_reason(
    store: Store, batch: str
) -> None:
    report = await collect_report(store, batch)
    entities, risk = report.counts.handlers["entities"], report.counts.handlers["risk"]
    assert (entities.done, entities.dead_lettered, entities.pending) == (3, 2, 1)
    assert (risk.done, risk.dead_lettered, risk.pending) == (2, 1, 3)
    assert report.reasons == {
        "entities": {"ContextLengthExceeded": 1, "SchemaValidationFailed": 1},
        "risk": {"ContentFiltered": 1},
    }
    for name, counts in report.counts.handlers.items():
        assert sum(report.reasons.get(name, {}).values()) == counts.dead_lettered


def rendered(renderable: Any) -> str:
    console = Console(record=True, width=220, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


async def test_tables_show_outcomes_steps_and_spend_on_reasks_and_retries_apart(
    store: Store, batch: str
) -> None:
    report = await collect_report(store, batch)
    text = rendered(render_report(report))
    rows = table_rows(text)
    assert ["", "ContextLengthExceeded", "1"] in rows
    assert ["", "ContentFiltered", "1"] in rows
    total = report.total
    latencies = [r.latency_s for r in await store.llm_calls(batch)]
    assert [
        "total", "", f"{total.calls}", "2", f"{total.prompt_tokens:,}",
        f"{total.completion_tokens:,}", f"{total.cost_usd:.6f}",
        f"{percentile(latencies, 50):.3f}", f"{percentile(latencies, 95):.3f}",
    ] in rows  # fmt: skip
    reasks = report.spent_on("reask")
    assert ["entities", "extract", "re-asks", "2", f"{reasks.prompt_tokens:,}"] == next(
        row[:5] for row in rows if row[2] == "re-asks"
    )
    assert next(row[:4] for row in rows if row[:3] == ["all", "", "retries"]) == [
        "all",
        "",
        "retries",
        "3",
    ]
    assert "differ from the audit rows" not in text


async def test_a_lost_running_total_is_pointed_out(store: Store, batch: str) -> None:
    await store.record_llm_call(  # a row whose $inc on the batch never happened
        LLMCallRecord(batch_id=batch, doc_id="d6", handler="risk", handler_version="1",
                      attempt=1, model="gpt-4o-mini", prompt_tokens=5, cost_usd=0.001)
    )  # fmt: skip
    report = await collect_report(store, batch)
    assert report.recorded_cost_differs
    assert "differ from the audit rows" in rendered(render_report(report))


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, store: Store, local_mongo: LocalMongo) -> None:
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)


def run_command(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    report_cli.add_arguments(parser)
    out = io.StringIO()
    code = report_cli.run(parser.parse_args(list(argv)), console=Console(file=out, width=200))
    return code, out.getvalue()


@pytest.mark.usefixtures("store_env")
async def test_json_output_holds_the_same_figures(
    store: Store, batch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await collect_report(store, batch)
    code, out = await _in_thread(run_command, "--batch", batch, "--json")
    assert code == 0, capsys.readouterr().err
    data = json.loads(out)
    assert data == json.loads(json.dumps(rounded_money(report_json(report))))
    assert data["llm"]["total"]["calls"] == 18
    assert data["llm"]["reasks"]["calls"] == 2 and data["llm"]["retries"]["calls"] == 3
    entities = data["documents"]["handlers"]["entities"]
    assert entities["dead_letter_reasons"] == {
        "ContextLengthExceeded": 1,
        "SchemaValidationFailed": 1,
    }


@pytest.mark.usefixtures("store_env")
async def test_an_unknown_batch_is_an_error_naming_it(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await _in_thread(run_command, "--batch", "nope")
    assert code == 1 and out == ""
    assert capsys.readouterr().err == "docbus report: error: no batch 'nope' in the store\n"


async def _in_thread(fn: Any, *args: Any) -> Any:
    """The command runs its own event loop (asyncio.run), so not on the test's."""
    return await asyncio.to_thread(fn, *args)


# -- end to end: a worker, the offline LLM server, the report -----------------------------------

TOPOLOGY = parse_topology(
    {
        "defaults": {"max_delivery_count": 3, "lock_duration": "PT5S"},
        "topics": [{"name": "docs", "subscriptions": [{"name": "review"}]}],
    }
)


@pytest.fixture
def servicebus_topology() -> Topology:
    return TOPOLOGY


@pytest.fixture
def settings(
    servicebus_emulator: EmulatorThread, store: Store, local_mongo: LocalMongo,
    llm_server: LLMServer,
) -> Settings:  # fmt: skip
    return Settings(
        servicebus=ServiceBusSettings(
            connection_string=SecretStr(servicebus_emulator.connection_string)
        ),
        mongodb=MongoSettings(uri=SecretStr(local_mongo.uri), database=store.database.name),
        llm=LLMSettings(base_url=llm_server.base_url, model="docbus-offline"),
    )


async def test_after_a_real_run_the_report_equals_the_audit_rows_and_the_servers_counters(
    settings: Settings, store: Store, llm_server: LLMServer
) -> None:
    from docbus.backoff import BackoffPolicy
    from handlers.llm import LLMClient
    from handlers.runtime import discover_handlers
    from publisher import publish_documents
    from subscriber.worker import Worker, WorkerOptions
    from tests.docbus import report_handlers

    behaviours = {"n3": "bad-schema", "n5": "flaky"}
    docs = [
        {
            "doc_id": f"n{i}",
            "text": f"Supplier {i} in Lyon, France, reports a delayed shipment of valves.",
            "metadata": {"behaviour": behaviours.get(f"n{i}", "ok")},
        }
        for i in range(8)
    ]
    published = await publish_documents(
        docs, topic="docs", batch_id="e2e", settings=settings, store=store
    )
    assert published.ok, published
    async with (
        ServiceBusClient.from_connection_string(
            settings.servicebus.connection_string.get_secret_value()  # type: ignore[union-attr]
        ) as client,
        LLMClient.from_settings(settings, store) as llm,
    ):
        worker = Worker(
            discover_handlers(report_handlers),
            client=client,
            store=store,
            options=WorkerOptions(
                concurrency=8,
                until_idle=1.0,
                receive_wait=0.5,
                backoff=BackoffPolicy(base=0.2, jitter=0.0),
            ),
            topology=TOPOLOGY,
            llm=llm,
        )
        await worker.run()

    report = await collect_report(store, "e2e")
    rows = await store.llm_calls("e2e")
    served = llm_server.stats()
    # Every request the server saw is one audit row, and the report adds them all up.
    assert report.total.calls == len(rows) == served["requests"]
    assert report.total.prompt_tokens == served["tokens"]["prompt"]
    assert report.total.completion_tokens == served["tokens"]["completion"]
    assert report.total.cost_usd == pytest.approx(math.fsum(r.cost_usd for r in rows), rel=1e-12)
    assert not report.recorded_cost_differs
    # n3: the first ask and two re-asks broke the schema; n5's second step ran on delivery 2.
    reasks = [r for r in rows if r.category == "reask"]
    assert [(r.doc_id, r.step, r.reask) for r in reasks] == [
        ("n3", "classify", 1),
        ("n3", "classify", 2),
    ]
    assert (
        report.spent_on("reask").tokens
        == sum(r.prompt_tokens + r.completion_tokens for r in reasks)
        > 0
    )
    retries = [r for r in rows if r.category == "retry"]
    assert [(r.doc_id, r.step, r.attempt) for r in retries] == [("n5", "summarise", 2)]
    assert retries[0].cost_usd > 0
    assert report.spent_on("retry").cost_usd == pytest.approx(retries[0].cost_usd)
    steps = {s.step: s.usage.calls for s in report.steps}
    assert steps == {"classify": 8 + 2, "summarise": 7}  # n5 did not repeat its first step
    review = report.counts.handlers["review"]
    assert (review.done, review.dead_lettered, review.pending) == (7, 1, 0)
    assert report.reasons == {"review": {"SchemaValidationFailed": 1}}


@pytest.mark.usefixtures("store_env")
async def test_at_80_columns_piped_the_report_keeps_every_number_whole(
    store: Store, batch: str
) -> None:
    await call(store, "d1", "entities", "summarise-the-whole-document", prompt=9_234_567)
    env = {**os.environ, "COLUMNS": "80"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "docbus", "report", "--batch", batch],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = await collect_report(store, batch)
    total = report.total
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for number in (f"{total.prompt_tokens:,}", f"{total.completion_tokens:,}",
                   f"{total.cost_usd:,.4f}", "9,234,567"):  # fmt: skip
        assert any(number in line for line in lines), (number, done.stdout)
    assert "…" not in done.stdout
