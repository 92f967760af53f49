"""Rate limits: the limiter's decisions on a fake clock, header parsing, and a 429 storm against
a TPM-limited offline server."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from docbus.local.llm_server import Faults, Limits, LLMServer, LLMServerConfig
from docbus.settings import LLMSettings, ModelRateLimit, Settings
from docbus.store import Store
from handlers import Retry
from handlers.llm import ModelLimits, RateLimiter, parse_duration, retry_after
from tests.handlers.llm_support import Summary, make_client, make_ctx, status_seed_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: FakeClock, **limits: int) -> RateLimiter:
    return RateLimiter({"m": ModelLimits(**limits)}, window=10.0, clock=clock, increase_every=2)


async def test_tokens_are_held_while_in_flight_and_for_a_window_after_the_call_ended() -> None:
    clock = FakeClock()
    limits = limiter(clock, tpm=100)
    held = await limits.acquire("m", 60)
    assert limits.wait_time("m", 50) == math.inf  # only a release can make room
    clock.now += 1
    limits.release(held, tokens=80)  # the server counted more than estimated
    assert limits.wait_time("m", 30) == pytest.approx(10.0)
    clock.now += 6
    assert limits.wait_time("m", 30) == pytest.approx(4.0)
    assert limits.wait_time("m", 20) == 0.0
    clock.now += 4
    assert limits.wait_time("m", 100) == 0.0
    assert limits.usage("m") == (0, 0)


async def test_a_smaller_actual_usage_frees_the_difference_at_once() -> None:
    clock = FakeClock()
    limits = limiter(clock, tpm=100)
    limits.release(await limits.acquire("m", 90), tokens=10)
    assert limits.wait_time("m", 90) == 0.0
    assert limits.usage("m") == (1, 10)


async def test_requests_per_window_and_oversized_estimates() -> None:
    clock = FakeClock()
    limits = limiter(clock, rpm=2, tpm=100)
    oversized = await limits.acquire("m", 1_000)
    assert oversized.tokens == 100  # capped: it could never start otherwise
    limits.release(oversized, tokens=0)  # refused: the server counted nothing
    limits.release(await limits.acquire("m", 1), tokens=1)
    assert limits.wait_time("m", 1) == pytest.approx(10.0)  # two requests in the window
    assert limits.wait_time("other", 10**9) == 0.0  # other models: no limits configured


async def test_a_pause_holds_the_model_and_the_longer_pause_wins() -> None:
    clock = FakeClock()
    limits = limiter(clock)
    limits.pause("m", 3.0)
    limits.pause("m", 1.0)
    assert limits.wait_time("m", 1) == pytest.approx(3.0)
    clock.now += 3
    assert limits.wait_time("m", 1) == 0.0


async def test_concurrency_halves_on_a_429_and_creeps_back_on_successes() -> None:
    clock = FakeClock()
    limits = RateLimiter(max_concurrency=8, increase_every=2, clock=clock)
    limits.release(await limits.acquire("m", 1), rate_limited=True)
    limits.release(await limits.acquire("m", 1), rate_limited=True)
    assert limits.concurrency("m") == 2
    for _ in range(4):
        limits.release(await limits.acquire("m", 1))
    assert limits.concurrency("m") == 4
    for _ in range(20):
        limits.release(await limits.acquire("m", 1))
    assert limits.concurrency("m") == 8  # bounded


async def test_a_caller_over_the_concurrency_bound_waits_for_a_release() -> None:
    limits = RateLimiter(max_concurrency=1)
    first = await limits.acquire("m", 1)
    waiting = asyncio.create_task(limits.acquire("m", 1))
    await asyncio.sleep(0)
    assert not waiting.done()
    limits.release(first)
    second = await asyncio.wait_for(waiting, 5)
    assert second.model == "m"
    limits.release(second)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_a_waiter_cancelled_as_room_opens_ends_cancelled(turns: int) -> None:
    # A handler's timeout cancels its task wherever it waits. One landing a turn of the loop
    # after a release woke the waiter was swallowed by asyncio.wait_for (Python 3.11): the
    # waiter took the room and went on to send its request, past its timeout. A cancel that
    # finds the waiter not yet done must end it cancelled, whichever turn it lands in.
    loop = asyncio.get_running_loop()
    limits = limiter(FakeClock(), tpm=100)
    limits.release(await limits.acquire("m", 40))  # counted for the window's 10 s
    first = await limits.acquire("m", 40)
    assert 0 < limits.wait_time("m", 50) < math.inf  # 130 of 100: room in 10 s
    waiting = asyncio.create_task(limits.acquire("m", 50))
    await asyncio.sleep(0)
    assert not waiting.done()
    accepted: asyncio.Future[bool] = loop.create_future()

    def cancel_after(turns_left: int) -> None:
        if turns_left:
            loop.call_soon(cancel_after, turns_left - 1)
        else:
            accepted.set_result(waiting.cancel())

    limits.release(first, tokens=5)  # 95 of 100: room for the waiter, at once
    cancel_after(turns)
    (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
    if await accepted:  # the waiter was still waiting: it must not go on to its request
        assert isinstance(outcome, asyncio.CancelledError)
    else:  # it had its room before the cancel came
        assert limits.usage("m") == (3, 95)


def test_limits_come_from_the_settings() -> None:
    settings = Settings(
        llm=LLMSettings(
            tokens_per_minute=1000,
            rate_limits={"gpt-4o": ModelRateLimit(rpm=5, tpm=50)},
            rate_window=30,
            max_concurrency=4,
        )
    )
    limits = RateLimiter.from_settings(settings)
    assert limits.limits_for("gpt-4o") == ModelLimits(rpm=5, tpm=50)
    assert limits.limits_for("anything") == ModelLimits(rpm=None, tpm=1000)
    assert (limits.window, limits.max_concurrency) == (30.0, 4)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after": "7"}, 7.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6.5s"}, 6.5),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1m0s",
                "x-ratelimit-remaining-tokens": "10",
                "x-ratelimit-reset-tokens": "20ms",
            },
            60.0,
        ),
        ({"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "3s"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_every_header_openai_sends(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after(headers) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_reads_an_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after({"retry-after": header}, now=now.timestamp()) == pytest.approx(30)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("6.5s", 6.5), ("1m0s", 60.0), ("1h2m3s", 3723.0), ("2", 2.0), ("x", None)],
)
def test_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


# -- against the offline server ----------------------------------------------------------------

_PAUSE = Faults(rate_429=0.5, retry_after=0.3)


@pytest.mark.parametrize(
    "llm_server_config",
    [LLMServerConfig(seed=status_seed_for(_PAUSE, ["429", None]), faults=_PAUSE)],
)
async def test_a_429_pauses_the_model_for_its_retry_after(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        await make_ctx(store, llm=client).llm.complete("hello there")
    refused, answered = await store.llm_calls("b1")
    assert (refused.error_type, answered.error_type, answered.retry) == ("RateLimitError", None, 1)
    assert (answered.created_at - refused.created_at).total_seconds() >= 0.3 - 0.01


TPM = 1500
WINDOW = 1.5
STORM = LLMServerConfig(
    seed=11,
    faults=Faults(rate_429=0.25, retry_after=0.2),
    limits=Limits(tpm=TPM, window=WINDOW),
)

NEWS = [
    f"Supplier number {n} in {city} reported {event}; analysts expect delays for customers "
    "across the region and a review of contracts."
    for n, (city, event) in enumerate(
        [
            ("Hamburg", "a fire at its main plant"),
            ("Shenzhen", "a strike by port workers"),
            ("Monterrey", "a cyber attack on its systems"),
            ("Chennai", "flooding near its warehouses"),
        ]
        * 6
    )
]


@pytest.mark.parametrize("llm_server_config", [STORM])
async def test_a_429_storm_finishes_every_document_within_the_tpm_limit(
    llm_server: LLMServer, store: Store
) -> None:
    await store.record_batch("b1", topic="news")

    async with make_client(llm_server, store, tokens_per_minute=TPM, rate_window=WINDOW) as client:

        async def deliver(index: int, text: str) -> Summary:
            """What the worker does: deliver again after a Retry, with its backoff."""
            for attempt in range(1, 20):
                ctx = make_ctx(store, doc_id=f"news-{index}", attempt=attempt, llm=client)
                try:
                    return await ctx.llm.extract(Summary, text)
                except Retry as retry:
                    await asyncio.sleep(retry.after or 0.05)  # the worker's backoff
            raise AssertionError(f"document {index} never finished")

        results = await asyncio.wait_for(
            asyncio.gather(*(deliver(i, text) for i, text in enumerate(NEWS))), 30
        )

    assert len(results) == len(NEWS) and all(isinstance(r, Summary) for r in results)
    stats = llm_server.stats()
    outcomes = stats["outcomes"]
    assert outcomes["rate_limited"] > 0  # the storm happened
    assert outcomes["ok"] == len(NEWS)
    assert stats["window"]["peak_tokens"] <= TPM
    assert outcomes["rate_limited_tpm"] == 0  # the client's own limiter kept it under
    rows = await store.llm_calls("b1")
    assert sum(1 for r in rows if r.error_type == "RateLimitError") == outcomes["rate_limited"]
    batch = await store.get_batch("b1")
    assert batch is not None and batch.cost.calls == len(rows)
