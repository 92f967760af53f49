"""Batch mode's store: pending requests, the submitter lease, provider-batch records and the
crash points between them, against SecantusDB (and the offline LLM server where a provider
batch must really exist)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from docbus.llm_batch import (
    METADATA_KEY,
    BatchRequest,
    ProviderBatchState,
    Step,
    find_adoptable,
    plan_files,
    read_lines,
    recovery_step,
    settle,
)
from docbus.local.llm_server import LLMServer
from docbus.local.mongo import LocalMongo
from docbus.store import LLMRequestState, StaleTransition, Store
from docbus.store._base import _now

MODEL = "docbus-offline"
CHAT = "/v1/chat/completions"


def body(i: int, model: str = MODEL) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": f"Summarise document number {i}."}],
    }


def request(i: int, model: str = MODEL) -> BatchRequest:
    return BatchRequest.of(f"step-{i}", body(i, model))


async def register(store: Store, count: int, batch_id: str = "b1") -> list[str]:
    keys = []
    for i in range(count):
        made = request(i)
        await store.register_llm_request(
            made, step_id=f"step-{i}", batch_id=batch_id, doc_id=f"d{i}", handler="h"
        )
        keys.append(made.key)
    return keys


async def states(store: Store, keys: list[str]) -> dict[str, tuple[str, str | None]]:
    records = await store.llm_requests(keys)
    return {k: (records[k].state.value, records[k].provider_batch) for k in keys}


@contextlib.asynccontextmanager
async def workers(local_mongo: LocalMongo, store: Store, count: int) -> AsyncIterator[list[Store]]:
    """``count`` stores of their own on ``store``'s database, as separate workers have."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                Store(local_mongo.uri, store.database.name, timeout=5.0)
            )
            for _ in range(count)
        ]


def new_id() -> str:
    return f"pb-{uuid.uuid4().hex[:12]}"


# -- pending requests ---------------------------------------------------------------------------


async def test_registering_the_same_call_twice_keeps_one_record(store: Store) -> None:
    made = request(1)
    first = await store.register_llm_request(made, step_id="step-1", batch_id="b1", doc_id="d1")
    again = await store.register_llm_request(made, step_id="step-1", batch_id="b1", doc_id="d1")
    assert first == again
    assert first.state is LLMRequestState.PENDING and first.size > 0
    assert await store.count_llm_requests(batch_id="b1") == {
        "pending": 1, "submitted": 0, "answered": 0, "failed": 0, "held": 0,
    }  # fmt: skip


async def test_a_redelivery_finds_the_answer_of_its_registered_call(store: Store) -> None:
    keys = await register(store, 1)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    await advance_to_collecting(store, record.id)
    line = answer_line(keys[0], "the answer")
    await store.apply_llm_settlement(
        record.id, settle("completed", keys, read_lines(line)), token=1
    )
    again = await store.register_llm_request(request(0), step_id="step-0", batch_id="b1")
    assert again.state is LLMRequestState.ANSWERED
    assert again.answer is not None
    assert again.answer["body"]["choices"][0]["message"]["content"] == "the answer"


async def test_pending_requests_are_grouped_by_endpoint_and_model_oldest_first(
    store: Store,
) -> None:
    keys = await register(store, 3)
    other = request(9, model="other-model")
    await store.register_llm_request(other, step_id="step-9")
    groups = await store.pending_llm_groups()
    assert [(g.model, g.requests) for g in groups] == [(MODEL, 3), ("other-model", 1)]
    assert groups[0].size == sum(r.size for r in (await store.llm_requests(keys)).values())
    pending = await store.pending_llm_requests(CHAT, MODEL)
    assert [r.key for r in pending] == keys


async def test_a_cancelled_batch_holds_its_pending_requests_until_resumed(store: Store) -> None:
    keys = await register(store, 2, batch_id="b1")
    await register_other_batch(store)
    assert await store.hold_llm_requests("b1") == 2
    assert [g.requests for g in await store.pending_llm_groups()] == [1]
    assert await store.release_held_llm_requests("b1") == 2
    assert {s for s, _ in (await states(store, keys)).values()} == {"pending"}


