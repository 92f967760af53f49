"""The submitter against SecantusDB and the offline Batch API through the real ``openai`` SDK:
whole passes, one holder among many, backoff on systemic refusals, and a submitter process
SIGKILLed after the upload, after the create and mid-download."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pymongo
import pytest

from docbus.llm_batch import BatchRequest, FileLimits, Settlement, SubmitPolicy
from docbus.llm_batch.submitter import Submitter, SubmitterOptions
from docbus.local.llm_server import LLMServer
from docbus.local.mongo import LocalMongo
from docbus.store import LLMRequestState, ProviderBatchRecord, Store

MODEL = "docbus-offline"
NOW_POLICY = SubmitPolicy(max_wait=0.0)


class Clock:
    """One hand-moved clock for the submitter (datetimes) and the server (seconds)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()

    def move(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(llm_server: LLMServer) -> Clock:
    hand = Clock()
    llm_server.batch_api.clock = hand.seconds
    return hand


@pytest.fixture
async def sdk(llm_server: LLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=llm_server.base_url, api_key="sk-test", max_retries=0
    ) as client:
        yield client


def submitter(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, holder: str = "w1", **options: Any
) -> Submitter:
    options.setdefault("policy", NOW_POLICY)
    return Submitter(store, sdk, holder=holder, options=SubmitterOptions(**options), clock=clock)


async def register(store: Store, count: int, *, tokens: int = 0) -> list[str]:
    keys = []
    for i in range(count):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Document {i}."}]}
        made = BatchRequest.of(f"step-{i}", body, estimated_tokens=tokens)
        await store.register_llm_request(made, step_id=f"step-{i}", batch_id="b1")
        keys.append(made.key)
    return keys


async def states(store: Store, keys: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in (await store.llm_requests(keys)).values():
        counts[record.state.value] = counts.get(record.state.value, 0) + 1
    return counts


async def test_one_pass_submits_and_collects_every_request(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 10)
    seen: list[tuple[str, int]] = []

    async def on_settled(record: ProviderBatchRecord, settlement: Settlement) -> None:
        seen.append((record.id, len(settlement.answers)))

    worker = Submitter(
        store,
        sdk,
        holder="w1",
        options=SubmitterOptions(policy=NOW_POLICY, limits=FileLimits(max_requests=4)),
        on_settled=on_settled,
        clock=clock,
    )
    report = await worker.run_once()
    assert report.holder and (report.created, report.settled) == (3, 3)
    assert sorted(n for _, n in seen) == [2, 4, 4]
    assert await states(store, keys) == {"answered": 10}
    assert llm_server.batch_api.stats()["created"] == 3
    assert await store.open_provider_batches() == []


async def test_a_young_small_group_waits_for_company(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock
) -> None:
    keys = await register(store, 3)
    worker = submitter(store, sdk, clock, policy=SubmitPolicy(max_wait=60, min_requests=100))
    assert (await worker.run_once()).created == 0
    clock.move(61)
    assert (await worker.run_once()).created == 1
    assert await states(store, keys) == {"answered": 3}


async def test_an_open_batch_is_polled_with_backoff_until_it_ends(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 4)
    llm_server.configure(batch={"in_progress_seconds": 600})
    worker = submitter(store, sdk, clock)
    first = await worker.run_once()
    assert (first.created, first.settled) == (1, 0)
    [record] = await store.open_provider_batches()
    assert record.provider_status == "in_progress" and record.next_poll_at is not None
    assert (await worker.run_once()).settled == 0  # not due: nothing asked
    assert (await store.open_provider_batches())[0].polls == 1
    clock.move(600)
    assert (await worker.run_once()).settled == 1
    assert await states(store, keys) == {"answered": 4}


async def test_only_the_lease_holder_acts(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, local_mongo: LocalMongo
) -> None:
    await register(store, 2)
    async with Store(local_mongo.uri, store.database.name, timeout=5.0) as other_store:
        first = submitter(store, sdk, clock, holder="w1")
        second = submitter(other_store, sdk, clock, holder="w2")
        reports = await asyncio.gather(first.run_once(), second.run_once())
    assert sorted(r.holder for r in reports) == [False, True]
    assert sum(r.created for r in reports) == 1


async def test_a_quota_refusal_at_create_backs_off_and_dead_letters_nothing(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 3)
    llm_server.configure(batch={"quota_at_create": True})
    worker = submitter(store, sdk, clock)
    report = await worker.run_once()
    assert report.paused == [f"{MODEL}: QuotaExhausted"] and report.created == 0
    assert await states(store, keys) == {"submitted": 3}  # kept by their record, uncounted
    assert (await worker.run_once()).errors == []  # paused: not even tried
    llm_server.configure(batch={"quota_at_create": False})
    clock.move(3600)
    report = await worker.run_once()
    assert report.created == 1 and await states(store, keys) == {"answered": 3}
    assert llm_server.batch_api.stats()["created"] == 1
    assert await store.llm_submission_pauses() == []


async def test_a_bad_key_at_upload_backs_off_and_releases_the_requests(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 3)
    llm_server.configure(api_key="sk-the-right-one")
    report = await submitter(store, sdk, clock).run_once()
    assert report.paused == [f"{MODEL}: AuthenticationFailed"] and report.abandoned == 1
    records = await store.llm_requests(keys)
    assert {(r.state, r.attempts) for r in records.values()} == {(LLMRequestState.PENDING, 0)}


async def test_a_fixed_key_ends_the_back_off_at_the_next_probe_not_after_it(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 3)
    llm_server.configure(api_key="sk-rotated")  # ours is refused
    worker = submitter(store, sdk, clock, probe_every=5.0)
    assert (await worker.run_once()).paused == [f"{MODEL}: AuthenticationFailed"]
    [pause] = await store.llm_submission_pauses()
    assert (pause.until - clock.now).total_seconds() >= 10  # the refusal back-off (30 s)
    clock.move(5)
    assert (await worker.run_once()).created == 0  # probed: still refused
    assert worker.next_pass_in() <= 5.0  # the loop comes back for the next probe, not later
    llm_server.configure(api_key="sk-test")  # the operator fixes the key
    assert (await worker.run_once()).created == 0  # the next probe is due in 5 s, not now
    clock.move(5)
    report = await worker.run_once()  # probed: accepted, so the group goes at once
    assert report.created == 1 and await states(store, keys) == {"answered": 3}
    assert await store.llm_submission_pauses() == []


async def test_a_quota_pause_is_not_probed_away(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    await register(store, 2)
    llm_server.configure(batch={"quota_at_create": True})
    worker = submitter(store, sdk, clock, probe_every=1.0)
    await worker.run_once()
    llm_server.configure(batch={"quota_at_create": False})
    clock.move(2)
    assert (await worker.run_once()).created == 0  # only a real submission shows quota back
    assert [p.reason for p in await store.llm_submission_pauses()] == ["QuotaExhausted"]


async def test_expiry_resubmits_the_missing_in_the_next_pass(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 10)
    llm_server.configure(batch={"expire_share": 0.2})
    worker = submitter(store, sdk, clock)
    await worker.run_once()
    assert await states(store, keys) == {"answered": 8, "pending": 2}
    llm_server.configure(batch={"expire_share": 0.0})
    await worker.run_once()
    assert await states(store, keys) == {"answered": 10}
    assert llm_server.batch_api.stats()["requests"] == 12


async def test_files_are_deleted_at_the_provider_once_the_answers_are_stored(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 10)
    llm_server.configure(batch={"line_400_share": 0.3})  # an error file as well
    report = await submitter(store, sdk, clock).run_once()
    assert report.settled == 1 and report.files_deleted == 3  # input, output, error
    assert llm_server.batch_api.stats()["files"] == 0
    [record] = await store.provider_batches()
    assert record.files_deleted_at is not None
    assert sum((await states(store, keys)).values()) == 10


async def test_with_delete_files_off_the_files_stay(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    await register(store, 4)
    report = await submitter(store, sdk, clock, delete_files=False).run_once()
    assert report.settled == 1 and report.files_deleted == 0
    assert llm_server.batch_api.stats()["files"] == 2  # input and output
    [record] = await store.provider_batches()
    assert record.files_deleted_at is None


async def test_a_queued_token_quota_holds_back_what_would_pass_it_until_batches_finish(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 5, tokens=400)
    llm_server.configure(batch={"in_progress_seconds": 600})
    worker = submitter(store, sdk, clock, queued_tokens={MODEL: 1000})
    assert (await worker.run_once()).created == 1  # 2 x 400 of 1,000: the 3rd would pass it
    assert await states(store, keys) == {"submitted": 2, "pending": 3}
    assert (await worker.run_once()).created == 0  # still 800 enqueued
    clock.move(600)  # the first batch ends: its 800 tokens are free again
    report = await worker.run_once()
    assert (report.settled, report.created) == (1, 1)
    assert await states(store, keys) == {"answered": 2, "submitted": 2, "pending": 1}
    clock.move(600)
    await worker.run_once()
    clock.move(600)
    await worker.run_once()
    assert await states(store, keys) == {"answered": 5}
    assert llm_server.batch_api.stats()["created"] == 3


async def test_a_provider_quota_docbus_was_not_told_of_is_learnt_from_its_refusals(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    # ten requests the server bills 10 tokens each, a quota of 35 it enforces and docbus does
    # not know of (llm.batch.queued_tokens unset): one batch of all ten can never be accepted
    keys = await register(store, 10, tokens=10)
    llm_server.configure(batch={"queued_tokens": 35})
    worker = submitter(store, sdk, clock)
    for _ in range(12):
        await worker.run_once()
        clock.move(3600)  # past any back-off
        if await states(store, keys) == {"answered": 10}:
            break
    assert await states(store, keys) == {"answered": 10}  # nothing dead-lettered, all done
    stats = llm_server.batch_api.stats()
    assert stats["over_quota"] == 2  # ten refused, then five; from then on batches of two
    assert stats["queued_peak"] <= 35


async def test_a_request_above_the_whole_quota_is_dead_lettered_with_what_to_do(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock
) -> None:
    [key] = await register(store, 1, tokens=5000)
    report = await submitter(store, sdk, clock, queued_tokens={MODEL: 1000}).run_once()
    assert report.created == 0
    record = (await store.llm_requests([key]))[key]
    assert record.state is LLMRequestState.FAILED and record.failure is not None
    assert record.failure["reason"] == "LLMRequestTooLarge"
    assert "llm.batch.queued_tokens" in record.failure["description"]


class Crash(Exception):
    """The submitter's process dies here."""


async def test_a_crash_between_storing_the_answers_and_deleting_leaves_files_not_answers(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    keys = await register(store, 4)

    def die_after_settling(point: str) -> None:
        if point == "settled":
            raise Crash

    dying = Submitter(
        store, sdk, holder="w1", options=SubmitterOptions(policy=NOW_POLICY),
        checkpoint=die_after_settling, clock=clock,
    )  # fmt: skip
    with pytest.raises(Crash):
        await dying.run_once()
    assert await states(store, keys) == {"answered": 4}  # stored before any file went
    assert llm_server.batch_api.stats()["files"] == 2
    clock.move(120)  # the dead holder's lease lapses; the next one sweeps what it left
    report = await submitter(store, sdk, clock, holder="w2").run_once()
    assert report.holder and report.files_deleted == 2
    assert llm_server.batch_api.stats()["files"] == 0
    assert await states(store, keys) == {"answered": 4}


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import openai
    from docbus.llm_batch import SubmitPolicy
    from docbus.llm_batch.submitter import Submitter, SubmitterOptions
    from docbus.store import Store

    uri, database, base_url, point = sys.argv[1:5]

    def checkpoint(name):
        if name == point:
            os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        async with Store(uri, database, timeout=5.0) as store:
            async with openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0) as sdk:
                options = SubmitterOptions(
                    policy=SubmitPolicy(max_wait=0.0), lease_ttl=5.0, renew_every=1.0
                )
                worker = Submitter(
                    store, sdk, holder="child", options=options, checkpoint=checkpoint
                )
                await worker.run_once()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("point", ["uploaded", "created", "downloaded"])
async def test_a_submitter_killed_at_any_point_loses_nothing_and_pays_once(
    point: str,
    store: Store,
    sdk: openai.AsyncOpenAI,
    llm_server: LLMServer,
    local_mongo: LocalMongo,
    tmp_path: Path,
) -> None:
    keys = await register(store, 8)
    llm_server.configure(batch={"line_400_share": 0.25})  # an error file too, for mid-download
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), local_mongo.uri, store.database.name,
        llm_server.base_url, point,
    )  # fmt: skip
    assert await child.wait() == -signal.SIGKILL
    [left] = await store.open_provider_batches()  # the child's record, mid-way
    assert await states(store, keys) == {"submitted": 8}
    # the next worker: once the child's lease has lapsed (its clock says so), it takes over
    later = Clock()
    later.move(10)
    report = await Submitter(
        store, sdk, holder="next", options=SubmitterOptions(policy=NOW_POLICY), clock=later
    ).run_once()
    assert report.holder and report.settled == 1
    assert llm_server.batch_api.stats()["created"] == 1  # adopted or never made: paid once
    assert await store.open_provider_batches() == []
    if point == "uploaded":
        assert report.created == 1
    settled = await store.get_provider_batch(left.id)
    assert settled is not None and settled.outcome == {
        "answered": 6, "resubmitted": 0, "dead": 2, "released": 0, "held": 0,
    }  # fmt: skip
    assert await states(store, keys) == {"answered": 6, "failed": 2}
    # every file is gone once the outcome is stored: the input the child uploaded before it
    # died unrecorded ("uploaded") as well
    assert llm_server.batch_api.stats()["files"] == 0


async def test_a_lapsed_holder_cancels_the_batch_it_created_after_its_successor_moved_on(
    store: Store,
    sdk: openai.AsyncOpenAI,
    clock: Clock,
    llm_server: LLMServer,
    local_mongo: LocalMongo,
) -> None:
    await register(store, 2)
    llm_server.configure(batch={"in_progress_seconds": 600})
    records = pymongo.MongoClient(local_mongo.uri)[store.database.name]["llm_provider_batches"]

    def successor_takes_over(point: str) -> None:
        if point == "created":  # the successor's token reaches the record first
            records.update_many({}, {"$set": {"token": 99}})

    worker = Submitter(
        store,
        sdk,
        holder="w1",
        options=SubmitterOptions(policy=NOW_POLICY),
        checkpoint=successor_takes_over,
        clock=clock,
    )
    report = await worker.run_once()
    records.database.client.close()
    assert report.created == 0
    assert llm_server.batch_api.stats()["by_status"] == {"cancelled": 1}


async def test_a_quiet_group_goes_before_max_wait_once_no_delivery_is_resuming(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock
) -> None:
    from docbus.store import ParkedMessage

    keys = await register(store, 3)
    # a delivery of the last round marked for resumption: it will register its next request
    resuming = ParkedMessage(
        topic="t", subscription="s", sequence_number=1, reason="AwaitingBatch",
        llm_requests=["answered-before"], deferred=True,
    )  # fmt: skip
    await store.park(resuming)
    await store.request_resume(topic="t")
    policy = SubmitPolicy(max_wait=60, min_requests=100, quiet=5)
    worker = submitter(store, sdk, clock, policy=policy, renew_every=15)
    assert (await worker.run_once()).created == 0  # requests just came
    assert worker.next_pass_in() <= 5  # it looks again when the group may be quiet, not in 15 s
    clock.move(6)
    assert (await worker.run_once()).created == 0  # quiet, but a delivery is still resuming
    await store.unpark(resuming)  # it parked again (or settled): the round is all in
    assert (await worker.run_once()).created == 1
    assert await states(store, keys) == {"answered": 3}


async def test_the_next_pass_comes_when_an_open_batch_is_due_for_a_poll(
    store: Store, sdk: openai.AsyncOpenAI, clock: Clock, llm_server: LLMServer
) -> None:
    await register(store, 4)
    llm_server.configure(batch={"in_progress_seconds": 600})
    worker = submitter(store, sdk, clock, renew_every=15)
    assert (await worker.run_once()).created == 1
    [record] = await store.open_provider_batches()
    assert record.next_poll_at is not None
    due = (record.next_poll_at - clock()).total_seconds()
    assert due < 15 and worker.next_pass_in() == pytest.approx(due, abs=0.01)
