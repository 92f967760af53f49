"""Whole rounds through the foundations: store, planning and the real ``openai`` SDK against the
offline server's Batch API — the path the submitter will take, written out step by step."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import openai
import pytest

from docbus.llm_batch import (
    METADATA_KEY,
    PROVIDER_TERMINAL,
    BatchRequest,
    FileLimits,
    Kind,
    plan_files,
    read_lines,
    settle,
    submission_delay,
)
from docbus.local.llm_server import LLMServer
from docbus.store import LLMRequestState, Store
from docbus.store._base import _now

MODEL = "docbus-offline"
TOKEN = 1


def body(i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": f"Acme Corp in Taiwan reported event number {i}."}
        ],
        "response_format": {"type": "json_object"},
    }


async def register(store: Store, count: int) -> list[str]:
    keys = []
    for i in range(count):
        made = BatchRequest.of(f"step-{i}", body(i))
        await store.register_llm_request(made, step_id=f"step-{i}", batch_id="b1", doc_id=f"d{i}")
        keys.append(made.key)
    return keys


async def run_round(
    store: Store, sdk: openai.AsyncOpenAI, limits: FileLimits | None = None
) -> list[Any]:
    """One submitter pass: plan, claim, upload, create, poll, collect, settle."""
    limits = limits or FileLimits()
    settlements = []
    for group in await store.pending_llm_groups():
        pending = await store.pending_llm_requests(group.endpoint, group.model)
        for planned in plan_files((r.as_request() for r in pending), limits).files:
            record_id = f"pb-{uuid.uuid4().hex[:12]}"
            record = await store.claim_llm_requests(
                record_id, planned.endpoint, planned.model, planned.keys, token=TOKEN
            )
            uploaded = await sdk.files.create(
                file=(f"{record_id}.jsonl", planned.content), purpose="batch"
            )
            await store.record_upload(record.id, uploaded.id, token=TOKEN)
            await store.mark_creating(record.id, token=TOKEN)
            batch = await sdk.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={METADATA_KEY: record.id},
            )
            await store.record_created(record.id, batch.id, batch.status, token=TOKEN)
            batch = await sdk.batches.retrieve(batch.id)
            assert batch.status in PROVIDER_TERMINAL  # no processing time configured
            errors = [e.model_dump() for e in (batch.errors.data or [])] if batch.errors else []
            await store.begin_collecting(
                record.id,
                batch.status,
                token=TOKEN,
                output_file_id=batch.output_file_id,
                error_file_id=batch.error_file_id,
                errors=errors,
            )
            lines = []
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    lines += list(read_lines((await sdk.files.content(file_id)).content))
            history = await store.llm_request_history(record.id)
            settlement = settle(
                batch.status, record.keys, lines, batch_errors=errors, history=history
            )
            await store.apply_llm_settlement(record.id, settlement, token=TOKEN)
            if settlement.systemic is not None:
                pause = await store.pause_llm_submission(
                    group.endpoint,
                    group.model,
                    until=_now() + timedelta(seconds=submission_delay(1)),
                    reason=settlement.systemic.reason,
                    description=settlement.systemic.description,
                )
                assert pause.refusals == 1
            settlements.append(settlement)
    return settlements


@pytest.fixture
async def sdk(llm_server: LLMServer) -> Any:
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


async def test_a_round_answers_every_request_with_the_live_answer_split_to_the_limits(
    store: Store, sdk: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    keys = await register(store, 20)
    settlements = await run_round(store, sdk, FileLimits(max_requests=8))
    assert [len(s.answers) for s in settlements] == [8, 8, 4]
    records = await store.llm_requests(keys)
    assert {r.state for r in records.values()} == {LLMRequestState.ANSWERED}
    live = await sdk.chat.completions.create(**body(3))
    stored = records[keys[3]].answer
    assert stored is not None
    assert stored["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content
    assert json.loads(live.choices[0].message.content or "")
    assert llm_server.batch_api.stats()["created"] == 3
    assert await store.open_provider_batches() == []


async def test_expiry_resubmits_only_the_missing_and_pays_for_nothing_twice(
    store: Store, sdk: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    keys = await register(store, 20)
    llm_server.configure(batch={"expire_share": 0.1})
    [first] = await run_round(store, sdk)
    assert len(first.answers) == 18 and len(first.resubmit) == 2
    missing = set(first.resubmit)
    records = await store.llm_requests(keys)
    assert {k for k, r in records.items() if r.state is LLMRequestState.PENDING} == missing
    assert all(records[k].expiries == 1 for k in missing)
    llm_server.configure(batch={"expire_share": 0.0})
    [second] = await run_round(store, sdk)
    assert set(second.answers) == missing
    assert llm_server.batch_api.stats()["requests"] == 22  # 20 + the 2 resubmitted, no more
    answered = await store.llm_requests(keys)
    assert {r.state for r in answered.values()} == {LLMRequestState.ANSWERED}


async def test_a_queued_token_quota_failure_backs_off_and_dead_letters_nothing(
    store: Store, sdk: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    keys = await register(store, 5)
    llm_server.configure(batch={"fail": "token_limit_exceeded"})
    [settlement] = await run_round(store, sdk)
    assert settlement.systemic is not None
    assert settlement.systemic.reason == "QueuedTokenQuotaExhausted"
    records = await store.llm_requests(keys)
    assert {r.state for r in records.values()} == {LLMRequestState.PENDING}
    assert {r.attempts for r in records.values()} == {0}
    [pause] = await store.llm_submission_pauses()
    assert pause.reason == "QueuedTokenQuotaExhausted"


async def test_per_line_errors_dead_letter_permanent_and_resubmit_transient(
    store: Store, sdk: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    keys = await register(store, 10)
    llm_server.configure(batch={"line_400_share": 0.2, "line_500_share": 0.1})
    [settlement] = await run_round(store, sdk)
    assert {f.reason for f in settlement.dead.values()} == {"LLMBadRequest"}
    assert [f.kind for f in settlement.resubmit.values()] == [Kind.TRANSIENT]
    records = await store.llm_requests(keys)
    counts: dict[str, int] = {}
    for record in records.values():
        counts[record.state.value] = counts.get(record.state.value, 0) + 1
    assert counts == {"answered": 7, "failed": 2, "pending": 1}
