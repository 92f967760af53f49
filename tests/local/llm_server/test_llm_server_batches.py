"""The offline server's Files and Batches APIs, driven by the real ``openai`` SDK.

Every lifecycle path (completed, failed, expired, cancelled) and every fault knob, through
``AsyncOpenAI`` and ``AsyncAzureOpenAI``. The batches' clock is a hand-moved one, so a test sees
each state for exactly as long as it wants without sleeping.
"""

from __future__ import annotations

import json
import urllib.error
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from docbus.local.llm_server import LLMServer, schema_errors
from tests.local.llm_server.llm_samples import API_KEY, TEXTS
from tests.local.llm_server.test_llm_server_limits import admin

SCHEMA = {
    "type": "object",
    "properties": {"company": {"type": "string"}, "risk": {"enum": ["low", "high"]}},
    "required": ["company", "risk"],
    "additionalProperties": False,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def move(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(llm_server: LLMServer) -> Iterator[Clock]:
    fake = Clock()
    llm_server.batch_api.clock = fake
    yield fake


@pytest.fixture
async def azure(llm_server: LLMServer) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=llm_server.url,
        api_key=API_KEY,
        api_version="2024-10-21",
        max_retries=0,
    ) as sdk:
        yield sdk


def chat_body(index: int, model: str = "docbus-offline") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Extract the company and the risk."},
            {"role": "user", "content": TEXTS[index % len(TEXTS)] + f" (document {index})"},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Risk", "schema": SCHEMA, "strict": True},
        },
    }


def input_file(count: int, url: str = "/v1/chat/completions", **overrides: Any) -> bytes:
    lines = []
    for index in range(count):
        line = {"custom_id": f"r{index}", "method": "POST", "url": url, "body": chat_body(index)}
        line.update(overrides.get(str(index), {}))
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


async def submit(
    sdk: openai.AsyncOpenAI, content: bytes, endpoint: str = "/v1/chat/completions"
) -> Any:
    uploaded = await sdk.files.create(file=("input.jsonl", content), purpose="batch")
    return await sdk.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata={"docbus_provider_batch": "pb-1"},
    )


async def lines_of(sdk: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await sdk.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines() if line.strip()]


async def test_a_batch_moves_through_validating_in_progress_finalizing_to_completed(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(
        batch={"validating_seconds": 10, "in_progress_seconds": 100, "finalizing_seconds": 10}
    )
    batch = await submit(aclient, input_file(4))
    assert batch.status == "validating"
    assert batch.metadata == {"docbus_provider_batch": "pb-1"}
    assert batch.request_counts is not None and batch.request_counts.total == 4

    clock.move(10)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "in_progress" and batch.in_progress_at is not None
    assert batch.request_counts is not None and batch.request_counts.completed == 0
    clock.move(50)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.request_counts is not None and batch.request_counts.completed == 2
    clock.move(50)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "finalizing" and batch.output_file_id is None
    clock.move(10)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.completed_at is not None and batch.error_file_id is None
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    assert batch.usage is not None and batch.usage.input_tokens > 0


async def test_batch_answers_are_the_live_answers_in_the_output_line_format(
    aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    batch = await submit(aclient, input_file(3))
    assert batch.status == "completed"  # no processing time configured
    outputs = await lines_of(aclient, batch.output_file_id)
    assert sorted(line["custom_id"] for line in outputs) == ["r0", "r1", "r2"]
    for line in outputs:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        index = int(line["custom_id"][1:])
        live = await aclient.chat.completions.create(**chat_body(index))
        answer = response["body"]["choices"][0]["message"]["content"]
        assert answer == live.choices[0].message.content
        assert not schema_errors(SCHEMA, json.loads(answer))
        assert response["body"]["usage"]["total_tokens"] == live.usage.total_tokens  # type: ignore[union-attr]


async def test_azure_client_runs_a_batch_on_the_azure_paths(
    azure: openai.AsyncAzureOpenAI, clock: Clock
) -> None:
    batch = await submit(azure, input_file(2, url="/chat/completions"), "/chat/completions")
    batch = await azure.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert len(await lines_of(azure, batch.output_file_id)) == 2
    listed = [b.id async for b in azure.batches.list()]
    assert listed == [batch.id]


async def test_expiry_leaves_exactly_the_configured_share_unanswered(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"in_progress_seconds": 60, "expire_share": 0.1})
    batch = await submit(aclient, input_file(20))
    clock.move(60)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    outputs = await lines_of(aclient, batch.output_file_id)
    missing = await lines_of(aclient, batch.error_file_id)
    assert len(outputs) == 18 and len(missing) == 2
    assert {line["error"]["code"] for line in missing} == {"batch_expired"}
    assert all(line["response"] is None for line in missing)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (18, 2)
    every = {line["custom_id"] for line in outputs + missing}
    assert every == {f"r{i}" for i in range(20)}


async def test_resubmitting_the_unanswered_requests_draws_them_afresh(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"expire_share": 0.5})
    first = await submit(aclient, input_file(10))
    second = await submit(aclient, input_file(10))
    unanswered = [
        {line["custom_id"] for line in await lines_of(aclient, b.error_file_id)}
        for b in (first, second)
    ]
    assert len(unanswered[0]) == len(unanswered[1]) == 5
    assert unanswered[0] != unanswered[1]  # by batch id: a resubmission is not doomed


