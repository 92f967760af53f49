"""Batch mode with a wrong API key, through real ``docbus worker`` processes against the
offline server with authentication on: the worker behaves as live mode does on a systemic
failure — its circuit breaker opens (receiving paused, one clear error line), the round is
held without a dead letter or a spent delivery attempt, and a worker run until idle stops
rather than wait forever — and a worker restarted with the right key finishes every document.
"""

from __future__ import annotations

from pathlib import Path

from docbus.local.llm_server import LLMServer
from tests.subscriber.conftest import Stack
from tests.subscriber.test_batch_worker import (
    FAST_BATCH,
    assert_all_done,
    count,
    publish,
    worker_process,
)

WAIT = 90  # seconds a worker run until idle gets to end on its own


async def test_a_wrong_key_opens_the_breaker_and_a_restart_with_the_right_key_finishes(
    stack: Stack, llm_server: LLMServer, tmp_path: Path
) -> None:
    assert FAST_BATCH["refusal_max"] < 1  # the refusals repeat: only the breaker ends the run
    llm_server.configure(batch={"in_progress_seconds": 0.2})
    documents = 4
    await publish(stack, documents)
    wrong = worker_process(
        stack, llm_server, tmp_path, "handlers.builtin.entities", api_key="sk-wrong",
        until_idle=2.0,
    )  # fmt: skip
    try:
        _, stderr = wrong.communicate(timeout=WAIT)  # ends by itself, like a live-mode worker
    finally:
        if wrong.poll() is None:
            wrong.kill()
    log = stderr.decode()
    assert "LLM endpoint failing systemically" in log, log  # the breaker opened
    assert "Traceback" not in log, log
    assert await count(stack, "dead_letters") == 0
    assert await count(stack, "parked", {"reason": "AwaitingBatch"}) == documents
    assert await stack.store.count_llm_requests() == {
        "pending": documents, "submitted": 0, "answered": 0, "failed": 0, "held": 0,
    }  # fmt: skip
    assert [p.reason for p in await stack.store.llm_submission_pauses()] == ["AuthenticationFailed"]
    stats = llm_server.batch_api.stats()
    assert (stats["created"], stats["files"]) == (0, 0)  # nothing reached the provider

    right = worker_process(stack, llm_server, tmp_path, "handlers.builtin.entities", until_idle=2.0)
    try:
        _, stderr = right.communicate(timeout=WAIT)
    finally:
        if right.poll() is None:
            right.kill()
    assert right.returncode == 0, stderr.decode()
    results = await assert_all_done(stack, documents)
    assert max(r["delivery_count"] for r in results) == 1  # no delivery attempt was spent
    assert llm_server.batch_api.stats()["created"] == 3  # one provider batch per round
    assert await count(stack, "llm_calls") == 3 * documents
    assert await stack.store.llm_submission_pauses() == []