async def register_other_batch(store: Store) -> None:
    await store.register_llm_request(request(50), step_id="step-50", batch_id="b2")


# -- the submitter lease -------------------------------------------------------------------------


async def test_exactly_one_of_many_concurrent_workers_gets_the_lease(
    store: Store, local_mongo: LocalMongo
) -> None:
    async with workers(local_mongo, store, 6) as others:
        got = await asyncio.gather(
            *(s.acquire_submitter_lease(f"worker-{i}", 60) for i, s in enumerate(others))
        )
    holders = [lease for lease in got if lease is not None]
    assert len(holders) == 1
    current = await store.submitter_lease()
    assert current is not None and current.holder == holders[0].holder


async def test_a_killed_holder_loses_the_lease_when_it_expires(store: Store) -> None:
    now = _now()
    first = await store.acquire_submitter_lease("worker-a", 30, now=now)
    assert first is not None
    # worker-a is killed: it never renews nor releases
    assert (
        await store.acquire_submitter_lease("worker-b", 30, now=now + timedelta(seconds=29)) is None
    )
    second = await store.acquire_submitter_lease("worker-b", 30, now=now + timedelta(seconds=31))
    assert second is not None and second.token > first.token
    assert await store.renew_submitter_lease(first, 30, now=now + timedelta(seconds=32)) is None


async def test_the_holder_renews_keeping_its_token_and_releases_for_the_next(
    store: Store,
) -> None:
    now = _now()
    lease = await store.acquire_submitter_lease("worker-a", 30, now=now)
    assert lease is not None
    renewed = await store.renew_submitter_lease(lease, 30, now=now + timedelta(seconds=20))
    assert renewed is not None and renewed.token == lease.token
    assert renewed.expires_at > lease.expires_at
    again = await store.acquire_submitter_lease("worker-a", 30, now=now + timedelta(seconds=25))
    assert again is not None and again.token == lease.token
    assert (
        await store.acquire_submitter_lease("worker-b", 30, now=now + timedelta(seconds=40)) is None
    )
    taken = await store.acquire_submitter_lease("worker-b", 30, now=now + timedelta(seconds=56))
    assert taken is not None and taken.token == lease.token + 1
    await store.release_submitter_lease(renewed)  # not the holder any more: changes nothing
    assert (
        await store.acquire_submitter_lease("worker-c", 30, now=now + timedelta(seconds=60)) is None
    )


async def test_a_released_lease_goes_to_the_next_worker_at_once(store: Store) -> None:
    lease = await store.acquire_submitter_lease("worker-a", 600)
    assert lease is not None
    await store.release_submitter_lease(lease)
    nxt = await store.acquire_submitter_lease("worker-b", 600)
    assert nxt is not None and nxt.token == lease.token + 1


async def test_submission_pauses_count_refusals_until_cleared(store: Store) -> None:
    until = _now() + timedelta(minutes=5)
    await store.pause_llm_submission(CHAT, MODEL, until=until, reason="Quota")
    pause = await store.pause_llm_submission(
        CHAT, MODEL, until=until, reason="QueuedTokenQuotaExhausted"
    )
    assert pause.refusals == 2 and pause.reason == "QueuedTokenQuotaExhausted"
    assert [p.model for p in await store.llm_submission_pauses()] == [MODEL]
    await store.clear_llm_submission_pause(CHAT, MODEL)
    assert await store.llm_submission_pauses() == []


# -- claiming and the state machine --------------------------------------------------------------


async def test_a_request_is_never_claimed_by_two_provider_batches(
    store: Store, local_mongo: LocalMongo
) -> None:
    keys = await register(store, 20)
    async with workers(local_mongo, store, 4) as others:
        records = await asyncio.gather(
            *(other.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1) for other in others)
        )
    claimed = [key for record in records for key in record.keys if record.state == "claimed"]
    assert sorted(claimed) == sorted(keys)  # each once, none lost
    for record in records:
        if record.state is ProviderBatchState.ABANDONED:
            continue
        assert {pb for _, pb in (await states(store, list(record.keys))).values()} == {record.id}


