"""Batch mode under an enqueued-token quota (Azure Global Batch's), through the worker: with
``llm.batch.queued_tokens`` set to the quota the offline server enforces, the submitter splits
each round and waits for open batches to end instead of creating one the provider would fail —
the server never refuses a batch — and every document still ends with one current result."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from docbus.local.llm_server import LLMServer
from handlers.llm import LLMClient
from tests.subscriber.conftest import Stack
from tests.subscriber.test_batch_worker import (
    assert_all_done,
    publish,
    quick_batches,
    run_worker,
)

MODEL = "docbus-offline"
QUOTA = 2000
"""Enqueued tokens, at the server and in the settings: a few of the built-in handler's requests
(docbus estimates one at its prompt plus the completion it expects), not a whole round."""


@pytest.fixture
async def quota_llm(stack: Stack, llm_server: LLMServer) -> AsyncIterator[LLMClient]:
    quick_batches(stack, llm_server, queued_tokens={MODEL: QUOTA})
    llm_server.configure(batch={"in_progress_seconds": 0.3, "queued_tokens": QUOTA})
    async with LLMClient.from_settings(stack.settings, stack.store) as client:
        yield client


async def test_rounds_are_split_to_stay_under_the_providers_queued_token_quota(
    stack: Stack, quota_llm: LLMClient, llm_server: LLMServer
) -> None:
    documents = 6
    await publish(stack, documents)
    await run_worker(stack, quota_llm)
    await assert_all_done(stack, documents)
    stats = llm_server.batch_api.stats()
    assert stats["over_quota"] == 0  # docbus never asked for more than the quota...
    assert QUOTA / 2 < stats["queued_peak"] <= QUOTA  # ...and used it
    assert stats["by_status"] == {"completed": stats["created"]}
    assert stats["created"] > 3  # three rounds, each split to fit
    assert stats["requests"] == 3 * documents  # nothing sent twice
