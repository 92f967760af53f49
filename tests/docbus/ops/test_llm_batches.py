"""``docbus llm-batches`` and its queries: provider-batch records read back, and a docbus batch
cancelled and resumed — store records written through the store's own transitions, provider
batches made with the real ``openai`` SDK on the offline server's Batch API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from rich.console import Console

from docbus import cli
from docbus.cli import llm_batches as llm_batches_cli
from docbus.llm_batch import METADATA_KEY, BatchRequest, FileLimits, plan_files
from docbus.local.llm_server import LLMServer
from docbus.local.mongo import LocalMongo
from docbus.ops.llm_batches import llm_progress
from docbus.store import LLMRequestState, ParkedMessage, Store

MODEL = "docbus-offline"
TOKEN = 1


def body(tag: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Acme Corp event {tag}."}]}


async def register(store: Store, batch_id: str, count: int) -> list[str]:
    keys = []
    for i in range(count):
        made = BatchRequest.of(f"{batch_id}-step-{i}", body(f"{batch_id}-{i}"))
        await store.register_llm_request(
            made, step_id=f"{batch_id}-step-{i}", batch_id=batch_id, doc_id=f"d{i}"
        )
        keys.append(made.key)
    return keys


async def submit(store: Store, sdk: openai.AsyncOpenAI, keys: list[str]) -> str:
    """Claim ``keys`` into a record, upload, create at the provider; the record's id."""
    records = await store.llm_requests(keys)
    [planned] = plan_files((records[k].as_request() for k in keys), FileLimits()).files
    record_id = f"pb-{uuid.uuid4().hex[:12]}"
    record = await store.claim_llm_requests(
        record_id, planned.endpoint, planned.model, planned.keys, token=TOKEN
    )
    uploaded = await sdk.files.create(file=(f"{record_id}.jsonl", planned.content), purpose="batch")
    await store.record_upload(record.id, uploaded.id, token=TOKEN)
    await store.mark_creating(record.id, token=TOKEN)
    batch = await sdk.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={METADATA_KEY: record.id},
    )  # fmt: skip
    await store.record_created(record.id, batch.id, batch.status, token=TOKEN)
    return record.id


