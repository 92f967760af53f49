"""The LLM client's pure parts: failure translation, schemas, pricing, tokens, public names."""

from __future__ import annotations

import logging
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel, Field, SecretStr

import handlers.llm
from docbus.settings import LLMSettings, Settings
from docbus.store import Store
from handlers import DeadLetter, Retry, SystemicFailure
from handlers.llm import (
    DEFAULT_PRICES,
    LLMClient,
    LLMConfigError,
    Price,
    PriceTable,
    ResponseSchema,
    TokenCounter,
    heuristic_tokens,
    parse_answer,
    translate,
)
from handlers.llm.errors import unsupported_parameter
from tests.handlers.llm_support import Invoice, Summary

_REQUEST = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")


def status_error(
    status: int,
    message: str = "failed",
    *,
    code: str | None = None,
    type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    """A real SDK exception for a real HTTP response, as the SDK builds it."""
    error = {"message": message, "type": type, "param": param, "code": code}
    response = httpx2.Response(
        status, json={"error": error}, headers=headers or {}, request=_REQUEST
    )
    client = openai.OpenAI(api_key="x", base_url="https://api.example.test/v1")
    return client._make_status_error(message, body={"error": error}, response=response)


@pytest.mark.parametrize(
    ("exc", "kind", "reason"),
    [
        (status_error(401, code="invalid_api_key"), SystemicFailure, "AuthenticationFailed"),
        (status_error(403), SystemicFailure, "PermissionDenied"),
        (
            status_error(404, "The model `x` does not exist", code="model_not_found"),
            SystemicFailure,
            "ModelNotFound",
        ),
        (status_error(404, "Invalid URL (POST /v2/chat)"), SystemicFailure, "EndpointNotFound"),
        (status_error(404, "nope", code="DeploymentNotFound"), SystemicFailure, "ModelNotFound"),
        (
            status_error(429, code="insufficient_quota", type="insufficient_quota"),
            SystemicFailure,
            "QuotaExhausted",
        ),
        (
            status_error(429, code="rate_limit_exceeded", headers={"retry-after-ms": "2500"}),
            Retry,
            "LLMRateLimited",
        ),
        (
            status_error(429, "Request too large", headers={"x-should-retry": "false"}),
            DeadLetter,
            "LLMRequestTooLarge",
        ),
        (status_error(500), Retry, "LLMServerError500"),
        (status_error(503, headers={"retry-after": "4"}), Retry, "LLMServerError503"),
        (
            status_error(
                400,
                "This model's maximum context length is 10 tokens",
                code="context_length_exceeded",
            ),
            DeadLetter,
            "ContextLengthExceeded",
        ),
        (
            status_error(400, "The response was filtered", code="content_filter"),
            DeadLetter,
            "ContentFiltered",
        ),
        (status_error(400, "Invalid 'messages'"), DeadLetter, "LLMBadRequest"),
        (status_error(422, "Unprocessable"), DeadLetter, "LLMBadRequest"),
        (openai.APITimeoutError(request=_REQUEST), Retry, "LLMTimeout"),
        (openai.APIConnectionError(request=_REQUEST), Retry, "LLMConnectionError"),
    ],
)
def test_every_openai_failure_translates_to_one_outcome(
    exc: BaseException, kind: type[Exception], reason: str
) -> None:
    outcome = translate(exc)
    assert type(outcome) is kind
    assert outcome.reason == reason  # type: ignore[attr-defined]


def test_a_rate_limit_retry_carries_the_servers_wait() -> None:
    outcome = translate(status_error(429, headers={"retry-after-ms": "2500"}))
    assert isinstance(outcome, Retry) and outcome.after == pytest.approx(2.5)
    assert translate(status_error(503, headers={"retry-after": "4"})).after == 4.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("exc", "parameter"),
    [
        (
            status_error(
                400,
                "Invalid parameter: 'response_format' of type 'json_schema' is not "
                "supported with this model.",
                param="response_format",
            ),
            "response_format",
        ),
        (
            status_error(
                400,
                "Unsupported value: 'temperature' does not support 0.0 with this "
                "model. Only the default (1) value is supported.",
                param="temperature",
            ),
            "temperature",
        ),
        (
            status_error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model."
                " Use 'max_completion_tokens' instead.",
                param="max_tokens",
            ),
            "max_tokens",
        ),
        (
            status_error(400, "Unrecognized request argument supplied: max_completion_tokens"),
            "max_completion_tokens",
        ),
        (status_error(400, "maximum context length", code="context_length_exceeded"), None),
        (status_error(400, "Invalid 'messages'"), None),
        (status_error(500), None),
    ],
)
def test_unsupported_parameters_are_recognised(exc: BaseException, parameter: str | None) -> None:
    assert unsupported_parameter(exc) == parameter


# -- schemas -----------------------------------------------------------------------------------


class WithOptional(BaseModel):
    name: str
    nickname: str | None = None


class WithMapping(BaseModel):
    scores: dict[str, float]


class WithLength(BaseModel):
    code: str = Field(min_length=3)


def test_a_model_with_every_field_required_is_sent_strict_and_closed() -> None:
    schema = ResponseSchema.of(Invoice)
    assert schema.strict and schema.name == "Invoice"
    body = schema.schema
    assert body["additionalProperties"] is False
    assert body["required"] == list(body["properties"])
    seller = body["properties"]["seller"]  # a $ref with a description: inlined and closed
    assert "$ref" not in seller and seller["description"] == "who issued the invoice"
    assert seller["additionalProperties"] is False
    assert body["$defs"]["Party"]["additionalProperties"] is False
    assert schema.response_format()["json_schema"]["strict"] is True


