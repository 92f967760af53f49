"""Parking for batch mode: ``AwaitingBatch`` parks without spending an attempt, and a parked
delivery is marked for resumption only once every request it waits for is answered or failed
(also when they were answered while it was parking). Against SecantusDB."""

from __future__ import annotations

import pytest
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.llm_batch import BatchRequest
from docbus.settings import LLMSettings, Settings
from docbus.store import Store
from handlers.errors import AwaitingBatch
from handlers.llm import LLMClient
from handlers.runtime import discover_handlers
from subscriber.parking import ParkedMessage, may_resume, park
from subscriber.settlement import Action, decide
from subscriber.worker import Worker
from tests.subscriber import ordered_handlers

MODEL = "docbus-offline"


async def register(store: Store, name: str) -> str:
    request = BatchRequest.of(
        name, {"model": MODEL, "messages": [{"role": "user", "content": name}]}
    )
    await store.register_llm_request(request, step_id=name, batch_id="b")
    return request.key


def parked_on(seq: int, keys: list[str]) -> ParkedMessage:
    return ParkedMessage(
        topic="t",
        subscription="s",
        sequence_number=seq,
        reason="AwaitingBatch",
        llm_requests=keys,
        deferred=True,
    )


def test_awaiting_batch_parks_even_on_the_last_delivery_and_carries_its_keys() -> None:
    decision = decide(
        AwaitingBatch(["k1", "k2", "k1"]), attempt=3, max_attempts=3, policy=BackoffPolicy()
    )
    assert decision.action is Action.PARK
    assert decision.reason == "AwaitingBatch"
    assert decision.llm_requests == ("k1", "k2")


def test_a_delivery_awaiting_a_batch_resumes_only_when_marked() -> None:
    waiting = parked_on(1, ["k"])
    assert not may_resume(waiting, llm_works=True, over_budget=False)
    marked = waiting.model_copy(update={"resume_requested_at": "2026-01-01T00:00:00Z"})
    assert may_resume(marked, llm_works=False)


async def test_only_deliveries_whose_every_request_is_done_are_marked(store: Store) -> None:
    a, b, c = [await register(store, name) for name in ("a", "b", "c")]
    await park(store, parked_on(1, [a, b]))
    await park(store, parked_on(2, [c]))
    await store.fail_llm_requests([a, c], "LLMRequestTooLarge", "too big")
    assert await store.request_resume_for_llm_requests([a, c]) == 1  # 2 only: b still pending
    marked = {p.sequence_number for p in await store.parked() if p.resume_requested_at}
    assert marked == {2}
    await store.fail_llm_requests([b], "LLMRequestTooLarge", "too big")
    assert await store.request_resume_for_llm_requests([b]) == 1
    assert await store.request_resume_for_llm_requests(None) == 0  # marked once


async def test_requests_done_while_the_delivery_was_parking_still_resume_it(
    store: Store,
) -> None:
    key = await register(store, "early")
    await store.fail_llm_requests([key], "LLMRequestTooLarge", "too big")
    # the submitter looked for parked deliveries before this record was written
    assert await store.request_resume_for_llm_requests([key]) == 0
    await park(store, parked_on(7, [key]))
    (record,) = await store.parked()
    assert record.resume_requested_at is not None


async def test_a_worker_refuses_ordered_handlers_when_the_settings_say_batch() -> None:
    client = LLMClient.from_settings(
        Settings(llm=LLMSettings(base_url="http://127.0.0.1:9/v1", mode="batch"))
    )
    bus = ServiceBusClient.from_connection_string(
        "Endpoint=sb://127.0.0.1:9/;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
    )
    with pytest.raises(ValueError, match="cannot wait hours for a Batch-API round"):
        Worker(
            discover_handlers(ordered_handlers),
            client=bus,
            store=Store("mongodb://x", "x"),
            llm=client,
        )
    await bus.close()
    await client.aclose()
