"""Replays end to end: publish → worker → dead letters → fix → replay → worker, on the real SDK."""

from __future__ import annotations

from docbus import results_cli, rollback
from docbus.envelope import message_id
from publisher import replay_cli
from tests.replay.conftest import Stack
from tests.replay.helpers import (
    command,
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
    dead = await stack.store.dead_letters(batch_id="b1")
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
    replayed = {r.id: r.replayed_at for r in await stack.store.dead_letters(batch_id="b1")}
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

    code, out = await command(rollback, "--batch", "b2", "--generation", "1", "--yes")
    assert code == 0, out
    assert ["result versions rolled back", "4"] in rows(out)  # d1, d3: gen 1; d2: gen 1 and 2
    assert ["documents touched", "3"] in rows(out)
    for doc in ("d1", "d3"):
        restored = await stack.store.current_result(doc, "alpha")
        assert restored is not None and (restored.version, restored.handler_version) == (1, "1")
    assert await stack.store.current_result("d2", "alpha") is None
    code, out = await command(rollback, "--batch", "b2", "--generation", "1", "--yes")
    assert code == 0 and ["result versions rolled back", "0"] in rows(out)
    assert await stack.store.database["rollbacks"].count_documents({}) == 2
    assert await pending_on_broker(stack) == {"alpha": 0, "beta": 0}
