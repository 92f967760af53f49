"""Batch mode through the worker: the built-in three-step ``entities`` handler over the local
stack (emulator, SecantusDB, the offline server's Batch API with a processing time).

Every document ends as one current result (or one dead letter), one provider batch per round,
no delivery attempt spent by parking, audit rows in batch mode and the cost at the batch price;
then expiry, quota refusals at create and a worker SIGKILLed mid-round.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr

from docbus.backoff import BackoffPolicy
from docbus.local.llm_server import LLMServer
from docbus.settings import LLMBatchSettings, LLMSettings
from docbus.store import _parked as parked_module
from handlers.builtin.entities import entities
from handlers.llm import LLMClient, PriceTable
from handlers.runtime import discover_handlers
from publisher import publish_documents
from subscriber.worker import Worker, WorkerOptions, WorkerReport
from tests.subscriber.conftest import KEY, Stack

BATCH = "night"
TOPOLOGY_TOML = (
    '[defaults]\nmax_delivery_count = 3\nlock_duration = "PT2S"\n'
    '[[topics]]\nname = "documents"\n[[topics.subscriptions]]\nname = "entities"\n'
    '[[topics]]\nname = "llm"\n[[topics.subscriptions]]\nname = "steps"\n'
)
FAST_BATCH = {
    "max_wait": 2.0,  # a round's requests travel together (resumptions spread ~1 s)
    "poll_base": 0.1,
    "poll_max": 0.2,
    "refusal_base": 0.3,
    "refusal_max": 0.6,
    "lease_ttl": 3.0,
    "renew_every": 0.2,
}
TEXTS = [
    "Acme Metals reported a fire at its plant in Ostrava; Globex Logistics expects delays.",
    "Initech signed a 12 million EUR supply contract with Hooli in Munich.",
    "Umbrella Chemicals recalled a solvent batch after a contamination found in Lyon.",
]


@pytest.fixture
async def llm(stack: Stack, llm_server: LLMServer) -> AsyncIterator[LLMClient]:
    """The conftest's client, with quick batch-mode settings and a short processing time."""
    quick_batches(stack, llm_server)
    async with LLMClient.from_settings(stack.settings, stack.store) as client:
        yield client


def quick_batches(stack: Stack, llm_server: LLMServer, **batch: Any) -> None:
    """The stack's settings with quick batch-mode settings (``FAST_BATCH``, then ``batch``)
    against ``llm_server``, its processing time short."""
    llm_server.configure(batch={"in_progress_seconds": 0.5})
    stack.settings = stack.settings.model_copy(
        update={
            "llm": LLMSettings(
                api_key=SecretStr(KEY),
                base_url=llm_server.base_url,
                model="docbus-offline",
                batch=LLMBatchSettings(**{**FAST_BATCH, **batch}),
            )
        }
    )


async def publish(stack: Stack, count: int, topic: str = "documents", **metadata: Any) -> None:
    docs = [
        {"text": f"{TEXTS[i % len(TEXTS)]} Item {i}.", "doc_id": f"d{i}", "metadata": metadata}
        for i in range(count)
    ]
    report = await publish_documents(
        docs, topic=topic, batch_id=BATCH, settings=stack.settings, store=stack.store
    )
    assert report.ok
    # as `docbus publish --llm-mode batch` records it on the batch
    await stack.store.database["batches"].update_one(
        {"_id": BATCH}, {"$set": {"llm_mode": "batch"}}
    )


def make_worker(
    client: ServiceBusClient,
    stack: Stack,
    llm: LLMClient,
    handlers: list[Any] | None = None,
    **options: Any,
) -> Worker:
    options.setdefault("backoff", BackoffPolicy(base=0.2, cap=1.0, jitter=0.0))
    options.setdefault("resume_interval", 0.2)
    options.setdefault("until_idle", 3.0)
    # resumed messages wait for admission credits an open receive holds (up to receive_wait):
    # well under the submitter's max_wait, so a round's resumed deliveries travel together
    options.setdefault("receive_wait", 0.2)
    return Worker(
        discover_handlers(handlers or [entities]),
        client=client,
        store=stack.store,
        options=WorkerOptions(**options),
        topology=stack.topology,
        llm=llm,
    )


