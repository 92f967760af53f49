"""``ctx.llm`` in batch mode: requests registered instead of sent, the round barrier, stored
answers used as live ones are (audit, cost at the batch price, re-asks), failures as dead
letters; and the mode's settings, resolution and prices.

Against SecantusDB and the offline LLM server (its Batch API through the real ``openai`` SDK).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from docbus.llm_batch import SubmitPolicy
from docbus.local.llm_server import LLMServer, LLMServerConfig
from docbus.settings import LLMBatchSettings, LLMSettings, ModelPrice, Settings
from docbus.store import LLMRequestState, Store
from handlers import Context, Document, handler
from handlers.builtin.entities import entities
from handlers.errors import AwaitingBatch, DeadLetter, OverBudget
from handlers.llm import LLMClient, Price, PriceTable
from handlers.llm.batch import submitter_options
from handlers.llm.mode import resolve_llm_mode
from handlers.testing import run_handler
from tests.handlers.llm_support import chat_requests

TEXT = "Acme Metals reported a fire at its plant in Ostrava; Globex Logistics expects delays."


class Gist(BaseModel):
    summary: str


class Names(BaseModel):
    organisations: list[str]


@handler(topic="t", subscription="s", llm_mode="batch")
async def two_at_once(doc: Document, ctx: Context) -> dict[str, Any]:
    """Two steps awaited together, the second with two sub-steps awaited together."""
    assert ctx.llm is not None
    llm = ctx.llm

    async def both() -> list[str]:
        a = await ctx.step("gist", llm.extract, Gist, f"Summarise: {doc.text}")
        return [a.summary]

    async def nested() -> list[Any]:
        inner = await asyncio.gather(
            ctx.step("n1", llm.extract, Names, f"Names in: {doc.text}"),
            ctx.step("n2", llm.complete, f"One word for: {doc.text}"),
        )
        return [str(x) for x in inner]

    first, second = await asyncio.gather(ctx.step("one", both), ctx.step("two", nested))
    return {"first": first, "second": second}


@handler(topic="t", subscription="s", llm_mode="batch")
async def same_twice(doc: Document, ctx: Context) -> dict[str, str]:
    assert ctx.llm is not None
    llm = ctx.llm

    async def twice() -> list[str]:
        return list(await asyncio.gather(llm.complete(doc.text), llm.complete(doc.text)))

    answers = await ctx.step("twice", twice)
    return {"a": answers[0], "b": answers[1]}


def batch_client(
    server: LLMServer, store: Store, *, mode: str = "batch", **batch: Any
) -> LLMClient:
    batch.setdefault("max_wait", 0.0)
    batch.setdefault("poll_base", 0.01)
    llm = LLMSettings(
        base_url=server.base_url,
        model="docbus-offline",
        mode=mode,  # type: ignore[arg-type]
        batch=LLMBatchSettings(**batch),
    )
    return LLMClient.from_settings(Settings(llm=llm), store)


async def rounds_until_done(
    fn: Any, doc: Any, store: Store, client: LLMClient, most: int = 6, **kwargs: Any
) -> tuple[Any, int]:
    """Run ``fn`` as the worker would: park on AwaitingBatch, submit, run again."""
    submitter = client.batch_submitter("test")
    for round_number in range(1, most + 1):
        try:
            return await run_handler(fn, doc, store=store, llm=client, **kwargs), round_number
        except AwaitingBatch:
            report = await submitter.run_once()
            assert report.settled >= 1, report
    raise AssertionError(f"not done after {most} rounds")


# -- mode, prices, settings (pure) ----------------------------------------------------------------


def test_the_nearest_choice_of_mode_wins_and_ordered_handlers_stay_live() -> None:
    assert resolve_llm_mode(None, None, "live") == "live"
    assert resolve_llm_mode(None, None, "batch") == "batch"
    assert resolve_llm_mode(None, "batch", "live") == "batch"
    assert resolve_llm_mode("live", "batch", "batch") == "live"
    assert resolve_llm_mode("batch", "live", "live") == "batch"
    assert resolve_llm_mode("weird", None, "batch") == "batch"
    assert resolve_llm_mode("batch", "batch", "batch", ordered=True) == "live"


def test_an_ordered_handler_refuses_batch_mode_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="ordered handler cannot wait hours"):

        @handler(topic="t", subscription="s", ordered_by="account", llm_mode="batch")
        async def ordered(doc: Document, ctx: Context) -> dict[str, str]:
            return {}

    @handler(topic="t", subscription="s", ordered_by="account", llm_mode="live")
    async def fine(doc: Document, ctx: Context) -> dict[str, str]:
        return {}


def test_batch_prices_default_to_half_and_can_be_set() -> None:
    price = Price(0.15, 0.60)
    assert price.cost(1_000_000, 1_000_000, llm_mode="batch") == pytest.approx(0.375)
    assert price.cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    table = PriceTable.from_settings(
        LLMSettings(
            pricing={"mine": ModelPrice(input=1.0, output=2.0, batch_input=0.4, batch_output=0.8)}
        )
    )
    assert table.cost("mine", 1_000_000, 1_000_000, llm_mode="batch") == pytest.approx(1.2)
    assert table.cost("gpt-4o-mini", 2_000_000, 0, llm_mode="batch") == pytest.approx(0.15)


def test_llm_batch_settings_become_the_submitters_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCBUS_LLM__MODE", "batch")
    monkeypatch.setenv("DOCBUS_LLM__BATCH__MAX_REQUESTS_PER_FILE", "100000")
    monkeypatch.setenv("DOCBUS_LLM__BATCH__MAX_WAIT", "5")
    monkeypatch.setenv("DOCBUS_LLM__BATCH__POLL_MAX", "60")
    monkeypatch.setenv("DOCBUS_LLM__BATCH__MAX_EXPIRIES", "4")
    settings = Settings()
    assert settings.llm.mode == "batch"
    options = submitter_options(settings.llm.batch, azure=True)
    assert options.limits.max_requests == 100_000
    assert options.policy == SubmitPolicy(max_wait=5.0)
    assert options.poll.cap == 60.0
    assert options.settle_limits.max_expiries == 4
    assert options.url_for == {"/v1/chat/completions": "/chat/completions"}
    with pytest.raises(ValueError, match="renew_every"):
        LLMBatchSettings(lease_ttl=10, renew_every=10)


# -- ctx.llm in batch mode ---------------------------------------------------------------------


async def test_three_steps_take_three_rounds_at_half_the_price_and_match_live(
    llm_server: LLMServer, store: Store
) -> None:
    from tests.handlers.test_builtin_handlers import FIRE as fire

    async with batch_client(llm_server, store, mode="live") as live:
        live_result = await run_handler(entities, fire, store=store, llm=live, batch_id="live")
    live_calls = await store.llm_calls("live")
    assert chat_requests(llm_server) == 3
    await store.record_batch("night", topic="documents")
    async with batch_client(llm_server, store) as client:
        result, rounds = await rounds_until_done(
            entities, fire, store, client, batch_id="night", doc_id="fire-at-night"
        )
    assert rounds == 4  # three rounds of one request each, then the run that finishes
    assert result == live_result  # the same bodies, the same deterministic answers
    assert chat_requests(llm_server) == 3  # nothing went to the live endpoint
    assert llm_server.batch_api.stats()["created"] == 3
    calls = await store.llm_calls("night")
    assert [c.step for c in calls] == ["classify", "extract", "summarise"]
    assert all(c.llm_mode == "batch" and c.provider_batch_id and c.custom_id for c in calls)
    live_cost = sum(c.cost_usd for c in live_calls)
    assert sum(c.cost_usd for c in calls) == pytest.approx(live_cost / 2)
    batch = await store.get_batch("night")
    assert batch is not None and batch.cost.usd == pytest.approx(live_cost / 2)
    assert batch.cost.calls == 3


async def test_a_redelivery_reuses_answers_and_writes_each_audit_row_once(
    llm_server: LLMServer, store: Store
) -> None:
    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch) as first:
            await run_handler(two_at_once, TEXT, store=store, llm=client, batch_id="b")
        with pytest.raises(AwaitingBatch) as again:  # a redelivery before the answers
            await run_handler(two_at_once, TEXT, store=store, llm=client, batch_id="b")
        assert set(again.value.keys) == set(first.value.keys)
        assert await store.count_llm_requests() == {**zero(), "pending": 3}
        result, rounds = await rounds_until_done(two_at_once, TEXT, store, client, batch_id="b")
        assert rounds == 2
        # a crash before the result: the whole handler again, from checkpoints and answers
        await store.database["checkpoints"].delete_many({})
        again_result = await run_handler(two_at_once, TEXT, store=store, llm=client, batch_id="b")
    assert again_result == result
    assert llm_server.batch_api.stats()["created"] == 1
    assert len(await store.llm_calls("b")) == 3


def zero() -> dict[str, int]:
    return {state.value: 0 for state in LLMRequestState}


async def test_concurrent_steps_and_sub_steps_all_register_before_the_delivery_parks(
    llm_server: LLMServer, store: Store
) -> None:
    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch) as waiting:
            await run_handler(two_at_once, TEXT, store=store, llm=client)
    assert len(waiting.value.keys) == 3  # gist, n1 and n2: one round for all
    records = await store.llm_requests(waiting.value.keys)
    assert {r.state for r in records.values()} == {LLMRequestState.PENDING}


async def test_two_identical_calls_in_one_step_are_two_requests(
    llm_server: LLMServer, store: Store
) -> None:
    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch) as waiting:
            await run_handler(same_twice, TEXT, store=store, llm=client)
        assert len(waiting.value.keys) == 2
        result, _ = await rounds_until_done(same_twice, TEXT, store, client)
    assert result["a"] == result["b"]


async def test_a_schema_failure_in_a_batch_answer_is_re_asked_in_the_next_round(
    llm_server: LLMServer, store: Store
) -> None:
    llm_server.configure(faults={"rate_schema": 1.0})
    async with batch_client(llm_server, store) as client:
        submitter = client.batch_submitter("test")
        with pytest.raises(AwaitingBatch):
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="s")
        await submitter.run_once()  # answered, but not by the schema
        llm_server.configure(faults={"rate_schema": 0.0})
        with pytest.raises(AwaitingBatch):  # the re-ask: a new request, the next round
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="s")
        await submitter.run_once()
        with pytest.raises(AwaitingBatch):  # classify is done: extract waits now
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="s")
    calls = await store.llm_calls("s")
    assert [(c.step, c.reask, c.error_type) for c in calls] == [
        ("classify", 0, "SchemaValidationError"),
        ("classify", 1, None),
    ]


async def test_re_asks_exhausted_dead_letter_as_live_does(
    llm_server: LLMServer, store: Store
) -> None:
    llm_server.configure(faults={"rate_schema": 1.0})
    async with batch_client(llm_server, store) as client:
        with pytest.raises(DeadLetter) as dead:
            await rounds_until_done(entities, TEXT, store, client, batch_id="s")
    assert dead.value.reason == "SchemaValidationFailed"
    assert len(await store.llm_calls("s")) == 3  # the ask and its two re-asks


async def test_a_failed_request_is_the_dead_letter_the_provider_named(
    llm_server: LLMServer, store: Store
) -> None:
    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch) as waiting:
            await run_handler(entities, TEXT, store=store, llm=client)
        await store.fail_llm_requests(waiting.value.keys, "BatchExpired", "not answered twice")
        with pytest.raises(DeadLetter) as dead:
            await run_handler(entities, TEXT, store=store, llm=client)
    assert dead.value.reason == "BatchExpired"
    assert dead.value.description.startswith("classify: not answered twice")


async def test_the_batch_records_mode_wins_over_the_settings(
    llm_server: LLMServer, store: Store
) -> None:
    await store.record_batch("urgent", topic="documents")
    await store.database["batches"].update_one({"_id": "urgent"}, {"$set": {"llm_mode": "live"}})
    await store.record_batch("night", topic="documents")
    await store.database["batches"].update_one({"_id": "night"}, {"$set": {"llm_mode": "batch"}})
    assert await store.batch_llm_mode("urgent") == "live"
    assert await store.batch_llm_mode("nothing") is None
    async with batch_client(llm_server, store, mode="batch") as client:
        await run_handler(entities, TEXT, store=store, llm=client, batch_id="urgent")
        assert chat_requests(llm_server) == 3
    async with batch_client(llm_server, store, mode="live") as client:
        with pytest.raises(AwaitingBatch):
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="night", doc_id="n")
    assert chat_requests(llm_server) == 3


async def test_collecting_a_provider_batch_twice_counts_its_cost_once(
    llm_server: LLMServer, store: Store
) -> None:
    await store.record_batch("b", topic="documents")
    assert await store.add_provider_batch_cost(
        "pb-1", "b", usd=0.5, prompt_tokens=10, completion_tokens=5, calls=2
    )
    assert not await store.add_provider_batch_cost(
        "pb-1", "b", usd=0.5, prompt_tokens=10, completion_tokens=5, calls=2
    )
    batch = await store.get_batch("b")
    assert batch is not None and (batch.cost.usd, batch.cost.calls) == (0.5, 2)


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(api_key="azure-key")])
async def test_azure_openai_global_batch_through_the_same_client(
    llm_server: LLMServer, store: Store
) -> None:
    azure = LLMSettings(
        azure_endpoint=llm_server.base_url.removesuffix("/v1"),
        azure_api_key=SecretStr("azure-key"),
        model="docbus-offline",
        mode="batch",
        batch=LLMBatchSettings(max_wait=0.0, poll_base=0.01),
    )
    async with LLMClient.from_settings(Settings(llm=azure), store) as client:
        assert client.batch_options.url_for == {"/v1/chat/completions": "/chat/completions"}
        submitter = client.batch_submitter("azure")
        assert submitter.client is client.openai  # shared, not a copy
        result, rounds = await rounds_until_done(entities, TEXT, store, client, batch_id="az")
    assert rounds == 4 and result.summary
    assert chat_requests(llm_server) == 0
    calls = await store.llm_calls("az")
    assert [c.llm_mode for c in calls] == ["batch"] * 3


async def test_a_delivery_whose_requests_are_held_waits_again(
    llm_server: LLMServer, store: Store
) -> None:
    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch):
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="held")
        assert await store.hold_llm_requests("held") == 1  # its docbus batch cancelled
        assert (await client.batch_submitter("test").run_once()).created == 0
        with pytest.raises(AwaitingBatch):  # resumed meanwhile: it parks again
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="held")
        assert await store.release_held_llm_requests("held") == 1  # resumed
        result, _ = await rounds_until_done(entities, TEXT, store, client, batch_id="held")
    assert result.summary


async def test_a_new_submitter_resumes_what_a_crashed_one_settled_but_never_said(
    llm_server: LLMServer, store: Store
) -> None:
    from docbus.llm_batch.submitter import Submitter
    from docbus.store import ParkedMessage

    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch) as waiting:
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="c")
        parked = ParkedMessage(
            topic="documents",
            subscription="entities",
            sequence_number=1,
            reason="AwaitingBatch",
            llm_requests=list(waiting.value.keys),
            deferred=True,
        )
        await store.park(parked)
        # settles and applies, then "dies" before its on_done hook: nobody is marked
        crashed = Submitter(store, client.openai, holder="w1", options=client.batch_options)
        assert (await crashed.run_once()).settled == 1
        await crashed.release()
        assert (await store.parked())[0].resume_requested_at is None
        report = await client.batch_submitter("w2").run_once()  # takes the lease over
    assert report.holder
    assert (await store.parked())[0].resume_requested_at is not None


async def test_open_requests_count_against_the_budget_before_they_are_paid(
    llm_server: LLMServer, store: Store
) -> None:
    await store.record_batch("tight", topic="documents")
    await store.set_batch_budget("tight", 0.000001)  # less than one request
    async with batch_client(llm_server, store) as client:
        with pytest.raises(AwaitingBatch) as first:
            await run_handler(entities, TEXT, store=store, llm=client, batch_id="tight")
        # nothing is paid yet, but the first request's estimate already uses the budget up
        with pytest.raises(OverBudget):
            await run_handler(entities, f"{TEXT} Again.", store=store, llm=client, batch_id="tight")
    [record] = (await store.llm_requests(first.value.keys)).values()
    assert record.estimated_usd > 0
    assert await store.reserved_llm_usd("tight") == pytest.approx(record.estimated_usd)
    batch = await store.get_batch("tight")
    assert batch is not None and batch.over_budget and batch.cost.usd == 0
