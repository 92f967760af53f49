"""RPM/TPM limits of the offline LLM server: 429s with exact Retry-After, never over the limit."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from docbus.local.llm_server import OFFLINE_MODEL, Limits, LLMServer, LLMServerConfig
from docbus.local.llm_server.limits import QuotaEnforcer
from tests.local.llm_server.llm_samples import API_KEY, FIRE


def messages(index: int) -> list[ChatCompletionMessageParam]:
    """The same document under a different item number: different answers, equal sizes."""
    return [{"role": "user", "content": f"Item {index}. {FIRE}"}]


async def call(sdk: openai.AsyncOpenAI, index: int) -> Any:
    try:
        return await sdk.chat.completions.create(model=OFFLINE_MODEL, messages=messages(index))
    except openai.RateLimitError as exc:
        return exc


@pytest.mark.parametrize("llm_server_config", [LLMServerConfig(limits=Limits(tpm=600))])
async def test_tpm_limit_admits_up_to_the_limit_and_429s_the_rest(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    results = await asyncio.gather(*(call(aclient, i) for i in range(20)))
    answered = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(answered) + len(refused) == 20
    sizes = {r.usage.total_tokens for r in answered}
    assert len(sizes) == 1
    admitted = sum(r.usage.total_tokens for r in answered)
    assert 600 - sizes.pop() < admitted <= 600  # full use of the budget, never over it
    assert refused
    for error in refused:
        assert error.type == "tokens" and error.code == "rate_limit_exceeded"
        wait_ms = int(error.response.headers["retry-after-ms"])
        assert 0 < wait_ms <= 60_000
        assert int(error.response.headers["retry-after"]) == -(-wait_ms // 1000)
        assert error.response.headers["x-ratelimit-limit-tokens"] == "600"
        assert int(error.response.headers["x-ratelimit-remaining-tokens"]) == 600 - admitted
    stats = llm_server.stats()
    assert stats["window"]["peak_tokens"] == admitted
    assert stats["tokens"]["total"] == admitted
    assert stats["outcomes"]["rate_limited_tpm"] == len(refused)
    assert stats["per_minute"][-1]["tokens"] == admitted


async def test_retry_after_is_the_time_until_the_request_fits(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    first = await call(aclient, 0)
    llm_server.configure(limits={"tpm": first.usage.total_tokens + 10})
    llm_server.reset()
    await call(aclient, 0)
    refused = await call(aclient, 1)
    assert isinstance(refused, openai.RateLimitError)
    wait_ms = int(refused.response.headers["retry-after-ms"])
    assert 55_000 <= wait_ms <= 60_000  # the first request leaves the window 60 s after it came


async def test_honouring_retry_after_gets_every_request_through_under_the_limit(
    llm_server: LLMServer,
) -> None:
    # A half-second window keeps the test short; the arithmetic is the per-minute one.
    llm_server.configure(limits=Limits(tpm=700, window=0.5))
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key=API_KEY, max_retries=20
    ) as sdk:
        results = await asyncio.gather(*(call(sdk, i) for i in range(14)))
    assert not any(isinstance(r, Exception) for r in results)
    stats = llm_server.stats()
    assert stats["outcomes"]["ok"] == 14
    assert stats["outcomes"]["rate_limited_tpm"] > 0
    assert stats["window"]["peak_tokens"] <= 700
    assert stats["tokens"]["total"] == sum(r.usage.total_tokens for r in results)


async def test_request_larger_than_the_tpm_limit_is_never_retried(
    aclient: openai.AsyncOpenAI, llm_server: LLMServer
) -> None:
    llm_server.configure(limits={"tpm": 20})
    refused = await call(aclient, 0)
    assert isinstance(refused, openai.RateLimitError)
    assert "Request too large" in refused.message
    assert refused.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.response.headers


async def test_rpm_limit(aclient: openai.AsyncOpenAI, llm_server: LLMServer) -> None:
    llm_server.configure(limits={"rpm": 3})
    results = [await call(aclient, i) for i in range(5)]
    assert [isinstance(r, openai.RateLimitError) for r in results] == [False] * 3 + [True] * 2
    refused = results[-1]
    assert refused.type == "requests"
    assert refused.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert llm_server.stats()["outcomes"]["rate_limited_rpm"] == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_retry_after_is_exact() -> None:
    clock = FakeClock()
    limiter = QuotaEnforcer(clock)
    limits = Limits(tpm=100)
    assert limiter.admit(60, limits).admitted
    clock.now += 10
    assert limiter.admit(30, limits).admitted
    refused = limiter.admit(50, limits)
    assert not refused.admitted and refused.limit == "tokens"
    assert refused.retry_after == pytest.approx(50.0)  # the 60 leaves at t0 + 60
    clock.now += refused.retry_after - 0.001
    assert not limiter.admit(50, limits).admitted
    clock.now += 0.001
    assert limiter.admit(50, limits).admitted
    assert limiter.peak_tokens == 90
    assert limiter.usage(limits) == (2, 80)


def test_limiter_never_admits_more_than_the_limit_in_any_window() -> None:
    clock = FakeClock()
    limiter = QuotaEnforcer(clock)
    limits = Limits(tpm=1000, rpm=30)
    admitted: list[tuple[float, int]] = []
    for step in range(2000):
        clock.now += 0.37
        size = 50 + (step * 37) % 200
        if limiter.admit(size, limits).admitted:
            admitted.append((clock.now, size))
    for start, _ in admitted:
        in_window = [s for t, s in admitted if start <= t < start + 60]
        assert sum(in_window) <= 1000 and len(in_window) <= 30
    assert limiter.peak_tokens <= 1000
    assert sum(s for _, s in admitted) >= 1000 * (2000 * 0.37 / 60) * 0.9


def admin(server: LLMServer, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{server.url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_admin_endpoints_change_config_and_report_stats(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    config = admin(llm_server, "/_admin/config", {"api_key": "sk-rotated-0001", "latency": 0})
    assert config["api_key"] == "sk-***0001"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=OFFLINE_MODEL, messages=messages(0))
    admin(llm_server, "/_admin/config", {"api_key": None, "limits": {"tpm": 5000}})
    assert admin(llm_server, "/_admin/config")["limits"]["tpm"] == 5000
    client.chat.completions.create(model=OFFLINE_MODEL, messages=messages(0))
    stats = admin(llm_server, "/_admin/stats")
    assert stats["requests"] == 2
    assert stats["outcomes"]["ok"] == 1 and stats["outcomes"]["unauthorized"] == 1
    assert stats["tokens"]["total"] == stats["window"]["tokens"] > 0
    assert stats["config"]["limits"]["tpm"] == 5000
    reset = admin(llm_server, "/_admin/reset", {})
    assert reset["requests"] == 0
    with pytest.raises(urllib.error.HTTPError) as caught:
        admin(llm_server, "/_admin/config", {"faults": {"rate_429": 2}})
    assert caught.value.code == 400
    caught.value.close()
