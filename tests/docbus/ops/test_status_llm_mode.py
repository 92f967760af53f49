"""``docbus status`` and ``docbus report`` in batch mode: each batch's LLM mode, its requests per
state, open provider batches and submission back-offs, and cost split by mode — records written
through the store's own methods in a real SecantusDB."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from docbus.cli.status import render_status
from docbus.envelope import Envelope
from docbus.llm_batch import BatchRequest
from docbus.ops.status import collect_status, status_json
from docbus.store import ParkedMessage, Store

MODEL = "docbus-offline"


async def publish(store: Store, batch_id: str, mode: Any, docs: int = 4) -> None:
    await store.record_batch(batch_id, topic="documents", llm_mode=mode)
    await store.record_documents(
        Envelope(doc_id=f"d{i}", batch_id=batch_id, topic="documents", content=f"text {i}")
        for i in range(docs)
    )
    await store.update_batch(batch_id, status="published", counts={"documents": docs})


async def batch_mode_batch(store: Store) -> str:
    """b1 in batch mode: 4 requests, 2 in an open provider batch, 2 pending; a pause; two
    documents parked waiting for the round."""
    await publish(store, "b1", "batch")
    keys = []
    for i in range(4):
        made = BatchRequest.of(
            f"s{i}", {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
        )
        await store.register_llm_request(made, step_id=f"s{i}", batch_id="b1", doc_id=f"d{i}")
        keys.append(made.key)
    record = await store.claim_llm_requests(
        "pb-1", "/v1/chat/completions", MODEL, keys[:2], token=1
    )
    await store.record_upload(record.id, "file-1", token=1)
    await store.mark_creating(record.id, token=1)
    await store.record_created(record.id, "batch_1", "in_progress", token=1)
    await store.pause_llm_submission(
        "/v1/chat/completions", MODEL, until=datetime.now(UTC) + timedelta(minutes=5),
        reason="LLMQuotaExceeded", description="enqueued token limit reached",
    )  # fmt: skip
    for seq, doc in enumerate(("d0", "d1")):
        await store.park(
            ParkedMessage(
                topic="documents", subscription="entities", sequence_number=seq,
                reason="AwaitingBatch", batch_id="b1", doc_id=doc, handler="entities",
                deferred=True,
            )
        )  # fmt: skip
    return "pb-1"


async def test_status_shows_the_mode_and_the_batch_mode_requests(store: Store) -> None:
    await batch_mode_batch(store)
    await publish(store, "b-live", "live")
    await publish(store, "b-default", None)
    statuses = {s.batch_id: s for s in await collect_status(store, ["b1", "b-live", "b-default"])}
    b1 = statuses["b1"]
    assert b1.llm_mode == "batch" and b1.llm is not None
    assert b1.llm.requests == {"pending": 2, "submitted": 2, "answered": 0, "failed": 0, "held": 0}
    assert [r.provider_batch_id for r in b1.llm.open_batches] == ["batch_1"]
    assert [p.reason for p in b1.llm.active_pauses()] == ["LLMQuotaExceeded"]
    # Waiting for a round is batch mode at work; a paused submission needs a look.
    assert b1.parked == 2 and b1.attention == ["LLM batch submission paused"]
    assert statuses["b-live"].llm_mode == "live" and statuses["b-live"].llm is None
    assert statuses["b-default"].llm_mode == "default" and statuses["b-default"].llm is None
    data = {b["batch_id"]: b for b in status_json(list(statuses.values()))["batches"]}
    assert data["b1"]["llm_mode"] == "batch"
    llm = data["b1"]["llm_batch"]
    assert llm["requests"]["pending"] == 2
    assert [b["provider_batch_id"] for b in llm["open_provider_batches"]] == ["batch_1"]
    assert llm["submission_pauses"][0]["reason"] == "LLMQuotaExceeded"
    assert llm["submission_pauses"][0]["active"] is True
    assert data["b-live"]["llm_mode"] == "live" and data["b-live"]["llm_batch"] is None
    out = io.StringIO()
    Console(file=out, width=250).print(render_status(list(statuses.values())))
    text = out.getvalue()
    assert "LLM mode batch" in text and "LLM mode live" in text and "LLM mode default" in text
    assert "LLM requests: pending 2, submitted 2, answered 0, failed 0, held 0" in text
    assert "open provider batches: batch_1 in_progress" in text
    assert "paused until" in text and "LLMQuotaExceeded" in text


async def test_a_cancelled_batch_needs_attention_for_its_held_requests(store: Store) -> None:
    await batch_mode_batch(store)
    await store.hold_llm_requests("b1")
    await store.mark_batch_llm_cancelled("b1", True)
    [b1] = await collect_status(store, ["b1"])
    assert b1.llm is not None and b1.llm.requests["held"] == 2
    assert "2 LLM requests held (cancelled)" in b1.attention
    out = io.StringIO()
    Console(file=out, width=250).print(render_status([b1]))
    assert "CANCELLED" in out.getvalue()


def call(step: str, mode: str | None, usd: float, tokens: int = 10) -> dict[str, Any]:
    row: dict[str, Any] = {
        "batch_id": "b1", "doc_id": "d0", "handler": "entities", "step": step,
        "category": "first", "prompt_tokens": tokens, "completion_tokens": tokens // 2,
        "cost_usd": usd, "latency_s": 0.1, "attempt": 1,
        "created_at": datetime.now(UTC),
    }  # fmt: skip
    if mode is not None:
        row["llm_mode"] = mode
    return row


async def test_report_splits_cost_by_mode_rows_without_a_mode_being_live(store: Store) -> None:
    from docbus.cli.report import render_report
    from docbus.ops.report import collect_report, report_json

    await publish(store, "b1", "batch")
    for row in (
        call("extract", None, 0.004),  # written before batch mode existed: live
        call("extract", "live", 0.002),
        call("extract", "batch", 0.001),
        call("classify", "batch", 0.0005),
        call("classify", "batch", 0.0005),
    ):
        await store.record_llm_call(row)
    report = await collect_report(store, "b1")
    assert report.llm_mode == "batch"
    assert (report.by_mode["live"].calls, report.by_mode["batch"].calls) == (2, 3)
    assert report.by_mode["live"].cost_usd == pytest.approx(0.006)
    assert report.by_mode["batch"].cost_usd == pytest.approx(0.002)
    assert report.by_mode["live"].cost_usd + report.by_mode["batch"].cost_usd == pytest.approx(
        report.total.cost_usd
    )
    classify = report.step_modes[("entities", "classify")]
    assert "live" not in classify and classify["batch"].prompt_tokens == 20
    data = report_json(report)
    assert data["llm_mode"] == "batch"
    assert data["llm"]["by_mode"]["batch"]["calls"] == 3
    steps = {s["step"]: s for s in data["llm"]["steps"]}
    assert steps["extract"]["by_mode"]["live"]["calls"] == 2
    out = io.StringIO()
    Console(file=out, width=250).print(render_report(report))
    text = out.getvalue()
    assert "LLM mode batch" in text and "cost by LLM mode" in text
    total = next(line for line in text.splitlines() if "│ total" in line and "0.0060" in line)
    assert "0.0020" in total