@pytest.mark.parametrize("model", [WithOptional, WithMapping, WithLength])
def test_a_schema_strict_mode_cannot_express_is_sent_as_is_non_strict(
    model: type[BaseModel],
) -> None:
    schema = ResponseSchema.of(model)
    assert not schema.strict
    assert schema.schema == model.model_json_schema()


def test_answers_in_code_fences_are_accepted() -> None:
    text = '```json\n{"summary": "s", "keywords": ["a"]}\n```'
    assert parse_answer(Summary, text) == Summary(summary="s", keywords=["a"])


# -- pricing -----------------------------------------------------------------------------------


def test_prices_match_dated_snapshots_by_the_longest_name() -> None:
    table = PriceTable()
    assert table.price("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.price("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert table.price("gpt-4.1-nano") == Price(0.10, 0.40)
    assert table.price("gpt-4omni") is None and table.price("claude-3") is None
    assert table.cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.5)
    assert DEFAULT_PRICES["docbus-offline"] == DEFAULT_PRICES["gpt-4o-mini"]


def test_settings_override_and_extend_the_price_table() -> None:
    prices = {"gpt-4o": {"input": 1, "output": 2}, "my-deploy": {"input": 3, "output": 4}}
    settings = Settings(llm=LLMSettings.model_validate({"pricing": prices}))
    table = PriceTable.from_settings(settings)
    assert table.price("gpt-4o") == Price(1, 2) and table.price("my-deploy") == Price(3, 4)
    assert table.cost("unknown", 10, 10, fallback="my-deploy") == pytest.approx(70 / 1_000_000)


def test_unknown_models_cost_nothing_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="handlers.llm.pricing"):
        assert table.cost("mystery-model", 100, 100) == 0.0
        assert table.cost("mystery-model", 100, 100) == 0.0
    assert [r.getMessage().count("mystery-model") for r in caplog.records] == [1]


# -- tokens, construction, public names --------------------------------------------------------


async def test_token_estimates_work_offline() -> None:
    counter = TokenCounter()
    await counter.load(within=2.0)
    assert counter.source in ("tiktoken", "heuristic")
    assert heuristic_tokens("Hello, world! 12345") == 6
    messages = [{"role": "user", "content": "Hello, world!"}]
    assert counter.count_messages(messages) >= 3 + 3 + 4


def test_a_client_needs_a_key_or_a_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMConfigError, match="no LLM is configured"):
        LLMClient.from_settings(Settings())


async def test_azure_clients_are_built_with_a_key_or_entra_id() -> None:
    keyed = LLMClient.from_settings(
        Settings(
            llm=LLMSettings(
                azure_endpoint="https://x.openai.azure.com", azure_api_key=SecretStr("k")
            )
        )
    )
    assert isinstance(keyed.openai, openai.AsyncAzureOpenAI)
    entra = LLMClient.from_settings(
        Settings(llm=LLMSettings(azure_endpoint="https://x.openai.azure.com"))
    )
    assert isinstance(entra.openai, openai.AsyncAzureOpenAI)
    assert entra._credential is not None  # DefaultAzureCredential, closed with the client
    await keyed.aclose()
    await entra.aclose()


def test_the_llm_package_exports_exactly_its_all() -> None:
    def order(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2), name

    exported = list(handlers.llm.__all__)
    assert exported == sorted(exported, key=order)
    public = {
        name
        for name, value in vars(handlers.llm).items()
        if not name.startswith("_")
        and name != "annotations"
        and not hasattr(value, "__path__")
        and type(value).__name__ != "module"
    }
    # the names load on first use: what is loaded is exported, and every export loads
    assert public <= set(exported)
    assert all(getattr(handlers.llm, name) is not None for name in exported)
    assert dir(handlers.llm) == sorted(exported)


# -- store figures the client relies on --------------------------------------------------------


async def test_batch_usage_keeps_reask_and_retry_spend_apart(store: Store) -> None:
    await store.record_batch("b1", topic="t")
    calls: list[dict[str, Any]] = [
        {"usd": 1.0, "prompt_tokens": 10, "completion_tokens": 1, "category": "first"},
        {"usd": 0.5, "prompt_tokens": 5, "completion_tokens": 2, "category": "reask"},
        {"usd": 0.25, "prompt_tokens": 2, "completion_tokens": 3, "category": "retry"},
    ]
    for call in calls:
        await store.add_batch_usage("b1", **call)
    batch = await store.get_batch("b1")
    assert batch is not None
    assert (batch.cost.usd, batch.cost.calls, batch.cost.prompt_tokens) == (1.75, 3, 17)
    assert (batch.cost.reasks.usd, batch.cost.reasks.completion_tokens) == (0.5, 2)
    assert (batch.cost.retries.usd, batch.cost.retries.calls) == (0.25, 1)


async def test_a_budget_above_the_spend_clears_over_budget(store: Store) -> None:
    await store.record_batch("b1", topic="t")
    await store.add_batch_usage("b1", usd=2.0)
    await store.set_batch_over_budget("b1", True)
    still = await store.set_batch_budget("b1", 1.5)
    assert still is not None and still.over_budget and still.budget_usd == 1.5
    raised = await store.set_batch_budget("b1", 3.0)
    assert raised is not None and not raised.over_budget
    assert await store.set_batch_budget("missing", 1.0) is None
