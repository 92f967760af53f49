"""finish_within: a bounded wait that runs out names where every task was waiting."""

from __future__ import annotations

import asyncio

import pytest

from tests.diagnostics import finish_within


async def test_a_wait_that_runs_out_names_the_waiting_code() -> None:
    never = asyncio.Event()

    async def waits_for_an_event_nobody_sets() -> None:
        await never.wait()

    with pytest.raises(AssertionError, match="waits_for_an_event_nobody_sets"):
        await finish_within(waits_for_an_event_nobody_sets(), 0.05)


async def test_a_wait_that_finishes_returns_its_result() -> None:
    async def answer() -> int:
        return 42

    assert await finish_within(answer(), 5) == 42