async def test_a_later_record_claims_only_what_is_still_pending(store: Store) -> None:
    keys = await register(store, 4)
    first = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys[:2], token=1)
    second = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    assert first.keys == keys[:2] and second.keys == keys[2:]
    assert second.batch_ids == ["b1"]
    third = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    assert (
        third.state is ProviderBatchState.ABANDONED and recovery_step(third.state) is Step.NOTHING
    )


async def test_steps_out_of_order_and_older_lease_holders_are_refused(store: Store) -> None:
    keys = await register(store, 1)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=3)
    with pytest.raises(StaleTransition):
        await store.record_created(record.id, "batch_x", "validating", token=3)  # not uploaded
    with pytest.raises(StaleTransition, match="token 2"):
        await store.record_upload(record.id, "file-1", token=2)  # a lapsed holder
    moved = await store.record_upload(record.id, "file-1", token=4)  # its successor
    assert moved.state is ProviderBatchState.UPLOADED and moved.token == 4
    with pytest.raises(StaleTransition):
        await store.mark_creating(record.id, token=3)


# -- crash points --------------------------------------------------------------------------------


async def test_crash_while_claiming_abandons_and_loses_nothing(store: Store) -> None:
    keys = await register(store, 3)
    record_id = new_id()
    # the crash: the record was written and one request claimed, then the process died
    await store.database["llm_provider_batches"].insert_one(
        {"_id": record_id, "endpoint": "/v1/chat/completions", "model": MODEL, "keys": keys,
         "batch_ids": [], "state": "claiming", "token": 1, "created_at": _now(),
         "updated_at": _now()}
    )  # fmt: skip
    await store.database["llm_requests"].update_one(
        {"_id": keys[0]}, {"$set": {"state": "submitted", "provider_batch": record_id}}
    )
    [found] = await store.open_provider_batches()
    assert recovery_step(found.state) is Step.ABANDON
    abandoned = await store.abandon_provider_batch(found.id, token=2)
    assert abandoned.state is ProviderBatchState.ABANDONED
    assert set((await states(store, keys)).values()) == {("pending", None)}
    assert await store.open_provider_batches() == []
    retried = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=2)
    assert retried.keys == keys


async def test_claiming_again_after_a_crash_picks_up_where_it_stopped(store: Store) -> None:
    keys = await register(store, 3)
    record_id = new_id()
    await store.claim_llm_requests(record_id, CHAT, MODEL, keys[:1], token=1)
    await store.database["llm_provider_batches"].update_one(
        {"_id": record_id}, {"$set": {"state": "claiming", "keys": keys}}
    )  # as if it died before the claim of the rest and the record's final keys
    again = await store.claim_llm_requests(record_id, CHAT, MODEL, keys, token=1)
    assert again.state is ProviderBatchState.CLAIMED and again.keys == keys


async def test_crash_after_upload_keeps_the_requests_with_their_record(store: Store) -> None:
    keys = await register(store, 3)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    # the file was uploaded, then the process died before record_upload
    [found] = await store.open_provider_batches()
    assert found.state is ProviderBatchState.CLAIMED and recovery_step(found.state) is Step.UPLOAD
    rival = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=2)
    assert rival.state is ProviderBatchState.ABANDONED  # nobody else can take them meanwhile
    records = await store.llm_requests(keys)
    plan = plan_files(r.as_request() for r in (records[k] for k in found.keys))
    assert plan.files[0].keys == tuple(record.keys)  # the same file can be built again
    uploaded = await store.record_upload(record.id, "file-again", token=2)
    assert uploaded.state is ProviderBatchState.UPLOADED


