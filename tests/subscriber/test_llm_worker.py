"""The worker with real LLM steps: crash between steps, systemic failures, budgets, 429 storms.

The offline LLM server, the emulator and SecantusDB all run for real; the handler is the
three-step :mod:`tests.subscriber.llm_handlers`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus.aio import ServiceBusClient

from docbus.backoff import BackoffPolicy
from docbus.local.llm_server import Faults, LLMServer, LLMServerConfig
from handlers.llm import LLMClient
from handlers.runtime import discover_handlers
from publisher import publish_documents
from subscriber.worker import Worker, WorkerOptions, WorkerReport
from tests.subscriber import llm_handlers
from tests.subscriber.conftest import KEY, Stack

FAST = BackoffPolicy(base=0.2, cap=1.0, jitter=0.0)
TEXT = "Acme Metals reported a fire at its plant in Ostrava; Globex Logistics expects delays."


async def publish(stack: Stack, count: int, **metadata: Any) -> None:
    docs = [
        {"text": f"{TEXT} Item {i}.", "doc_id": f"d{i}", "metadata": dict(metadata)}
        for i in range(count)
    ]
    report = await publish_documents(
        docs, topic="llm", batch_id="llm1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok


def make_worker(client: ServiceBusClient, stack: Stack, llm: LLMClient, **options: Any) -> Worker:
    options.setdefault("until_idle", 1.5)
    options.setdefault("backoff", FAST)
    return Worker(
        discover_handlers(llm_handlers),
        client=client,
        store=stack.store,
        options=WorkerOptions(**options),
        topology=stack.topology,
        llm=llm,
    )


async def run_worker(stack: Stack, llm: LLMClient, **options: Any) -> WorkerReport:
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        return await make_worker(client, stack, llm, **options).run()


async def wait_for(condition: Callable[[], Any], what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def current_results(stack: Stack) -> int:
    return int(await stack.store.database["current_results"].count_documents({}))


async def test_three_step_documents_finish_with_every_call_audited(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    await publish(stack, 4)
    report = await run_worker(stack, llm)
    assert report.settled == 4 and await current_results(stack) == 4
    calls = [c async for c in stack.store.database["llm_calls"].find({"batch_id": "llm1"})]
    assert len(calls) == 12 == llm_server.stats()["requests"]
    assert {c["step"] for c in calls} == {"classify", "extract", "summarise"}
    assert (
        sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)
        == (llm_server.stats()["tokens"]["total"])
    )


async def test_a_worker_killed_between_steps_resumes_without_repeating_them(
    stack: Stack, llm: LLMClient, llm_server: LLMServer, tmp_path: Path
) -> None:
    await publish(stack, 1, hang_in_step3=True)
    topology_file = tmp_path / "topology.toml"
    topology_file.write_text(
        '[defaults]\nmax_delivery_count = 3\nlock_duration = "PT2S"\n'
        '[[topics]]\nname = "llm"\n[[topics.subscriptions]]\nname = "steps"\n'
    )
    env = {
        **os.environ,
        "DOCBUS_SERVICEBUS__CONNECTION_STRING": stack.connection_string,
        "DOCBUS_MONGODB__URI": stack.settings.mongodb.uri.get_secret_value(),
        "DOCBUS_MONGODB__DATABASE": stack.settings.mongodb.database,
        "DOCBUS_LLM__API_KEY": KEY,
        "DOCBUS_LLM__BASE_URL": llm_server.base_url,
        "DOCBUS_LLM__MODEL": "docbus-offline",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - a worker process to kill
        [sys.executable, "-m", "docbus", "worker", "--handlers", "tests.subscriber.llm_handlers",
         "--topology", str(topology_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    checkpoints = stack.store.database["checkpoints"]
    try:

        async def two_steps_done() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            return await checkpoints.count_documents({}) >= 2

        await wait_for(two_steps_done, "steps 1 and 2 of the first delivery")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert llm_server.stats()["requests"] == 2
    await run_worker(stack, llm, until_idle=4.0)  # after the 2 s lock expires
    assert await current_results(stack) == 1
    assert llm_server.stats()["requests"] == 3  # only step 3 ran again
    steps = [c["step"] async for c in stack.store.database["llm_calls"].find().sort("_id", 1)]
    assert steps == ["classify", "extract", "summarise"]


async def test_a_bad_api_key_pauses_the_worker_and_it_resumes_when_fixed(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    await publish(stack, 5)
    llm_server.configure(api_key="rotated-key")  # our key is now wrong
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = make_worker(
            client, stack, llm, until_idle=None, probe_interval=0.2, resume_interval=0.2,
            concurrency=2,
        )  # fmt: skip
        running = asyncio.create_task(worker.run())

        async def paused() -> bool:
            return worker.paused

        await wait_for(paused, "the circuit breaker to open")
        parked_while_paused = await stack.store.database["parked"].count_documents({})
        assert parked_while_paused >= 1
        assert await stack.store.database["dead_letters"].count_documents({}) == 0
        llm_server.configure(api_key=KEY)  # the operator fixes the key

        async def all_done() -> bool:
            return await current_results(stack) == 5

        await wait_for(all_done, "every document after the fix")
        worker.stop()
        report = await asyncio.wait_for(running, 30)
    assert await stack.store.database["dead_letters"].count_documents({}) == 0
    assert await stack.store.database["parked"].count_documents({}) == 0
    results = [r async for r in stack.store.database["current_results"].find({})]
    assert max(r["delivery_count"] for r in results) == 1  # no delivery attempt was spent
    # in-flight deliveries may have parked after the snapshot; none was lost either way
    assert report.count(report_action("parked")) >= parked_while_paused


def report_action(value: str):  # type: ignore[no-untyped-def]
    from subscriber.settlement import Action

    return Action(value)


async def test_a_batch_over_budget_waits_and_resumes_when_the_budget_is_raised(
    stack: Stack, llm: LLMClient
) -> None:
    await publish(stack, 6)
    await stack.store.set_batch_budget("llm1", 0.0000001)  # spent after the first call
    async with ServiceBusClient.from_connection_string(stack.connection_string) as client:
        worker = make_worker(client, stack, llm, until_idle=None, resume_interval=0.2)
        running = asyncio.create_task(worker.run())

        async def all_parked() -> bool:
            parked = await stack.store.database["parked"].count_documents({})
            return parked + await current_results(stack) == 6 and parked > 0

        await wait_for(all_parked, "the batch to stop spending")
        batch = await stack.store.get_batch("llm1")
        assert batch is not None and batch.over_budget
        assert await stack.store.database["dead_letters"].count_documents({}) == 0
        await stack.store.set_batch_budget("llm1", 10.0)

        async def all_done() -> bool:
            return await current_results(stack) == 6

        await wait_for(all_done, "the parked documents after raising the budget")
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert await stack.store.database["parked"].count_documents({}) == 0


@pytest.mark.parametrize(
    "llm_server_config",
    [LLMServerConfig(api_key=KEY, faults=Faults(rate_429=0.4, retry_after=0.2), seed=3)],
)
async def test_a_429_storm_delays_documents_but_loses_none(
    stack: Stack, llm: LLMClient, llm_server: LLMServer
) -> None:
    await publish(stack, 8)
    await run_worker(stack, llm, until_idle=3.0)
    assert await current_results(stack) == 8
    assert await stack.store.database["dead_letters"].count_documents({}) == 0
    assert llm_server.stats()["outcomes"]["rate_limited"] > 0
