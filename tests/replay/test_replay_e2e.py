"""Replays end to end: publish → worker → dead letters → fix → replay → worker, on the real SDK."""

from __future__ import annotations

import json
import re

from docbus.cli import replay as replay_cli
from docbus.cli import results as results_cli
from docbus.cli import rollback
from docbus.envelope import message_id
from docbus.store import DeadLetterFilter
from tests.replay.conftest import Stack
from tests.replay.helpers import (
    command,
    command_streams,
    fail,
    fix,
    invocations,
    pending_on_broker,
    publish,
    rows,
    run_worker,
)
from tests.replay.replay_handlers import make_handlers


async def test_a_filtered_replay_reruns_exactly_the_selected_documents_in_the_failed_subscription(
    stack: Stack,
) -> None:
    await fail(stack, "alpha", "d2", "BadDocument")
    await fail(stack, "alpha", "d3", "Unreadable")
    await fail(stack, "beta", "d4", "BadDocument")
    await publish(stack, ["d1", "d2", "d3", "d4"], "b1")
    await run_worker(stack)
    dead = await stack.store.dead_letters(DeadLetterFilter(batch_id="b1"))
    assert sorted(r.id for r in dead) == ["alpha@b1:d2:0", "alpha@b1:d3:0", "beta@b1:d4:0"]
    await fix(stack)

    code, out = await command(replay_cli, "--handler", "alpha", "--reason", "BadDocument", "--yes")
    assert code == 0, out
    assert "replayed: 1 message(s)" in out
    await run_worker(stack)

    # Only d2 ran again, only in alpha, as generation 1 addressed to alpha.
    assert await invocations(stack, generation=1) == [("alpha", "d2", 1)]
    assert await invocations(stack, handler="beta") == [
        ("beta", doc, 0) for doc in ("d1", "d2", "d3", "d4")
    ]
    again = await stack.store.database["invocations"].find_one({"generation": 1})
    assert again is not None
    assert (again["target"], again["replay_of"]) == ("alpha", message_id("b1", "d2", 0))
    current = await stack.store.current_result("d2", "alpha")
    assert current is not None and (current.generation, current.version) == (1, 1)
    replayed = {
        r.id: r.replayed_at for r in await stack.store.dead_letters(DeadLetterFilter(batch_id="b1"))
    }
    assert replayed["alpha@b1:d2:0"] is not None
    assert replayed["alpha@b1:d3:0"] is None and replayed["beta@b1:d4:0"] is None
    (audit,) = [r async for r in stack.store.database["replays"].find()]
    assert audit["count"] == 1 and audit["filters"]["reason"] == "BadDocument"
    assert [(i["doc_id"], i["generation"]) for i in audit["items"]] == [("d2", 1)]


async def test_a_batch_replay_of_failed_documents_under_a_new_handler_version_then_a_rollback(
    stack: Stack,
) -> None:
    await fail(stack, "alpha", "d2", "BadDocument")
    await publish(stack, ["d1", "d2", "d3"], "b2")
    await run_worker(stack, make_handlers("1"))
    await fix(stack)

    handlers_module = "tests.replay.replay_handlers"
    code, out = await command(
        replay_cli, "--batch", "b2", "--only", "failed", "--handler", "alpha",
        "--handlers", handlers_module, "--yes",
    )  # fmt: skip
    assert code == 0, out
    assert ["docs", "alpha", "1", "1"] in rows(out)  # topic, route, sent, generations
    await run_worker(stack, make_handlers("2"))
    fixed = await stack.store.current_result("d2", "alpha")
    assert fixed is not None and (fixed.handler_version, fixed.generation) == ("2", 1)

    # Everything again under version 2: new result versions, and the step runs afresh
    # (checkpoints are per handler version) except where version 2 already ran it.
    code, out = await command(
        replay_cli, "--batch", "b2", "--only", "all", "--handler", "alpha",
        "--subscription", "alpha", "--yes",
    )  # fmt: skip
    assert code == 0, out
    await run_worker(stack, make_handlers("2"))
    assert await invocations(stack, handler="beta") == [("beta", d, 0) for d in ("d1", "d2", "d3")]
    steps = stack.store.database["step_runs"].find({"handler": "alpha"})
    runs = sorted([(s["doc_id"], s["handler_version"]) async for s in steps])
    assert runs == [("d1", "1"), ("d1", "2"), ("d2", "2"), ("d3", "1"), ("d3", "2")]

    code, out = await command(results_cli, "history", "d1", "--handler", "alpha")
    assert code == 0, out
    history = [(r[1], r[2], r[3], r[4], r[6]) for r in rows(out)]  # version, generation,
    assert history == [("1", "0", "1", "b2", ""), ("2", "1", "2", "b2", "current")]  # ...state
    assert await pending_on_broker(stack) == {"alpha": 0, "beta": 0}