async def test_crash_after_create_adopts_the_provider_batch_instead_of_paying_twice(
    store: Store, llm_server: LLMServer
) -> None:
    keys = await register(store, 3)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key="sk-test", max_retries=0
    ) as sdk:
        records = await store.llm_requests(record.keys)
        [planned] = plan_files(records[k].as_request() for k in record.keys).files
        uploaded = await sdk.files.create(
            file=(f"{record.id}.jsonl", planned.content), purpose="batch"
        )
        await store.record_upload(record.id, uploaded.id, token=1)
        await store.mark_creating(record.id, token=1)
        await sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={METADATA_KEY: record.id},
        )
        # the process dies here: the provider batch exists, its id is not recorded
        [found] = await store.open_provider_batches()
        assert recovery_step(found.state) is Step.LOOK_UP_THEN_CREATE
        listed = [b.model_dump() async for b in sdk.batches.list()]
        adopted = find_adoptable(listed, found.id, found.file_id)
        assert adopted is not None
        opened = await store.record_created(found.id, adopted, "validating", token=2)
    assert opened.state is ProviderBatchState.OPEN and opened.provider_batch_id == adopted
    assert llm_server.batch_api.stats()["created"] == 1


async def test_crash_mid_download_applies_each_line_once(store: Store) -> None:
    keys = await register(store, 4)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    await advance_to_collecting(store, record.id, status="expired")
    content = answer_line(keys[0], "first") + answer_line(keys[1], "second")
    # the download broke after the first line: what was read is applied, then the crash
    partial = settle("expired", keys, read_lines(answer_line(keys[0], "first")), complete=False)
    assert set(partial.answers) == {keys[0]} and not partial.resubmit
    await store.apply_llm_outcomes(record.id, partial, token=1)
    # recovery: the record is still collecting; download again and settle in full
    [found] = await store.open_provider_batches()
    assert recovery_step(found.state) is Step.COLLECT
    history = await store.llm_request_history(found.id)
    assert set(history) == set(keys[1:])  # only k0 moved on in the first pass
    full = settle("expired", keys, read_lines(content), history=history)
    settled = await store.apply_llm_settlement(found.id, full, token=1)
    assert settled.state is ProviderBatchState.SETTLED
    records = await store.llm_requests(keys)
    assert records[keys[0]].answer is not None and records[keys[1]].answer is not None
    assert [records[k].state.value for k in keys] == ["answered", "answered", "pending", "pending"]
    assert [records[k].expiries for k in keys] == [0, 0, 1, 1]  # counted once, not twice
    assert await store.open_provider_batches() == []


async def test_a_settlement_moves_every_request_the_way_the_taxonomy_says(store: Store) -> None:
    keys = await register(store, 5)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    await advance_to_collecting(store, record.id)
    lines = (
        answer_line(keys[0], "ok")
        + error_line(keys[1], 500, None)
        + error_line(keys[2], 400, "context_length_exceeded")
        + error_line(keys[3], 401, "invalid_api_key")
        + not_run_line(keys[4], "batch_cancelled")
    )
    result = settle("completed", keys, read_lines(lines))
    settled = await store.apply_llm_settlement(record.id, result, token=1)
    records = await store.llm_requests(keys)
    assert [records[k].state.value for k in keys] == [
        "answered", "pending", "failed", "pending", "held",
    ]  # fmt: skip
    assert records[keys[1]].attempts == 1 and records[keys[3]].attempts == 0
    assert records[keys[2]].failure == {
        "reason": "ContextLengthExceeded",
        "description": "refused",
    }
    assert records[keys[3]].failure is not None
    assert records[keys[3]].failure["reason"] == "AuthenticationFailed"
    assert settled.outcome == {"answered": 1, "resubmitted": 1, "dead": 1, "released": 1, "held": 1}
    assert (await store.provider_batches(batch_id="b1"))[0].id == record.id


async def test_requests_are_open_while_pending_or_in_an_open_provider_batch(store: Store) -> None:
    assert not await store.has_open_llm_requests()
    keys = await register(store, 3)
    assert await store.has_open_llm_requests()  # pending
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    await advance_to_collecting(store, record.id)
    assert await store.has_open_llm_requests()  # submitted: its record is open
    # a crash in the middle of the apply: one answered, the record still collecting
    await store.database["llm_requests"].update_one(
        {"_id": keys[0]}, {"$set": {"state": "answered"}}
    )
    assert await store.has_open_llm_requests()
    lines = "".join(answer_line(key, "ok") for key in keys)
    settlement = settle("completed", keys, read_lines(lines))
    await store.apply_llm_settlement(record.id, settlement, token=1)
    assert not await store.has_open_llm_requests()