async def run_worker(
    stack: Stack, llm: LLMClient, handlers: list[Any] | None = None, **options: Any
) -> WorkerReport:
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = make_worker(client, stack, llm, handlers, **options)
        return await asyncio.wait_for(worker.run(), 120)


async def wait_for(condition: Callable[[], Any], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def count(stack: Stack, collection: str, query: dict[str, Any] | None = None) -> int:
    return int(await stack.store.database[collection].count_documents(query or {}))


async def assert_all_done(stack: Stack, documents: int) -> list[dict[str, Any]]:
    """Every document has one current result, none is dead or parked; returns the results."""
    results = [r async for r in stack.store.database["current_results"].find({})]
    assert sorted(r["doc_id"] for r in results) == sorted(f"d{i}" for i in range(documents))
    assert await count(stack, "dead_letters") == 0
    assert await count(stack, "parked") == 0
    return results


async def test_documents_go_through_three_rounds_at_half_the_price(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    documents = 6
    await publish(stack, documents)
    report = await run_worker(stack, llm)
    results = await assert_all_done(stack, documents)
    assert max(r["delivery_count"] for r in results) == 1  # parking spent no attempt
    assert report.count(_action("parked")) == 3 * documents  # one parking per round
    assert llm_server.stats()["requests"] == 0  # nothing went to the live endpoint
    assert llm_server.batch_api.stats()["created"] == 3  # one provider batch per round
    calls = [c async for c in stack.store.database["llm_calls"].find({"batch_id": BATCH})]
    assert len(calls) == 3 * documents
    assert {c["llm_mode"] for c in calls} == {"batch"}
    assert all(c["provider_batch_id"] and c["custom_id"] for c in calls)
    live_price = sum(
        PriceTable().cost("docbus-offline", c["prompt_tokens"], c["completion_tokens"])
        for c in calls
    )
    batch = await stack.store.get_batch(BATCH)
    assert batch is not None
    assert batch.cost.usd == pytest.approx(live_price / 2)
    assert sum(c["cost_usd"] for c in calls) == pytest.approx(live_price / 2)
    assert await stack.store.count_llm_requests(batch_id=BATCH) == {
        "pending": 0, "submitted": 0, "answered": 3 * documents, "failed": 0, "held": 0,
    }  # fmt: skip


def _action(value: str) -> Any:
    from subscriber.settlement import Action

    return Action(value)


async def test_expired_requests_are_resubmitted_alone_until_answered(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    documents = 10
    llm_server.configure(batch={"in_progress_seconds": 0.5, "expire_share": 0.1})
    await publish(stack, documents)
    await run_worker(stack, llm)
    await assert_all_done(stack, documents)
    records = [r async for r in stack.store.database["llm_provider_batches"].find()]
    expired = [r for r in records if r.get("provider_status") == "expired"]
    assert expired  # a tenth of each round went unanswered...
    resubmitted = [r for r in records if len(r["keys"]) < documents]
    assert resubmitted  # ...and only those went again, in a batch of their own
    requests = [r async for r in stack.store.database["llm_requests"].find()]
    assert len(requests) == 3 * documents
    expiries = sum(r["expiries"] for r in requests)
    assert expiries >= len(expired)
    # every line sent was a request's first submission or the resubmission of an expired one
    assert sum(len(r["keys"]) for r in records) == 3 * documents + expiries
    calls = await count(stack, "llm_calls", {"batch_id": BATCH})
    assert calls == 3 * documents  # nothing answered twice, nothing paid twice
    batch = await stack.store.get_batch(BATCH)
    assert batch is not None and batch.cost.calls == 3 * documents


async def test_requests_that_expire_too_often_dead_letter_their_documents_as_batch_expired(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    documents = 2
    llm_server.configure(batch={"in_progress_seconds": 0.2, "expire_share": 1.0})
    await publish(stack, documents)
    await run_worker(stack, llm)
    dead = [d async for d in stack.store.database["dead_letters"].find()]
    assert sorted(d["doc_id"] for d in dead) == ["d0", "d1"]
    assert {d["reason"] for d in dead} == {"BatchExpired"}
    assert await count(stack, "results") == 0
    assert await count(stack, "parked") == 0
    # max_expiries (2) resubmissions after the first expiry, then the dead letter
    assert llm_server.batch_api.stats()["created"] == 3


async def test_a_quota_refusal_at_create_backs_off_and_dead_letters_nothing(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    documents = 4
    llm_server.configure(batch={"in_progress_seconds": 0.2, "quota_at_create": True})
    await publish(stack, documents)
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = make_worker(client, stack, llm, until_idle=None)
        running = asyncio.create_task(worker.run())
        try:

            async def refused_twice() -> bool:
                return int(llm_server.batch_api.stats()["refused"]) >= 2

            await wait_for(refused_twice, "two refusals at create")
            assert await count(stack, "dead_letters") == 0
            pauses = await stack.store.llm_submission_pauses()
            assert [p.reason for p in pauses] == ["QuotaExhausted"]
            llm_server.configure(batch={"in_progress_seconds": 0.2, "quota_at_create": False})

            async def all_done() -> bool:
                return await count(stack, "current_results") == documents

            await wait_for(all_done, "every document once the quota is back")
        finally:
            worker.stop()
            await asyncio.wait_for(running, 60)
    await assert_all_done(stack, documents)
    assert llm_server.batch_api.stats()["created"] == 3


async def test_a_bad_key_holds_the_round_without_dead_letters_until_the_key_works_again(
    stack: Stack, llm_server: LLMServer
) -> None:
    # the refusal back-off is long (60 s): only the probe can end it within this test
    quick_batches(stack, llm_server, refusal_base=60.0, refusal_max=60.0, probe_every=0.2)
    llm_server.configure(batch={"in_progress_seconds": 0.2}, api_key="sk-rotated")
    documents = 4
    await publish(stack, documents)
    async with (
        LLMClient.from_settings(stack.settings, stack.store) as llm,
        ServiceBusClient.from_connection_string(stack.connection_string) as client,
    ):
        # the breaker's own (live) probe never runs here: the Batch API's answer closes it
        worker = make_worker(client, stack, llm, until_idle=None, probe_interval=3600)
        running = asyncio.create_task(worker.run())
        try:

            async def refused_and_parked() -> bool:
                pauses = await stack.store.llm_submission_pauses()
                parked = await count(stack, "parked")
                return [p.reason for p in pauses] == ["AuthenticationFailed"] and (
                    parked == documents
                )

            await wait_for(refused_and_parked, "the round held by the refused key")
            assert worker.paused  # the circuit breaker opened, as on a live systemic failure
            assert await count(stack, "dead_letters") == 0
            assert llm_server.batch_api.stats()["created"] == 0
            llm_server.configure(api_key=KEY)  # the operator fixes the key

            async def all_done() -> bool:
                return await count(stack, "current_results") == documents

            await wait_for(all_done, "every document once the key works")
            assert not worker.paused  # closed when the Batch API took the key again
        finally:
            worker.stop()
            await asyncio.wait_for(running, 60)
    results = await assert_all_done(stack, documents)
    assert max(r["delivery_count"] for r in results) == 1  # no delivery attempt was spent
    assert llm_server.batch_api.stats()["created"] == 3


def worker_process(
    stack: Stack,
    llm_server: LLMServer,
    tmp_path: Path,
    handlers: str,
    *,
    api_key: str = KEY,
    until_idle: float | None = None,
) -> subprocess.Popen[bytes]:
    """``docbus worker`` in a process of its own, on this stack, for a test to kill (or to
    wait for, with ``until_idle``)."""
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text(TOPOLOGY_TOML)
    env = {
        **os.environ,
        "DOCBUS_SERVICEBUS__CONNECTION_STRING": stack.connection_string,
        "DOCBUS_MONGODB__URI": stack.settings.mongodb.uri.get_secret_value(),
        "DOCBUS_MONGODB__DATABASE": stack.settings.mongodb.database,
        "DOCBUS_LLM__API_KEY": api_key,
        "DOCBUS_LLM__BASE_URL": llm_server.base_url,
        "DOCBUS_LLM__MODEL": "docbus-offline",
        **{f"DOCBUS_LLM__BATCH__{name.upper()}": str(value) for name, value in FAST_BATCH.items()},
    }
    idle = [] if until_idle is None else ["--until-idle", str(until_idle)]
    return subprocess.Popen(
        [sys.executable, "-m", "docbus", "worker", "--handlers", handlers,
         "--topology", str(topology_file), *idle],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


async def kill_when(proc: subprocess.Popen[bytes], condition: Callable[[], Any], what: str) -> None:
    """SIGKILL the worker process once ``condition`` holds (it must not die before)."""
    try:

        async def alive_and(condition: Callable[[], Any] = condition) -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            return bool(await condition())

        await wait_for(alive_and, what)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_a_worker_killed_mid_round_loses_nothing_and_pays_no_round_twice(
    stack: Stack,
    llm: LLMClient,
    llm_server: LLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    documents = 5
    llm_server.configure(batch={"in_progress_seconds": 2.0})
    await publish(stack, documents)
    proc = worker_process(stack, llm_server, tmp_path, "handlers.builtin.entities")

    async def round_one_open() -> bool:
        return int(llm_server.batch_api.stats()["created"]) >= 1

    await kill_when(proc, round_one_open, "the first provider batch")
    # A deferral the killed worker made but had not confirmed in its parked record is fetched
    # back once the record is old enough (5 minutes; 3 s here): the worker is surely gone.
    monkeypatch.setattr(parked_module, "UNCONFIRMED_AFTER", timedelta(seconds=3))
    # the killed worker's lease lapses (lease_ttl 3 s), then this worker adopts its batch
    await run_worker(stack, llm)
    await assert_all_done(stack, documents)
    assert llm_server.batch_api.stats()["created"] == 3  # one per round, none twice
    assert await count(stack, "llm_calls", {"batch_id": BATCH}) == 3 * documents


@pytest.mark.parametrize("point", ["upload", "create", "download"])
async def test_a_worker_killed_exactly_after_a_provider_step_loses_nothing_and_pays_once(
    point: str,
    stack: Stack,
    llm: LLMClient,
    llm_server: LLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the server carries the step out (file stored / batch created / half the output sent),
    # then holds its answer: the worker process dies with the step done and unrecorded
    documents = 4
    llm_server.configure(batch={"in_progress_seconds": 0.5, "hang": point})
    await publish(stack, documents)
    proc = worker_process(stack, llm_server, tmp_path, "handlers.builtin.entities")

    async def held() -> bool:
        return int(llm_server.batch_api.stats()["hung"].get(point, 0)) >= 1

    await kill_when(proc, held, f"the worker waiting on the answer to its {point}")
    llm_server.configure(batch={"in_progress_seconds": 0.5, "hang": None})
    monkeypatch.setattr(parked_module, "UNCONFIRMED_AFTER", timedelta(seconds=3))
    await run_worker(stack, llm)  # after the dead worker's lease lapses, it takes over
    await assert_all_done(stack, documents)
    stats = llm_server.batch_api.stats()
    assert stats["created"] == 3  # one provider batch per round: the dead one's adopted
    assert stats["requests"] == 3 * documents  # no request sent twice
    assert await count(stack, "llm_calls", {"batch_id": BATCH}) == 3 * documents
    batch = await stack.store.get_batch(BATCH)
    assert batch is not None and batch.cost.calls == 3 * documents  # nothing paid twice
    assert stats["files"] == 0  # the dead worker's upload used, every file deleted at the end


async def test_schema_failures_are_re_asked_in_the_next_round(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    documents = 6
    llm_server.configure(faults={"rate_schema": 0.4})
    await publish(stack, documents)
    await run_worker(stack, llm)
    done = {r["doc_id"] async for r in stack.store.database["current_results"].find({})}
    dead = [d async for d in stack.store.database["dead_letters"].find()]
    assert {d["reason"] for d in dead} <= {"SchemaValidationFailed"}
    # every document ends as exactly one result or one dead letter
    assert sorted([*done, *(d["doc_id"] for d in dead)]) == [f"d{i}" for i in range(documents)]
    assert await count(stack, "parked") == 0
    calls = [c async for c in stack.store.database["llm_calls"].find({"batch_id": BATCH})]
    reasks = [c for c in calls if c["reask"]]
    assert reasks and all(c["llm_mode"] == "batch" for c in reasks)
    requests = await count(stack, "llm_requests")
    assert requests == len(calls)  # each answer used once, each re-ask a request of its own
    # a re-ask waits for the next round: more provider batches than the three steps
    assert llm_server.batch_api.stats()["created"] > 3


async def test_a_worker_killed_while_a_resumed_delivery_runs_strands_nothing(
    stack: Stack,
    llm: LLMClient,
    llm_server: LLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # tests.subscriber.llm_handlers.three_steps hangs in step 3 on a first delivery: in batch
    # mode that is the delivery resumed after round 2 (parking spends no attempt)
    documents = 3
    await publish(stack, documents, topic="llm", hang_in_step3=True)
    proc = worker_process(stack, llm_server, tmp_path, "tests.subscriber.llm_handlers")

    async def resumed_and_hanging() -> bool:
        # (a resumed delivery's parked record stays, marked, until it settles)
        return (
            await count(stack, "checkpoints") == 2 * documents
            and await count(stack, "parked", {"resumed_at": {"$ne": None}}) == documents
        )

    await kill_when(proc, resumed_and_hanging, "the deliveries resumed for step 3")
    from tests.subscriber.llm_handlers import three_steps

    # a resumed delivery's record is fetched back once its worker has surely gone
    monkeypatch.setattr(parked_module, "UNCONFIRMED_AFTER", timedelta(seconds=3))
    await run_worker(stack, llm, [three_steps])
    assert await count(stack, "current_results") == documents
    assert await count(stack, "parked") == 0
    assert await count(stack, "dead_letters") == 0


async def test_an_idle_check_between_an_apply_and_its_marking_ends_no_work_early(
    stack: Stack, llm: LLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worst case of that window: the submitter never marks anything (its on_done hook
    # does nothing); the worker's idle check finds the answered deliveries itself.
    from handlers.llm.batch import BatchBookkeeping

    async def says_nothing(self: BatchBookkeeping, keys: Any) -> None:
        return None

    monkeypatch.setattr(BatchBookkeeping, "on_done", says_nothing)
    documents = 2
    await publish(stack, documents)
    await run_worker(stack, llm, until_idle=1.0)
    await assert_all_done(stack, documents)


async def test_a_round_resumes_together_while_an_idle_receive_holds_the_credits(
    stack: Stack, llm_server: LLMServer
) -> None:
    # A receive on the (empty) subscription holds every admission credit for receive_wait:
    # resumed deliveries must not trickle in one credit per receive (their requests spread over
    # many seconds: one provider batch per few deliveries). They take the free credits ahead of
    # the receive loop, and the submitter waits for every resumed delivery to register (quiet
    # rule) rather than submit the first ones at max_wait.
    seconds = await three_rounds(stack, llm_server, 12, quiet=0.5, concurrency=4, receive_wait=3)
    # three rounds of 0.5 s processing and a few receive waits, not max_wait per round
    assert seconds < 45


async def test_resumed_deliveries_park_again_without_waiting_out_an_idle_receive(
    stack: Stack, llm_server: LLMServer
) -> None:
    # A resumed delivery of a round ends in a defer (it parks for the next round), and a
    # settlement waits for the link while a receive holds it: with a receive on the empty
    # subscription waiting receive_wait (5 s here) each wave of resumed deliveries waited
    # that long to park again — 8 documents at concurrency 2 took 4 waves, ~20 s a round.
    # While resumed deliveries run, a receive waits briefly, as while completions wait.
    seconds = await three_rounds(stack, llm_server, 8, quiet=0.3, concurrency=2, receive_wait=5)
    # rounds 2 and 3 re-run 8 deliveries each in 4 waves: not 5 s per wave
    assert seconds < 30


async def three_rounds(
    stack: Stack, llm_server: LLMServer, documents: int, *, quiet: float, **worker: Any
) -> float:
    """Seconds a worker with ``worker``'s options takes over ``documents`` documents' three
    rounds (one provider batch each, every document done)."""
    quick_batches(stack, llm_server, max_wait=20.0, quiet=quiet)
    await publish(stack, documents)
    started = time.monotonic()
    async with LLMClient.from_settings(stack.settings, stack.store) as llm:
        await run_worker(stack, llm, **worker)
    seconds = time.monotonic() - started
    await assert_all_done(stack, documents)
    assert llm_server.batch_api.stats()["created"] == 3  # one provider batch per round
    return seconds