async def test_per_line_errors_land_in_the_error_file_with_their_status(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"line_400_share": 0.2, "line_500_share": 0.3})
    batch = await submit(aclient, input_file(10))
    assert batch.status == "completed"
    failures = await lines_of(aclient, batch.error_file_id)
    statuses = sorted(line["response"]["status_code"] for line in failures)
    assert statuses == [400, 400, 500, 500, 500]
    for line in failures:
        assert line["error"] is None
        assert line["response"]["body"]["error"]["message"]
    assert len(await lines_of(aclient, batch.output_file_id)) == 5
    assert batch.request_counts is not None and batch.request_counts.failed == 5


async def test_a_line_the_live_endpoint_would_refuse_is_a_400_line(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(limits={"context_tokens": 50})
    batch = await submit(aclient, input_file(2))
    failures = await lines_of(aclient, batch.error_file_id)
    assert [line["response"]["status_code"] for line in failures] == [400, 400]
    codes = {line["response"]["body"]["error"]["code"] for line in failures}
    assert codes == {"context_length_exceeded"}


@pytest.mark.parametrize(
    ("failure", "code", "line"),
    [
        ("invalid_file", "invalid_json_line", 1),
        ("token_limit_exceeded", "token_limit_exceeded", None),
    ],
)
async def test_a_whole_batch_fails_validation_on_the_failure_knob(
    llm_server: LLMServer,
    aclient: openai.AsyncOpenAI,
    clock: Clock,
    failure: str,
    code: str,
    line: int | None,
) -> None:
    llm_server.configure(batch={"fail": failure, "validating_seconds": 5})
    batch = await submit(aclient, input_file(3))
    assert batch.status == "validating"
    clock.move(5)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == (code, line)
    assert batch.output_file_id is None and batch.error_file_id is None


async def test_bad_input_lines_fail_validation_with_their_line_numbers(
    aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    content = input_file(
        4,
        **{
            "1": {"custom_id": "r0"},
            "2": {"url": "/v1/embeddings"},
            "3": {"body": chat_body(3, model="other-model")},
        },
    )
    batch = await submit(aclient, content + b"not json\n")
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    found = {(error.code, error.line) for error in batch.errors.data}
    assert found == {
        ("duplicate_custom_id", 2),
        ("url_mismatch", 3),
        ("model_mismatch", 4),
        ("invalid_json_line", 5),
    }


async def test_a_file_over_the_request_limit_fails_as_too_many_tasks(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"max_requests": 3})
    batch = await submit(aclient, input_file(4))
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [error.code for error in batch.errors.data] == ["too_many_tasks"]


async def test_quota_at_create_refuses_the_batch_with_insufficient_quota(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"quota_at_create": True})
    with pytest.raises(openai.RateLimitError) as caught:
        await submit(aclient, input_file(1))
    assert caught.value.code == "insufficient_quota"
    assert llm_server.batch_api.stats()["created"] == 0
    assert llm_server.batch_api.stats()["refused"] == 1


