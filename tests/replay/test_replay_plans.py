"""Replay decisions without a broker: batch selections, generations, rate limits, refusals."""

from __future__ import annotations

import io
import json
import re
import shlex
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from docbus.cli import replay as replay_cli
from docbus.cli import rollback as rollback_cli
from docbus.envelope import Envelope, message_id
from docbus.ops import rollback
from docbus.ops.dead_letters import parse_time
from docbus.records import DeadLetterRecord, ReplayItem, ReplayRecord, ResultRecord
from docbus.store import Store
from publisher.replay import ReplayError, plan_batch_replay, replay_status, subscription_of
from publisher.token_bucket import TokenBucket
from tests.replay.helpers import command, command_streams, rows


async def batch(store: Store) -> None:
    """d1 done by alpha, d2 dead in alpha, d3 done by beta only, d4 untouched, d5 done by both."""
    await store.record_documents(
        Envelope(doc_id=d, batch_id="b1", topic="docs", content=f"text {d}")
        for d in ("d1", "d2", "d3", "d4", "d5")
    )
    for doc, handler in (("d1", "alpha"), ("d3", "beta"), ("d5", "alpha"), ("d5", "beta")):
        await store.write_result(
            doc_id=doc, handler=handler, handler_version="1", batch_id="b1",
            message_id=message_id("b1", doc), output={},
        )  # fmt: skip
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=message_id("b1", "d2"), subscription="alpha-sub", handler="alpha",
            topic="docs", reason="BadDocument", batch_id="b1", doc_id="d2", generation=0,
        )
    )  # fmt: skip


@pytest.mark.parametrize(
    ("only", "handler", "expected"),
    [
        ("failed", "alpha", ["d2"]),
        ("missing", "alpha", ["d3", "d4"]),
        ("all", "alpha", ["d1", "d2", "d3", "d4", "d5"]),
        ("failed", None, ["d2"]),
        ("missing", None, ["d1", "d2", "d3", "d4"]),  # each lacks alpha or beta; d5 has both
    ],
)
async def test_a_batch_replay_selects_failed_missing_or_all_documents(
    store: Store,
    only: Literal["failed", "missing", "all"],
    handler: str | None,
    expected: list[str],
) -> None:
    await batch(store)
    subscription = "alpha-sub" if handler else None
    plan = await plan_batch_replay(
        store, "b1", only=only, handler=handler, subscription=subscription
    )
    assert [m.envelope.doc_id for m in plan.messages] == expected
    # without a handler, failed documents go where they failed (d2: alpha-sub), the rest to all
    route = "alpha-sub" if handler or only == "failed" else None
    for planned in plan.messages:
        envelope = planned.envelope
        assert envelope.generation == 1
        assert envelope.target_subscription == route
        assert envelope.replay_of == message_id("b1", envelope.doc_id, 0)
        assert envelope.content == f"text {envelope.doc_id}"


async def test_generations_count_up_from_the_highest_known_one(store: Store) -> None:
    await batch(store)
    await store.write_result(
        doc_id="d1", handler="alpha", handler_version="1", batch_id="b1",
        message_id=message_id("b1", "d1", 4), output={}, generation=4,
    )  # fmt: skip
    assert await store.known_generation("b1", "d1") == 4
    assert [await store.next_generation("b1", "d1") for _ in range(2)] == [5, 6]
    assert await store.known_generation("b1", "d1") == 6
    plan = await plan_batch_replay(store, "b1", only="all", limit=2)
    assert [(m.envelope.doc_id, m.envelope.generation) for m in plan.messages] == [
        ("d1", 7),
        ("d2", 1),
    ]


async def test_a_handler_is_resolved_to_its_subscription_or_refused(store: Store) -> None:
    await batch(store)
    assert await subscription_of(store, "alpha") == ("alpha-sub", "docs")  # from dead letters
    module = "tests.replay.replay_handlers"
    assert await subscription_of(store, "beta", handlers_module=module) == ("beta", "docs")
    with pytest.raises(ReplayError, match="--subscription"):
        await subscription_of(store, "beta")
    with pytest.raises(ReplayError, match="has no recorded documents"):
        await plan_batch_replay(store, "nope", only="all")


async def test_token_bucket_holds_the_rate_after_a_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):  # the first second's worth goes at once
        await bucket.take()
    assert slept == []
    for _ in range(20):
        await bucket.take()
    assert now[0] == pytest.approx(2.0)  # 20 more at 10/s
    await bucket.take(5)
    assert now[0] == pytest.approx(2.5)
    await bucket.take(30)  # larger than the bucket: waits for a full one, borrows the rest
    assert now[0] == pytest.approx(3.5)
    await bucket.take()
    assert now[0] == pytest.approx(5.6)  # the debt of 20 is waited off first


def test_times_are_iso_8601_or_an_age() -> None:
    now = datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("2025-01-30T08:00", now=now) == datetime(2025, 1, 30, 8, tzinfo=UTC)
    assert parse_time("2025-01-30T08:00+02:00") == datetime(2025, 1, 30, 6, tzinfo=UTC)
    with pytest.raises(ValueError, match="age"):
        parse_time("yesterday")


