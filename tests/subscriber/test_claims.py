"""One handler per subscription: two handlers on one subscription would split a batch between
them and leave each one's share pending for ever, so a worker refuses to start that way — in one
process, and beside a live worker elsewhere that runs another handler on the subscription."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from docbus.store import SubscriptionClaim, WorkerHeartbeat
from handlers import Context, Document, handler
from handlers.discovery import HandlerDiscoveryError, check_clashes
from handlers.runtime import discover_handlers
from subscriber.claims import rival_worker
from subscriber.worker import Worker
from tests.subscriber.conftest import Stack
from tests.subscriber.test_worker_cli import HANDLERS, docbus_worker, one_line, stack_env


@handler(topic="docs", subscription="work")
async def first(doc: Document, ctx: Context) -> dict[str, int]:
    return {}


@handler(topic="docs", subscription="work")
async def second(doc: Document, ctx: Context) -> dict[str, int]:
    return {}


@handler(topic="docs", subscription="other")
async def elsewhere(doc: Document, ctx: Context) -> dict[str, int]:
    return {}


def beat(
    *claims: tuple[str, str, str], age: float = 0.0, state: str = "running"
) -> WorkerHeartbeat:
    now = datetime.now(UTC)
    return WorkerHeartbeat(
        id="host-b:4242:x", host="host-b", pid=4242, started_at=now,
        beat_at=now - timedelta(seconds=age), interval=5.0, state=state,  # type: ignore[arg-type]
        claims=[SubscriptionClaim(topic=t, subscription=s, handler=h) for t, s, h in claims],
    )  # fmt: skip


def test_two_handlers_on_one_subscription_are_refused_naming_both() -> None:
    with pytest.raises(HandlerDiscoveryError, match="'first' and 'second' both run on"):
        discover_handlers([first, elsewhere], [second])  # found apart, run together
    assert [h.name for h in discover_handlers([first, elsewhere], [first])] == [
        "first",
        "elsewhere",
    ]  # the same function found twice counts once


def test_a_worker_given_two_handlers_on_one_subscription_does_not_start() -> None:
    together = discover_handlers([first]) + discover_handlers([second])
    with pytest.raises(HandlerDiscoveryError, match="both run on subscription docs/work"):
        Worker(together, client=None, store=None)  # type: ignore[arg-type]
    check_clashes(discover_handlers([first]) + discover_handlers([elsewhere]))


def test_a_live_worker_running_another_handler_on_our_subscription_is_a_rival() -> None:
    ours = discover_handlers([first])
    rival = rival_worker([beat(("docs", "work", "second"))], ours)
    assert rival is not None and "'second'" in rival and "host-b:4242" in rival
    # the same handler elsewhere is scaling out; other subscriptions are none of our business
    assert rival_worker([beat(("docs", "work", "first"))], ours) is None
    assert rival_worker([beat(("docs", "other", "second"))], ours) is None
    # a worker that stopped, or fell silent long ago (dead), claims nothing
    assert rival_worker([beat(("docs", "work", "second"), state="stopped")], ours) is None
    assert rival_worker([beat(("docs", "work", "second"), age=60)], ours) is None


SECOND_MODULE = HANDLERS.replace("async def work(", "async def classify_ticket(")


async def test_the_cli_refuses_two_modules_whose_handlers_share_a_subscription(
    stack: Stack, tmp_path: Path
) -> None:
    (tmp_path / "my_handlers.py").write_text(HANDLERS)
    (tmp_path / "tickets.py").write_text(SECOND_MODULE)
    done = await docbus_worker(
        tmp_path, stack_env(stack), "--handlers", "my_handlers", "--handlers", "tickets",
        "--until-idle", "1",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "'work' and 'classify_ticket'" in line and "docs/work" in line


async def test_the_cli_refuses_to_start_beside_a_live_worker_of_another_handler(
    stack: Stack, tmp_path: Path
) -> None:
    (tmp_path / "tickets.py").write_text(SECOND_MODULE)
    live = beat(("docs", "work", "work")).model_copy(
        update={"id": f"{socket.gethostname()}:{os.getpid()}:live"}
    )
    await stack.store.record_heartbeat(live)
    try:
        done = await docbus_worker(
            tmp_path, stack_env(stack), "--handlers", "tickets", "--until-idle", "1"
        )
        assert done.returncode == 2, done.stderr
        assert "already run by handler 'work'" in one_line(done.stderr)
        await stack.store.record_heartbeat(live.model_copy(update={"state": "stopped"}))
        done = await docbus_worker(
            tmp_path, stack_env(stack), "--handlers", "tickets", "--until-idle", "0.5"
        )
        assert done.returncode == 0, done.stderr
    finally:
        await stack.store.database["workers"].delete_many({})