async def test_the_queued_token_quota_fails_a_batch_that_would_pass_it_until_others_end(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"in_progress_seconds": 100})
    first = await submit(aclient, input_file(2))  # no quota yet: what two lines bill
    clock.move(101)
    first = await aclient.batches.retrieve(first.id)
    assert first.status == "completed" and first.usage is not None
    two = first.usage.input_tokens
    llm_server.configure(batch={"in_progress_seconds": 100, "queued_tokens": two * 3 // 2})
    held = await submit(aclient, input_file(2))  # 2 lines: within the quota, held till it ends
    refused = await submit(aclient, input_file(1))  # 2 + 1 lines: past it
    refused = await aclient.batches.retrieve(refused.id)
    assert refused.status == "failed" and refused.errors is not None
    assert [e.code for e in refused.errors.data or []] == ["token_limit_exceeded"]
    assert llm_server.batch_api.stats()["over_quota"] == 1
    clock.move(101)
    assert (await aclient.batches.retrieve(held.id)).status == "completed"
    accepted = await submit(aclient, input_file(1))  # the quota is free again
    assert (await aclient.batches.retrieve(accepted.id)).status == "in_progress"
    too_big = await submit(aclient, input_file(4))  # never fits, even alone
    assert (await aclient.batches.retrieve(too_big.id)).status == "failed"
    assert llm_server.batch_api.stats()["over_quota"] == 2


async def test_cancel_keeps_what_was_done_and_marks_the_rest_cancelled(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"in_progress_seconds": 100, "cancelling_seconds": 5})
    batch = await submit(aclient, input_file(10))
    clock.move(30)
    batch = await aclient.batches.cancel(batch.id)
    assert batch.status == "cancelling" and batch.cancelling_at is not None
    clock.move(5)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    outputs = await lines_of(aclient, batch.output_file_id)
    cancelled = await lines_of(aclient, batch.error_file_id)
    assert len(outputs) == 3 and len(cancelled) == 7
    assert {line["error"]["code"] for line in cancelled} == {"batch_cancelled"}
    llm_server.configure(batch={"in_progress_seconds": 0})
    done = await submit(aclient, input_file(1))
    assert done.status == "completed"
    with pytest.raises(openai.BadRequestError, match="Cannot cancel"):
        await aclient.batches.cancel(done.id)


async def test_cancelling_while_validating_answers_nothing(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"validating_seconds": 10})
    batch = await submit(aclient, input_file(3))
    batch = await aclient.batches.cancel(batch.id)
    assert batch.status == "cancelled"
    assert batch.output_file_id is None
    assert len(await lines_of(aclient, batch.error_file_id)) == 3


async def test_slow_finalising_holds_the_output_until_it_ends(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(batch={"finalizing_seconds": 3600})
    batch = await submit(aclient, input_file(2))
    assert batch.status == "finalizing" and batch.output_file_id is None
    clock.move(3599)
    assert (await aclient.batches.retrieve(batch.id)).status == "finalizing"
    clock.move(1)
    batch = await aclient.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id is not None


async def test_schema_faults_of_the_live_endpoint_reach_batch_answers(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    llm_server.configure(faults={"rate_schema": 1.0})
    batch = await submit(aclient, input_file(2))
    for line in await lines_of(aclient, batch.output_file_id):
        answer = json.loads(line["response"]["body"]["choices"][0]["message"]["content"])
        assert schema_errors(SCHEMA, answer)


async def test_batches_are_listed_newest_first_page_by_page(
    aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    created = []
    for _ in range(3):
        created.append((await submit(aclient, input_file(1))).id)
        clock.move(1)
    page = await aclient.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    assert [b.id async for b in aclient.batches.list(limit=2)] == created[::-1]


async def test_files_are_retrieved_listed_and_deleted(
    aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    uploaded = await aclient.files.create(file=("in.jsonl", input_file(1)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(input_file(1))
    assert (await aclient.files.retrieve(uploaded.id)).filename == "in.jsonl"
    assert [f.id async for f in aclient.files.list(purpose="batch")] == [uploaded.id]
    assert (await aclient.files.content(uploaded.id)).content == input_file(1)
    assert (await aclient.files.delete(uploaded.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await aclient.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await aclient.batches.retrieve("batch_missing")


async def test_files_and_batches_need_the_api_key(llm_server: LLMServer, clock: Clock) -> None:
    llm_server.configure(api_key=API_KEY)
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key="sk-wrong-key-1234", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.files.create(file=("in.jsonl", input_file(1)), purpose="batch")
        with pytest.raises(openai.AuthenticationError):
            await wrong.batches.list()


async def test_batch_knobs_change_over_the_admin_api_and_stats_count_batches(
    llm_server: LLMServer, aclient: openai.AsyncOpenAI, clock: Clock
) -> None:
    config = admin(llm_server, "/_admin/config", {"batch": {"expire_share": 0.5}})
    assert config["batch"]["expire_share"] == 0.5
    batch = await submit(aclient, input_file(4))
    assert batch.status == "expired"
    stats = admin(llm_server, "/_admin/stats")
    assert stats["batches"]["created"] == 1 and stats["batches"]["requests"] == 4
    assert stats["batches"]["by_status"] == {"expired": 1}
    with pytest.raises(urllib.error.HTTPError) as caught:
        admin(llm_server, "/_admin/config", {"batch": {"expire_share": 2}})
    assert caught.value.code == 400
    caught.value.close()