@pytest.fixture
async def sdk(llm_server: LLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    llm_server.configure(batch={"in_progress_seconds": 3600})  # they stay open
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, local_mongo: LocalMongo, store: Store, llm_server: LLMServer
) -> None:
    for name in list(os.environ):
        if name.startswith("DOCBUS_") or name.startswith(("OPENAI_", "AZURE_OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)
    monkeypatch.setenv("DOCBUS_LLM__BASE_URL", llm_server.base_url)


def _command(argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    llm_batches_cli.add_arguments(parser)
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.run_command(
            "llm-batches",
            lambda: llm_batches_cli.run(args, console=Console(file=out, width=250)),
        )
    return code, out.getvalue(), err.getvalue()


async def command(*argv: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(_command, list(argv))


async def three_batches(store: Store, sdk: openai.AsyncOpenAI) -> dict[str, Any]:
    """b1: 3 requests in its own open provider batch, 2 pending, 1 in a provider batch it
    shares with b2; b-live: a live-mode batch."""
    await store.record_batch("b1", topic="docs", llm_mode="batch")
    await store.record_batch("b2", topic="docs", llm_mode="batch")
    await store.record_batch("b-live", topic="docs", llm_mode="live")
    b1 = await register(store, "b1", 6)
    b2 = await register(store, "b2", 2)
    own = await submit(store, sdk, b1[:3])
    shared = await submit(store, sdk, [b1[3], *b2])
    return {"b1": b1, "b2": b2, "own": own, "shared": shared}


async def test_list_and_show_read_the_provider_batches_newest_first(
    store: Store, sdk: openai.AsyncOpenAI, env: None
) -> None:
    made = await three_batches(store, sdk)
    code, out, err = await command("list", "--json")
    assert code == 0, err
    listed = json.loads(out)["provider_batches"]
    assert [b["id"] for b in listed] == [made["shared"], made["own"]]
    assert listed[0]["batch_ids"] == ["b1", "b2"] and listed[0]["requests"] == 3
    assert listed[1]["state"] == "open" and listed[1]["provider_status"] in (
        "validating", "in_progress",
    )  # fmt: skip
    code, out, err = await command("list", "--batch", "b2")
    assert code == 0 and made["shared"] in out and made["own"] not in out, err
    provider_id = listed[1]["provider_batch_id"]
    code, out, err = await command("show", provider_id, "--json")
    assert code == 0 and json.loads(out)["id"] == made["own"], err
    code, out, err = await command("show", made["own"])
    assert code == 0 and provider_id in out and "docbus-offline" in out, err
    assert "no (still open)" in out  # its files: not deleted while the batch runs
    assert json.loads((await command("show", made["own"], "--json"))[1])["files_deleted_at"] is None
    await store.mark_provider_batch_files_deleted(made["own"])
    code, out, err = await command("show", made["own"], "--json")
    assert code == 0 and json.loads(out)["files_deleted_at"] is not None, err
    code, out, err = await command("show", made["own"])
    assert code == 0 and "yes, 20" in out, err
    code, out, err = await command("show", "batch_nope")
    assert code == 1 and out == "" and err.count("\n") == 1 and "no provider batch" in err


async def test_cancel_holds_the_batch_and_cancels_its_own_provider_batches_then_resume(
    store: Store, sdk: openai.AsyncOpenAI, env: None, llm_server: LLMServer
) -> None:
    made = await three_batches(store, sdk)
    await store.park(
        ParkedMessage(
            topic="docs", subscription="alpha", sequence_number=7, reason="AwaitingBatch",
            batch_id="b1", doc_id="d4", deferred=True,
        )
    )  # fmt: skip
    code, out, err = await command("cancel", "b1", "--json")
    assert code == 0, out + err
    outcome = json.loads(out)
    own = await store.get_provider_batch(made["own"])
    shared = await store.get_provider_batch(made["shared"])
    assert own is not None and shared is not None
    assert outcome["held"] == 2 and outcome["cancelled"] == [own.provider_batch_id]
    assert outcome["shared"] == [shared.provider_batch_id] and outcome["failed"] == {}
    assert (await sdk.batches.retrieve(own.provider_batch_id or "")).status in (
        "cancelling", "cancelled",
    )  # fmt: skip
    assert (await sdk.batches.retrieve(shared.provider_batch_id or "")).status == "in_progress"
    requests = await store.llm_requests(made["b1"] + made["b2"])
    assert [requests[k].state for k in made["b1"][4:]] == [LLMRequestState.HELD] * 2
    assert requests[made["b2"][0]].state == LLMRequestState.SUBMITTED  # b2 untouched
    record = await store.get_batch("b1")
    assert record is not None and record.llm_cancelled_at is not None
    progress = await llm_progress(store, "b1")
    assert progress.requests["held"] == 2 and progress.cancelled_at is not None
    [parked] = await store.parked(batch_id="b1")
    assert parked.resume_requested_at is None  # its document stays parked
    code, out, err = await command("resume", "b1")
    assert code == 0, err
    assert "2 held LLM request(s) pending again" in out and "resume 1 parked" in out
    requests = await store.llm_requests(made["b1"][4:])
    assert {r.state for r in requests.values()} == {LLMRequestState.PENDING}
    [parked] = await store.parked(batch_id="b1")
    assert parked.resume_requested_at is not None
    record = await store.get_batch("b1")
    assert record is not None and record.llm_cancelled_at is None


async def test_bad_input_is_one_line_and_a_non_zero_exit(
    store: Store, sdk: openai.AsyncOpenAI, env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    await three_batches(store, sdk)
    code, out, err = await command("cancel", "nope")
    assert code == 1 and out == "" and err.count("\n") == 1 and "no batch 'nope'" in err
    code, out, err = await command("cancel", "b-live")
    assert code == 2 and err.count("\n") == 1 and "no batch-mode LLM requests" in err
    code, out, err = await command("resume", "b-live")
    assert code == 2 and err.count("\n") == 1
    monkeypatch.delenv("DOCBUS_LLM__BASE_URL")
    code, out, err = await command("cancel", "b1")
    assert code == 2 and err.count("\n") == 1 and "no LLM is configured" in err
    held = await llm_progress(store, "b1")
    assert held.requests["held"] == 0  # refused before anything was held