async def test_commands_that_change_things_refuse_without_yes_off_a_terminal(
    mongo_env: Store,
) -> None:
    await batch(mongo_env)
    code, out = await command(replay_cli, "--batch", "b1", stdin=io.StringIO(""))
    assert code == 2 and "refusing to send without confirmation" in out
    code, out = await command(rollback_cli, "--batch", "b1", stdin=io.StringIO(""))
    assert code == 2 and "refusing to roll back" in out
    assert await mongo_env.current_result("d1", "alpha") is not None  # nothing was touched
    code, out = await command(replay_cli, "--only", "failed", "--yes")
    assert code == 2 and "--batch" in out
    code, out = await command(replay_cli, "--batch", "b1", "--only", "all", "--reason", "X")
    assert code == 2 and "--reason" in out
    code, out = await command(
        replay_cli, "--batch", "b1", "--only", "all", "--handler", "gamma", "--dry-run"
    )
    assert code == 2 and "cannot tell which subscription" in out
    code, out = await command(
        replay_cli, "--batch", "b1", "--only", "missing", "--handler", "alpha", "--dry-run"
    )
    assert code == 0 and "would send 2 message(s)" in out and "alpha-sub" in out


async def test_a_batch_replay_without_a_handler_says_where_its_messages_go(
    mongo_env: Store,
) -> None:
    await batch(mongo_env)
    code, out, err = await command_streams(
        replay_cli, "--batch", "b1", "--only", "failed", "--dry-run", "--json"
    )
    assert code == 0 and err == "", err
    plan = json.loads(out)
    assert [(m["doc_id"], m["route"]) for m in plan["messages"]] == [("d2", "alpha-sub")]
    assert plan["dry_run"] is True and plan["replay"] is None
    assert "only to the subscription(s) it failed in (alpha-sub: 1)" in plan["note"]
    code, out = await command(replay_cli, "--batch", "b1", "--only", "missing", "--dry-run")
    assert code == 0, out
    assert "go to every subscription of topic 'docs' (broadcast)" in out
    assert "would send 4 message(s)" in out


async def test_a_failed_document_goes_to_each_subscription_it_failed_in_and_no_other(
    store: Store,
) -> None:
    await batch(store)  # d2: dead in alpha-sub; now also dead in beta-sub
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=message_id("b1", "d2"), subscription="beta-sub", handler="beta",
            topic="docs", reason="Unreadable", batch_id="b1", doc_id="d2", generation=0,
        )
    )  # fmt: skip
    plan = await plan_batch_replay(store, "b1", only="failed")
    routes = [(m.key, m.envelope.target_subscription, m.envelope.generation) for m in plan.messages]
    assert routes == [("alpha-sub@b1:d2", "alpha-sub", 1), ("beta-sub@b1:d2", "beta-sub", 2)]
    assert [[r.subscription for r in m.settles] for m in plan.messages] == [
        ["alpha-sub"], ["beta-sub"],
    ]  # fmt: skip


def test_a_replay_run_ends_done_partial_or_failed() -> None:
    assert replay_status(sent=3, failed=0, error=None) == "done"
    assert replay_status(sent=0, failed=0, error=None) == "done"  # nothing was planned
    assert replay_status(sent=2, failed=1, error=None) == "partial"
    assert replay_status(sent=2, failed=0, error="connection lost") == "partial"
    assert replay_status(sent=0, failed=3, error=None) == "failed"
    assert replay_status(sent=0, failed=0, error="topic not found") == "failed"


async def test_a_batch_rollback_is_its_publication_and_with_replays_every_run_of_it(
    store: Store,
) -> None:
    published = datetime(2025, 1, 1, tzinfo=UTC)
    await store.record_batch("b1", topic="docs")
    for generation, run in ((0, "b1"), (1, "replay-r")):
        await store.write_result(
            doc_id="d1", handler="alpha", handler_version="1", batch_id="b1",
            message_id=message_id("b1", "d1", generation), output={}, generation=generation,
            run_id=run, issued_at=published + timedelta(hours=generation),
        )  # fmt: skip
    await store.record_replay(
        ReplayRecord(id="replay-r", kind="batch", filters={"batch_id": "b1"}, count=1)
    )
    plan = await rollback.plan_rollback(store, batch_id="b1")
    [change] = plan.changes
    assert [v.version for v in change.versions] == [1]
    assert (change.before and change.before.version, change.after and change.after.version) == (
        2, 2,
    )  # fmt: skip
    assert plan.note is not None and "replay-r" in plan.note and "--with-replays" in plan.note
    plan = await rollback.plan_rollback(store, batch_id="b1", with_replays=True)
    [change] = plan.changes
    assert [v.version for v in change.versions] == [1, 2] and change.after is None
    record = await rollback.carry_out(store, plan)
    assert (record.runs, record.versions, record.documents) == (["b1", "replay-r"], 2, 1)
    assert record.target == "batch b1 with its replays" and record.status == "done"
    assert await store.current_result("d1", "alpha") is None
    with pytest.raises(rollback.RollbackError, match="unknown batch 'b2'"):
        await rollback.plan_rollback(store, batch_id="b2")
    code, out = await command(rollback_cli, "--batch", "b1", "--generation", "1", "--yes")
    assert code == 2 and "--generation is gone" in out and "--replay" in out