async def test_only_records_before_creating_can_be_abandoned(store: Store) -> None:
    keys = await register(store, 1)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys, token=1)
    await store.record_upload(record.id, "file-1", token=1)
    await store.mark_creating(record.id, token=1)
    with pytest.raises(StaleTransition):
        await store.abandon_provider_batch(record.id, token=1)


# -- durability ------------------------------------------------------------------------------------


async def test_acknowledged_batch_mode_writes_survive_a_sigkill_of_the_server(
    tmp_path: Path,
) -> None:
    mongo = LocalMongo(data_dir=tmp_path / "mongo")
    await mongo.start()
    try:
        async with Store(mongo.uri, "durability", timeout=0.5) as store:
            await store.ensure_indexes()
            keys = await register(store, 5)
            record = await store.claim_llm_requests("pb-durable", CHAT, MODEL, keys, token=1)
            await store.record_upload(record.id, "file-1", token=1)
            lease = await store.acquire_submitter_lease("worker-a", 600)
            await mongo.kill()  # right after the last acknowledgement
        await mongo.start()
        async with Store(mongo.uri, "durability", timeout=5.0) as store:
            assert {s for s, _ in (await states(store, keys)).values()} == {"submitted"}
            found = await store.get_provider_batch("pb-durable")
            assert found is not None and found.state is ProviderBatchState.UPLOADED
            kept = await store.submitter_lease()
            assert lease is not None and kept is not None
            assert (kept.holder, kept.token) == (lease.holder, lease.token)
            assert abs(kept.expires_at - lease.expires_at) < timedelta(milliseconds=1)
    finally:
        await mongo.stop()


# -- helpers ---------------------------------------------------------------------------------------


async def advance_to_collecting(store: Store, record_id: str, status: str = "completed") -> None:
    await store.record_upload(record_id, "file-1", token=1)
    await store.mark_creating(record_id, token=1)
    await store.record_created(record_id, "batch_1", "validating", token=1)
    await store.begin_collecting(record_id, status, token=1)


def answer_line(key: str, content: str) -> str:
    return (
        json.dumps(
            {
                "id": "batch_req_1",
                "custom_id": key,
                "response": {
                    "status_code": 200,
                    "request_id": f"req_{content}",
                    "body": {
                        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                    },
                },
                "error": None,
            }
        )
        + "\n"
    )


def error_line(key: str, status: int, code: str | None) -> str:
    return (
        json.dumps(
            {
                "custom_id": key,
                "response": {
                    "status_code": status,
                    "body": {"error": {"message": "refused", "code": code, "type": None}},
                },
                "error": None,
            }
        )
        + "\n"
    )


def not_run_line(key: str, code: str) -> str:
    return (
        json.dumps(
            {"custom_id": key, "response": None, "error": {"code": code, "message": "not run"}}
        )
        + "\n"
    )


async def test_claiming_for_a_record_past_claiming_claims_nothing_more(store: Store) -> None:
    keys = await register(store, 4)
    record = await store.claim_llm_requests(new_id(), CHAT, MODEL, keys[:2], token=1)
    with pytest.raises(StaleTransition):
        await store.claim_llm_requests(record.id, CHAT, MODEL, keys, token=1)
    assert [s for s, _ in (await states(store, keys[2:])).values()] == ["pending", "pending"]


async def test_concurrent_registrations_of_one_call_make_one_record(
    store: Store, local_mongo: LocalMongo
) -> None:
    made = request(7)
    async with workers(local_mongo, store, 6) as others:
        got = await asyncio.gather(
            *(s.register_llm_request(made, step_id="step-7", batch_id="b1") for s in others)
        )
    assert len({record.key for record in got}) == 1
    assert (await store.count_llm_requests(batch_id="b1"))["pending"] == 1
