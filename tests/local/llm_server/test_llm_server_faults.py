"""Injected faults of the offline LLM server surface as the openai SDK's own exceptions."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from docbus.local.llm_server import (
    FAULT_HEADER,
    OFFLINE_MODEL,
    Faults,
    Latency,
    Limits,
    LLMServer,
    LLMServerConfig,
    count_tokens,
    schema_errors,
)
from tests.local.llm_server.llm_samples import API_KEY, FIRE, STRIKE


class Risk(BaseModel):
    supplier: str
    country: str
    score: float = Field(ge=0, le=1)
    keywords: list[str]


def messages(text: str = FIRE) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def fault(name: str) -> dict[str, str]:
    return {FAULT_HEADER: name}


def test_injected_429_is_a_rate_limit_error_with_retry_after(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(faults={"retry_after": 7.0})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=OFFLINE_MODEL, messages=messages(), extra_headers=fault("429")
        )
    headers = caught.value.response.headers
    assert headers["retry-after"] == "7"
    assert headers["retry-after-ms"] == "7000"
    assert caught.value.code == "rate_limit_exceeded"
    assert llm_server.stats()["outcomes"]["rate_limited"] == 1


def test_429_carries_openai_rate_limit_headers_when_limits_are_set(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(limits={"rpm": 100, "tpm": 100_000}, faults={"rate_429": 1.0})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert headers["x-ratelimit-remaining-requests"] == "100"
    assert "x-ratelimit-reset-tokens" in headers


@pytest.mark.parametrize(("name", "status"), [("500", 500), ("503", 503)])
def test_injected_5xx_is_an_internal_server_error(
    client: openai.OpenAI, name: str, status: int
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model=OFFLINE_MODEL, messages=messages(), extra_headers=fault(name)
        )
    assert caught.value.status_code == status
    assert caught.value.type == "server_error"


async def test_timeout_is_an_api_timeout_error(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(faults={"rate_timeout": 1.0, "timeout_hold": 10.0})
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await aclient.with_options(timeout=0.3).chat.completions.create(
            model=OFFLINE_MODEL, messages=messages()
        )
    assert time.monotonic() - started < 5


async def test_timeout_drop_closes_the_connection_after_the_hold(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(faults={"timeout_hold": 0.2, "timeout_mode": "drop"})
    started = time.monotonic()
    with pytest.raises(openai.APIConnectionError) as caught:
        await aclient.chat.completions.create(
            model=OFFLINE_MODEL, messages=messages(), extra_headers=fault("timeout")
        )
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert time.monotonic() - started >= 0.2
    assert llm_server.stats()["outcomes"]["timeout"] == 1


async def test_timeout_late_answers_after_the_hold(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(faults={"timeout_hold": 0.3, "timeout_mode": "late"})
    started = time.monotonic()
    completion = await aclient.chat.completions.create(
        model=OFFLINE_MODEL, messages=messages(), extra_headers=fault("timeout")
    )
    assert time.monotonic() - started >= 0.3
    assert completion.choices[0].message.content


def test_malformed_json_does_not_parse(client: openai.OpenAI, llm_server: LLMServer) -> None:
    completion = client.chat.completions.create(
        model=OFFLINE_MODEL,
        messages=messages(),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "risk", "schema": Risk.model_json_schema()},
        },
        extra_headers=fault("malformed"),
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(completion.choices[0].message.content or "")
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(
            model=OFFLINE_MODEL,
            messages=messages(),
            response_format=Risk,
            extra_headers=fault("malformed"),
        )
    assert llm_server.stats()["outcomes"]["malformed"] == 2


def test_schema_violation_is_valid_json_breaking_the_schema(client: openai.OpenAI) -> None:
    schema = Risk.model_json_schema()
    for text in (FIRE, STRIKE):
        completion = client.chat.completions.create(
            model=OFFLINE_MODEL,
            messages=messages(text),
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
            extra_headers=fault("schema"),
        )
        value = json.loads(completion.choices[0].message.content or "")
        assert schema_errors(schema, value)
        with pytest.raises(pydantic.ValidationError):
            Risk.model_validate(value)


def test_content_fault_rates_apply_to_json_answers_only(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(faults={"rate_malformed": 1.0})
    text = client.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    assert text.choices[0].message.content  # plain text is never "malformed"
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(
            model=OFFLINE_MODEL, messages=messages(), response_format=Risk
        )


def test_wrong_api_key_is_an_authentication_error_until_fixed(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(api_key="sk-the-real-key-0001")  # the key "rotated" under the client
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    assert caught.value.code == "invalid_api_key"
    assert "0001" not in str(caught.value.body)  # never echoes the server's key
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    llm_server.configure(api_key=API_KEY)  # fixed
    assert client.chat.completions.create(model=OFFLINE_MODEL, messages=messages()).choices
    assert llm_server.stats()["outcomes"]["unauthorized"] == 1


def test_quota_exhausted_is_a_non_retryable_rate_limit_error(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(faults={"quota_exhausted": True})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    assert caught.value.code == "insufficient_quota"
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_prompt_over_the_context_limit_is_a_bad_request(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(limits={"context_tokens": 50})
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    error = caught.value
    assert error.code == "context_length_exceeded"
    assert error.param == "messages"
    assert error.type == "invalid_request_error"
    assert error.message.endswith(
        "This model's maximum context length is 50 tokens. However, your messages resulted in "
        f"{3 + 3 + 1 + count_tokens(FIRE)} tokens. Please reduce the length of the messages."
    )
    short: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi."}]
    with pytest.raises(openai.BadRequestError, match="in the completion"):
        client.chat.completions.create(model=OFFLINE_MODEL, messages=short, max_tokens=45)
    assert client.chat.completions.create(model=OFFLINE_MODEL, messages=short).choices


def test_fault_header_with_an_unknown_value_is_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=FAULT_HEADER):
        client.chat.completions.create(
            model=OFFLINE_MODEL, messages=messages(), extra_headers=fault("explode")
        )


def outcomes_of(config: LLMServerConfig, count: int) -> list[str]:
    results = []
    with (
        LLMServer(config).in_thread() as server,
        openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk,
    ):
        for index in range(count):
            try:
                sdk.chat.completions.create(
                    model=OFFLINE_MODEL, messages=messages(f"Document {index}.")
                )
                results.append("ok")
            except openai.APIStatusError as exc:
                results.append(str(exc.status_code))
    return results


def test_fault_draws_are_reproducible_from_the_seed() -> None:
    faults = Faults(rate_429=0.2, rate_500=0.2, rate_503=0.1)
    first = outcomes_of(LLMServerConfig(seed=7, faults=faults), 40)
    assert outcomes_of(LLMServerConfig(seed=7, faults=faults), 40) == first
    assert outcomes_of(LLMServerConfig(seed=8, faults=faults), 40) != first
    assert 8 <= first.count("ok") <= 32
    assert {"ok", "429", "500", "503"} == set(first)


@pytest.mark.parametrize(
    "llm_server_config", [LLMServerConfig(latency=Latency.fixed(0.25))], ids=["fixed-0.25"]
)
async def test_latency_knob_delays_every_answer(aclient: openai.AsyncOpenAI) -> None:
    for _ in range(2):
        started = time.monotonic()
        await aclient.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
        assert time.monotonic() - started >= 0.25


async def test_latency_distributions_respect_their_lower_bound(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(latency=Latency.uniform(0.15, 0.2))
    started = time.monotonic()
    await aclient.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    assert time.monotonic() - started >= 0.15
    llm_server.configure(latency={"distribution": "lognormal", "median": 0.05, "p95": 0.1})
    await aclient.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
    assert llm_server.stats()["outcomes"]["ok"] == 2


def test_limits_config_rejects_nonsense(llm_server: LLMServer) -> None:
    with pytest.raises(ValueError, match="rate_429"):
        llm_server.configure(faults={"rate_429": 1.5})
    with pytest.raises(ValueError, match="unknown"):
        llm_server.configure(faults={"rate_418": 0.1})
    with pytest.raises(ValueError, match="port"):
        llm_server.configure(port=1)
    assert llm_server.configure(limits=Limits(tpm=10)).limits.tpm == 10


async def test_stopping_answers_at_once_what_waits_out_its_latency() -> None:
    server = LLMServer(LLMServerConfig(latency=Latency.fixed(60.0), api_key=None))
    await server.start()
    async with openai.AsyncOpenAI(
        base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=120
    ) as sdk:
        call = asyncio.create_task(
            sdk.chat.completions.create(model=OFFLINE_MODEL, messages=messages())
        )
        deadline = time.monotonic() + 10
        while server.stats()["in_flight"] < 1:
            assert time.monotonic() < deadline, "the request never reached the server"
            await asyncio.sleep(0.01)
        await server.stop()
        # answered, not cut off by the server's shutdown grace (nor after the 60 s)
        completion = await asyncio.wait_for(call, 10)
    assert completion.choices[0].message.content


async def test_the_model_latency_counts_from_the_requests_arrival() -> None:
    server = LLMServer(LLMServerConfig(api_key=None))
    await server.start()
    try:
        # a request that arrived 0.25 s ago, at 0.3 s of latency, has 0.05 s left to wait
        started = time.monotonic()
        await server._pause(0.3, since=started - 0.25)
        assert time.monotonic() - started < 0.2
        started = time.monotonic()
        await server._pause(0.3)  # from now, by default
        assert time.monotonic() - started >= 0.3
    finally:
        await server.stop()
