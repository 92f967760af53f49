"""The LLM client against the real offline server and the real store: extraction, fallbacks,
re-asks, the failure taxonomy, budgets and the audit trail."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from aiohttp import web
from pydantic import SecretStr

from docbus.local.llm_server import FAULT_HEADER, Faults, Limits, LLMServer, LLMServerConfig
from docbus.settings import LLMSettings, Settings
from docbus.store import Store
from handlers import DeadLetter, OverBudget, Retry, SystemicFailure
from handlers.llm import DEFAULT_PRICES, LLMClient, LLMOptions
from handlers.runtime import delivery_of
from tests.handlers.llm_support import (
    INVOICE_TEXT,
    Invoice,
    Party,
    Summary,
    chat_requests,
    make_client,
    make_ctx,
    seed_for,
    status_seed_for,
)

OTHER_TEXT = (
    "Globex Corporation of Toronto, Canada, reported record quarterly revenue and named a new "
    "chief executive; analysts in London expect further acquisitions in Europe."
)


def fast(client: LLMClient, **changes: Any) -> LLMClient:
    """The client with quick retries, so failure paths take milliseconds."""
    client.options = dataclasses.replace(client.options, retry_base=0.01, **changes)
    return client


# -- extraction --------------------------------------------------------------------------------


async def test_extract_returns_a_nested_model_through_strict_structured_outputs(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client)
        invoice = await ctx.llm.extract(Invoice, INVOICE_TEXT, system="Extract the invoice.")
    assert isinstance(invoice, Invoice)
    assert isinstance(invoice.seller, Party) and isinstance(invoice.buyer, Party)
    [row] = await store.llm_calls("b1")
    assert row.mode == "json_schema" and row.error_type is None
    assert row.parsed == invoice.model_dump(mode="json")
    assert Invoice.model_validate_json(row.response_text or "") == invoice


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(api_key="azure-key")])
async def test_azure_openai_is_reached_at_its_deployment_url_with_its_key_header(
    llm_server: LLMServer, store: Store
) -> None:
    azure = LLMSettings(
        azure_endpoint=llm_server.base_url.removesuffix("/v1"),
        azure_api_key=SecretStr("azure-key"),
        model="docbus-offline",
    )
    async with LLMClient.from_settings(Settings(llm=azure), store) as client:
        assert isinstance(client.openai, openai.AsyncAzureOpenAI)
        invoice = await make_ctx(store, llm=client).llm.extract(Invoice, INVOICE_TEXT)
    assert isinstance(invoice, Invoice)
    [row] = await store.llm_calls("b1")
    assert (row.model, row.mode, row.error_type) == ("docbus-offline", "json_schema", None)
    assert chat_requests(llm_server) == 1


async def test_complete_returns_free_text_and_is_audited(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client)
        text = await ctx.llm.complete(f"Summarise: {OTHER_TEXT}", max_tokens=30)
    assert text and "{" not in text
    [row] = await store.llm_calls("b1")
    assert (row.kind, row.mode, row.parsed, row.response_text) == ("complete", "text", None, text)
    assert row.completion_tokens <= 30


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(json_schema=False)])
async def test_a_server_without_structured_outputs_gets_json_mode_from_then_on(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        first = await make_ctx(store, llm=client).llm.extract(Invoice, INVOICE_TEXT)
        second = await make_ctx(store, doc_id="d2", llm=client).llm.extract(Summary, OTHER_TEXT)
    assert isinstance(first, Invoice) and isinstance(second, Summary)
    rows = await store.llm_calls("b1")
    assert [(r.mode, r.error_type) for r in rows] == [
        ("json_schema", "BadRequestError"),
        ("json_object", None),
        ("json_object", None),
    ]
    assert "JSON schema" in rows[1].messages[0]["content"]  # the schema went into the prompt
    assert chat_requests(llm_server) == 3


# -- re-asks -----------------------------------------------------------------------------------

_SCHEMA_FAULTS = Faults(rate_schema=0.5)
_MALFORMED_FAULTS = Faults(rate_malformed=0.5)


@pytest.mark.parametrize(
    ("llm_server_config", "expected_error"),
    [
        (
            LLMServerConfig(seed=seed_for(_SCHEMA_FAULTS, ["schema", None]), faults=_SCHEMA_FAULTS),
            "",
        ),
        (
            LLMServerConfig(
                seed=seed_for(_MALFORMED_FAULTS, ["malformed", None]), faults=_MALFORMED_FAULTS
            ),
            "Invalid JSON",
        ),
    ],
    ids=["schema-violation", "malformed-json"],
)
async def test_an_invalid_answer_is_re_asked_with_the_error_and_then_accepted(
    llm_server: LLMServer, store: Store, expected_error: str
) -> None:
    await store.record_batch("b1", topic="documents")
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client)
        invoice = await ctx.llm.extract(Invoice, INVOICE_TEXT)
    assert isinstance(invoice, Invoice)
    first, second = await store.llm_calls("b1")
    assert (first.reask, first.error_type, first.parsed) == (0, "SchemaValidationError", None)
    assert expected_error in (first.error_message or "")
    assert (second.reask, second.category, second.error_type) == (1, "reask", None)
    assert second.messages[-2] == {"role": "assistant", "content": first.response_text}
    assert first.error_message and first.error_message[:40] in second.messages[-1]["content"]
    batch = await store.get_batch("b1")
    assert batch is not None and batch.cost.reasks.calls == 1
    assert batch.cost.reasks.usd == pytest.approx(second.cost_usd)


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(faults=Faults(rate_schema=1.0))])
async def test_exhausted_re_asks_dead_letter_with_the_step_and_what_failed(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client)
        with pytest.raises(DeadLetter) as caught:
            await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT, max_reasks=2)
    assert caught.value.reason == "SchemaValidationFailed"
    assert caught.value.description.startswith("invoice: Invoice still invalid after 2 re-ask")
    assert caught.value.step == "invoice"
    rows = await store.llm_calls("b1")
    assert [(r.reask, r.step, r.error_type) for r in rows] == [
        (n, "invoice", "SchemaValidationError") for n in range(3)
    ]
    assert chat_requests(llm_server) == 3


# -- the audit trail ---------------------------------------------------------------------------

_AUDIT_FAULTS = Faults(rate_schema=0.5)


@pytest.mark.parametrize(
    "llm_server_config",
    [
        LLMServerConfig(
            seed=seed_for(_AUDIT_FAULTS, [None, "schema", None, None]), faults=_AUDIT_FAULTS
        )
    ],
)
async def test_audit_rows_are_complete_and_add_up_to_the_batch_totals(
    llm_server: LLMServer, store: Store
) -> None:
    await store.record_batch("b1", topic="documents")
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client)
        await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT, system="Be exact.")
        await ctx.step("summary", ctx.llm.extract, Summary, OTHER_TEXT)  # re-asked once
        redelivered = make_ctx(store, attempt=2, llm=client)
        await redelivered.step("tldr", redelivered.llm.complete, OTHER_TEXT, max_tokens=20)
    rows = await store.llm_calls("b1")
    assert [(r.step, r.reask, r.attempt, r.category) for r in rows] == [
        ("invoice", 0, 1, "first"),
        ("summary", 0, 1, "first"),
        ("summary", 1, 1, "reask"),
        ("tldr", 0, 2, "retry"),
    ]
    first = rows[0]
    price = DEFAULT_PRICES["docbus-offline"]
    assert first.id and first.batch_id == "b1" and first.doc_id == "d1"
    assert (first.handler, first.handler_version, first.message_id) == (
        "invoices",
        "1",
        ctx.message_id,
    )
    assert (first.kind, first.mode, first.retry, first.generation) == (
        "extract",
        "json_schema",
        0,
        0,
    )
    assert (first.model, first.response_model, first.finish_reason) == (
        "docbus-offline",
        "docbus-offline",
        "stop",
    )
    assert first.messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": INVOICE_TEXT},
    ]
    assert first.response_text and first.parsed and first.parsed["seller"]["name"]
    assert first.prompt_tokens > 50 and first.completion_tokens > 10
    assert first.cost_usd == pytest.approx(price.cost(first.prompt_tokens, first.completion_tokens))
    assert 0 < first.latency_s < 10
    assert (first.error_type, first.error_message) == (None, None)
    assert first.request_id and first.request_id.startswith("req_")
    assert before < first.created_at <= datetime.now(UTC)

    batch = await store.get_batch("b1")
    assert batch is not None
    cost = batch.cost
    assert cost.calls == len(rows) == chat_requests(llm_server)
    assert cost.usd == pytest.approx(sum(r.cost_usd for r in rows))
    assert cost.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert cost.completion_tokens == sum(r.completion_tokens for r in rows)
    served = llm_server.stats()["tokens"]
    assert (cost.prompt_tokens, cost.completion_tokens) == (served["prompt"], served["completion"])
    for part, category in ((cost.reasks, "reask"), (cost.retries, "retry")):
        mine = [r for r in rows if r.category == category]
        assert part.calls == len(mine) == 1
        assert part.usd == pytest.approx(sum(r.cost_usd for r in mine))
        assert part.prompt_tokens == sum(r.prompt_tokens for r in mine)
    assert await store.llm_spend("b1") == pytest.approx(cost.usd)


# -- the failure taxonomy ----------------------------------------------------------------------


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(api_key="sk-right-key-0001")])
async def test_a_bad_api_key_is_systemic_and_probe_tells_when_it_is_fixed(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store, api_key="sk-wrong-key-0002") as client:
        ctx = make_ctx(store, llm=client)
        with pytest.raises(SystemicFailure) as caught:
            await ctx.llm.extract(Invoice, INVOICE_TEXT)
        assert caught.value.reason == "AuthenticationFailed"
        assert not isinstance(caught.value, DeadLetter | Retry)
        assert chat_requests(llm_server) == 1  # not retried
        with pytest.raises(SystemicFailure):
            await client.probe()
        llm_server.configure(api_key="sk-wrong-key-0002")  # the key is now valid
        await client.probe()
        assert isinstance(await ctx.llm.extract(Invoice, INVOICE_TEXT), Invoice)
    rows = await store.llm_calls("b1")
    assert [r.error_type for r in rows] == ["AuthenticationError", None]


@pytest.mark.parametrize(
    ("llm_server_config", "model", "reason"),
    [
        (LLMServerConfig(faults=Faults(quota_exhausted=True)), None, "QuotaExhausted"),
        (LLMServerConfig(strict_model=True), "gpt-4o", "ModelNotFound"),
    ],
    ids=["quota", "model"],
)
async def test_exhausted_quota_and_unknown_models_are_systemic(
    llm_server: LLMServer, store: Store, model: str | None, reason: str
) -> None:
    async with make_client(llm_server, store) as client:
        with pytest.raises(SystemicFailure) as caught:
            await make_ctx(store, llm=client).llm.complete("hello", model=model)
        assert caught.value.reason == reason
        with pytest.raises(SystemicFailure):
            await client.probe(model)
    assert chat_requests(llm_server) == 2


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_an_endpoint_refusing_connections_is_systemic(store: Store, http_client: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LLMSettings(
        base_url=f"http://127.0.0.1:{port}/v1", model="docbus-offline", http_client=http_client
    )
    async with LLMClient.from_settings(Settings(llm=settings), store) as client:
        client.options = dataclasses.replace(client.options, retry_base=0.01)
        with pytest.raises(SystemicFailure) as caught:
            await make_ctx(store, llm=client).llm.complete("hello")
        assert caught.value.reason == "EndpointUnreachable"
        # what happened, not the aiohttp transport's "Request timed out."
        assert "connection refused" in caught.value.description, caught.value.description
        with pytest.raises(SystemicFailure) as probed:
            await client.probe()
        assert "connection refused" in probed.value.description, probed.value.description
    rows = await store.llm_calls("b1")
    assert len(rows) == 4  # unreachable_after: four refused connections in a row


@contextlib.asynccontextmanager
async def answering(*bodies: str) -> AsyncIterator[str]:
    """A bare HTTP server on 127.0.0.1 answering chat completions with ``bodies`` in turn (the
    last one for ever); yields its base URL."""
    answers = list(bodies)

    async def chat(request: web.Request) -> web.Response:
        body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(text=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_a_compatible_server_leaving_out_usage_and_refusal_is_understood(
    store: Store,
) -> None:
    answer = json.dumps({"summary": "x", "keywords": []})
    terse = json.dumps({"choices": [{"message": {"content": answer}, "finish_reason": "stop"}]})
    async with answering(terse) as base_url:
        server = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        async with LLMClient(server, options=LLMOptions(model="local"), store=store) as client:
            summary = await make_ctx(store, llm=client).llm.extract(Summary, OTHER_TEXT)
    assert summary == Summary(summary="x", keywords=[])
    [row] = await store.llm_calls("b1")
    assert (row.prompt_tokens, row.completion_tokens, row.error_type) == (0, 0, None)


async def test_an_answer_that_is_not_a_chat_completion_is_retried_as_invalid(
    store: Store,
) -> None:
    async with answering("<html>gateway says hello</html>") as base_url:
        server = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        options = LLMOptions(model="local", retry_base=0.01, max_retries=1)
        async with LLMClient(server, options=options, store=store) as client:
            with pytest.raises(Retry) as caught:
                await make_ctx(store, llm=client).llm.complete("hello")
    assert caught.value.reason == "LLMInvalidResponse"
    rows = await store.llm_calls("b1")
    assert [r.error_type for r in rows] == ["APIResponseValidationError"] * 2


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(limits=Limits(context_tokens=60))])
async def test_a_prompt_over_the_context_length_dead_letters_at_once(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        with pytest.raises(DeadLetter) as caught:
            await make_ctx(store, llm=client).llm.extract(Invoice, INVOICE_TEXT * 3)
    assert caught.value.reason == "ContextLengthExceeded"
    assert "maximum context length" in caught.value.description
    assert chat_requests(llm_server) == 1
    [row] = await store.llm_calls("b1")
    assert row.error_type == "BadRequestError"


_FLAKY = Faults(rate_500=0.5)


@pytest.mark.parametrize(
    "llm_server_config",
    [LLMServerConfig(seed=status_seed_for(_FLAKY, ["500", None]), faults=_FLAKY)],
)
async def test_a_transient_server_error_is_retried_inside_the_call(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        fast(client)
        assert isinstance(
            await make_ctx(store, llm=client).llm.extract(Invoice, INVOICE_TEXT), Invoice
        )
    rows = await store.llm_calls("b1")
    assert [(r.retry, r.category, r.error_type) for r in rows] == [
        (0, "first", "InternalServerError"),
        (1, "retry", None),
    ]


async def test_persistent_server_errors_become_a_retry_for_the_worker(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        fast(client)
        with pytest.raises(Retry) as caught:
            await make_ctx(store, llm=client).llm.complete(
                "hello", extra_headers={FAULT_HEADER: "503"}
            )
    assert caught.value.reason == "LLMServerError503"
    assert chat_requests(llm_server) == 1 + client.options.max_retries


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(faults=Faults(retry_after=120))])
async def test_a_long_retry_after_goes_to_the_worker_instead_of_waiting_here(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        with pytest.raises(Retry) as caught:
            await make_ctx(store, llm=client).llm.complete(
                "hello", extra_headers={FAULT_HEADER: "429"}
            )
    assert caught.value.after == pytest.approx(120)
    assert chat_requests(llm_server) == 1


# -- budgets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("write_behind", [False, True], ids=["in-line", "behind"])
async def test_an_exhausted_batch_budget_stops_spending_until_it_is_raised(
    llm_server: LLMServer, store: Store, write_behind: bool
) -> None:
    await store.record_batch("b1", topic="documents")
    async with make_client(llm_server, store, budget_per_batch_usd=0.000_001) as client:
        # behind too, a delivery's own first call counts before its second is allowed
        ctx = make_ctx(store, llm=client, write_behind=write_behind)
        await ctx.llm.extract(Invoice, INVOICE_TEXT)  # within budget: spends past it
        with pytest.raises(OverBudget) as caught:
            await ctx.llm.extract(Summary, OTHER_TEXT)
        assert (caught.value.batch_id, caught.value.scope) == ("b1", "batch")
        assert caught.value.spent > caught.value.budget == 0.000_001
        assert not isinstance(caught.value, DeadLetter | Retry)
        assert chat_requests(llm_server) == 1  # no LLM call was made
        batch = await store.get_batch("b1")
        assert batch is not None and batch.over_budget
        raised = await store.set_batch_budget("b1", 1.0)  # the batch's own budget wins
        assert raised is not None and not raised.over_budget
        assert isinstance(await ctx.llm.extract(Summary, OTHER_TEXT), Summary)
        await delivery_of(ctx).writes.flush()
    assert len(await store.llm_calls("b1")) == 2


async def test_a_document_budget_stops_that_document_only(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store, budget_per_document_usd=0.000_001) as client:
        first = make_ctx(store, doc_id="d1", llm=client)
        await first.llm.complete(OTHER_TEXT)
        with pytest.raises(OverBudget) as caught:
            await first.llm.complete(OTHER_TEXT)
        assert (caught.value.doc_id, caught.value.scope) == ("d1", "document")
        await make_ctx(store, doc_id="d2", llm=client).llm.complete(OTHER_TEXT)
    assert chat_requests(llm_server) == 2