async def replayed_batch(store: Store) -> None:
    """b1 published d1 and d2 (run b1); replay-r1 re-ran d1, replay-r2 d2 (named runs), and
    replay-old d1 again before runs were named (found by its message)."""
    published = datetime(2025, 1, 1, tzinfo=UTC)
    await store.record_batch("b1", topic="docs")
    runs = [("d1", 0, "b1"), ("d2", 0, "b1"), ("d1", 1, "replay-r1"), ("d2", 1, "replay-r2"),
            ("d1", 2, None)]  # fmt: skip
    for doc, generation, run in runs:
        await store.write_result(
            doc_id=doc, handler="alpha", handler_version="1", batch_id="b1",
            message_id=message_id("b1", doc, generation), output={}, generation=generation,
            run_id=run, issued_at=published + timedelta(hours=generation),
        )  # fmt: skip
    for replay, doc, generation in (("replay-r1", "d1", 1), ("replay-r2", "d2", 1),
                                    ("replay-old", "d1", 2)):  # fmt: skip
        item = ReplayItem(
            batch_id="b1", doc_id=doc, generation=generation, topic="docs",
            message_id=message_id("b1", doc, generation),
        )  # fmt: skip
        await store.record_replay(
            ReplayRecord(id=replay, kind="batch", filters={"batch_id": "b1"}, items=[item])
        )


async def test_a_rollback_prints_an_undo_that_runs_as_printed_and_a_second_one_records_nothing(
    mongo_env: Store,
) -> None:
    await replayed_batch(mongo_env)
    code, out = await command(rollback_cli, "--replay", "replay-r2", "--yes")
    assert code == 0 and ["result versions rolled back", "1"] in rows(out), out
    # the undo as printed, off a terminal: it names the confirmation it needs there
    hint = re.search(r"^undo with: (docbus rollback --undo rollback-\S+ --yes)$", out, re.M)
    assert hint is not None, out
    argv = shlex.split(hint.group(1))[2:]
    code, out = await command(rollback_cli, *argv, stdin=io.StringIO(""))
    assert code == 0 and ["result versions restored", "1"] in rows(out), out
    assert await mongo_env.database["rollbacks"].count_documents({}) == 2

    code, out = await command(rollback_cli, "--replay", "replay-r2", "--yes")
    assert code == 0 and ["result versions rolled back", "1"] in rows(out), out
    # nothing left to withdraw: said, and no rollback recorded (nor an id to undo offered)
    for json_flag in ((), ("--json",)):
        code, out, err = await command_streams(
            rollback_cli, "--replay", "replay-r2", "--yes", *json_flag
        )
        assert code == 0, err
        if json_flag:
            assert json.loads(out)["rollback"] is None and json.loads(out)["changes"] == []
        else:
            assert out.strip() == (
                "nothing to roll back: replay replay-r2 has no result version left to withdraw"
            )
    assert await mongo_env.database["rollbacks"].count_documents({}) == 3


async def test_a_batch_rollback_names_only_the_replays_that_still_have_versions(
    mongo_env: Store,
) -> None:
    await replayed_batch(mongo_env)
    plan = await rollback.plan_rollback(mongo_env, batch_id="b1")
    assert plan.note is not None and "3 replay run(s) (replay-r1, replay-r2, replay-old)" in (
        plan.note
    )
    code, out = await command(rollback_cli, "--replay", "replay-r2", "--yes")
    assert code == 0, out
    code, out = await command(rollback_cli, "--batch", "b1", "--dry-run")
    assert code == 0, out
    assert "its 2 replay run(s) (replay-r1, replay-old) keep their versions" in out, out
    assert "replay-r2" not in out
    # of one handler: the replays that wrote none of its versions keep none of them
    plan = await rollback.plan_rollback(mongo_env, batch_id="b1", handler="beta")
    assert plan.note is None


def test_a_replay_keeps_versions_by_its_run_or_its_messages() -> None:
    def version(run: str | None, message: str, *, rolled_back: bool = False) -> ResultRecord:
        return ResultRecord(
            id=message, doc_id="d", handler="h", handler_version="1", version=1, current=False,
            rolled_back=rolled_back, batch_id="b", message_id=message, output={},
            written_at=datetime(2025, 1, 1, tzinfo=UTC), run_id=run,
        )  # fmt: skip

    def replay(name: str, *messages: str) -> ReplayRecord:
        items = [
            ReplayItem(batch_id="b", doc_id="d", generation=1, message_id=m, topic="t")
            for m in messages
        ]
        return ReplayRecord(id=name, kind="batch", items=items)

    replays = [replay("r1", "m1"), replay("r2", "m2"), replay("old", "m3"), replay("none", "m4")]
    versions = [
        version("r1", "m1"), version("r2", "m2", rolled_back=True), version(None, "m3"),
        version(None, "m9"),
    ]  # fmt: skip
    assert rollback.replays_with_versions(replays, versions) == ["r1", "old"]