def replay_id_in(out: str) -> str:
    found = re.search(r"recorded as (replay-\S+)", out)
    assert found is not None, out
    return found.group(1)


async def currents(stack: Stack, *docs: str) -> dict[str, tuple[int, str | None] | None]:
    """Each document's current alpha version: (version, run), or None."""
    found: dict[str, tuple[int, str | None] | None] = {}
    for doc in docs:
        record = await stack.store.current_result(doc, "alpha")
        found[doc] = None if record is None else (record.version, record.run_id)
    return found


async def test_a_rollback_targets_exactly_one_replay_previews_it_and_can_be_undone(
    stack: Stack,
) -> None:
    # The case: a dead-letter replay, then a batch replay; rolling back the second
    # must leave the first one's versions current (generations, counted per document, could
    # not tell the two runs apart, and a rollback withdrew both).
    await fail(stack, "alpha", "d2", "BadDocument")
    await publish(stack, ["d1", "d2", "d3"], "b2")
    await run_worker(stack)
    await fix(stack)
    code, out = await command(replay_cli, "--handler", "alpha", "--reason", "BadDocument", "--yes")
    assert code == 0, out
    first = replay_id_in(out)
    await run_worker(stack)
    code, out, err = await command_streams(
        replay_cli, "--batch", "b2", "--only", "all", "--handler", "alpha",
        "--subscription", "alpha", "--yes", "--json",
    )  # fmt: skip
    assert code == 0, err
    sent = json.loads(out)  # one JSON document, nothing else on stdout
    second = sent["replay"]["id"]
    assert sent["replay"]["status"] == "done" and sent["replay"]["count"] == 3
    assert [m["doc_id"] for m in sent["messages"]] == ["d1", "d2", "d3"]
    await run_worker(stack)
    before = {"d1": (2, second), "d2": (2, second), "d3": (2, second)}
    assert await currents(stack, "d1", "d2", "d3") == before

    code, out = await command(rollback, "--replay", second, "--dry-run")
    assert code == 0, out
    assert rows(out) == [
        ["d1", "alpha", "v2", f"v2 ({second})", "v1 (b2)"],
        ["d2", "alpha", "v2", f"v2 ({second})", f"v1 ({first})"],
        ["d3", "alpha", "v2", f"v2 ({second})", "v1 (b2)"],
    ]
    assert "nothing was changed" in out
    assert await currents(stack, "d1", "d2", "d3") == before

    code, out = await command(rollback, "--replay", second, "--yes")
    assert code == 0, out
    assert ["result versions rolled back", "3"] in rows(out)
    assert ["documents touched", "3"] in rows(out)
    undo_hint = re.search(r"docbus rollback --undo (rollback-\S+) --yes", out)
    assert undo_hint is not None, out
    after = {"d1": (1, "b2"), "d2": (1, first), "d3": (1, "b2")}
    assert await currents(stack, "d1", "d2", "d3") == after  # none left without a current one
    code, out = await command(rollback, "--replay", second, "--yes")
    assert code == 0 and "nothing to roll back" in out and "recorded as" not in out, out

    # The batch's own run is its publication: its replays keep their versions (and are named);
    # the second replay, rolled back, keeps none.
    code, out, err = await command_streams(
        rollback, "--batch", "b2", "--handler", "alpha", "--dry-run", "--json"
    )
    assert code == 0, err
    preview = json.loads(out)
    assert [(c["doc_id"], c["versions"]) for c in preview["changes"]] == [("d1", [1]), ("d3", [1])]
    assert preview["runs"] == ["b2"] and first in preview["note"]
    assert second not in preview["note"]
    assert [c["current_after"] for c in preview["changes"]] == [None, None]

    code, out = await command(rollback, "--undo", undo_hint.group(1), "--yes")
    assert code == 0, out
    assert ["result versions restored", "3"] in rows(out)
    assert await currents(stack, "d1", "d2", "d3") == before
    code, out = await command(rollback, "--undo", undo_hint.group(1), "--yes")
    assert code == 0 and "undone already" in out and "nothing to restore" in out, out
    records = [r async for r in stack.store.database["rollbacks"].find().sort("at", 1)]
    assert [(r["kind"], r["versions"], r["status"]) for r in records] == [
        ("rollback", 3, "done"), ("undo", 3, "done"),
    ]  # fmt: skip
    assert records[0]["undone_by"] == records[1]["_id"]

    for argv in (["--replay", "replay-nope"], ["--batch", "nope"], ["--undo", "rollback-nope"]):
        code, out, err = await command_streams(rollback, *argv, "--yes")
        assert code == 1 and out == "" and err.count("\n") == 1 and "unknown" in err, err
    assert await stack.store.database["rollbacks"].count_documents({}) == 2
    assert await pending_on_broker(stack) == {"alpha": 0, "beta": 0}
