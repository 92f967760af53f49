"""``docbus status``: per-batch and per-handler progress read from records in a real store."""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from rich.console import Console

from docbus import cli
from docbus.cli import status as status_cli
from docbus.cli.status import render_status, watch
from docbus.envelope import Envelope, message_id
from docbus.local.mongo import LocalMongo
from docbus.ops import NotFound
from docbus.ops.backlog import BacklogProbe
from docbus.ops.status import (
    BatchStatus,
    collect_status,
    retrying_counts,
    throughput,
    unfinished_counts,
)
from docbus.records import BatchCounts, BatchRecord, DeadLetterRecord, HandlerCounts
from docbus.settings import ServiceBusSettings, Settings
from docbus.store import Store
from docbus.topology import load_topology

DOCS = ["d1", "d2", "d3", "d4", "d5"]


async def publish(store: Store, batch_id: str, docs: list[str] = DOCS) -> None:
    await store.record_batch(batch_id, topic="documents", source=["news.jsonl"])
    await store.record_documents(
        Envelope(doc_id=doc, batch_id=batch_id, topic="documents", content=f"text of {doc}")
        for doc in docs
    )
    await store.update_batch(batch_id, status="published", counts={"documents": len(docs)})


async def result(store: Store, batch_id: str, doc: str, handler: str) -> None:
    await store.write_result(
        doc_id=doc,
        handler=handler,
        handler_version="1",
        batch_id=batch_id,
        message_id=message_id(batch_id, doc),
        output={"ok": True},
    )


async def dead_letter(store: Store, batch_id: str, doc: str, handler: str) -> None:
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=message_id(batch_id, doc),
            subscription=handler,
            reason="SchemaValidationFailed",
            handler=handler,
            batch_id=batch_id,
            doc_id=doc,
        )
    )


async def llm_call(store: Store, batch_id: str, doc: str, handler: str, attempt: int) -> None:
    await store.record_llm_call(
        {"batch_id": batch_id, "doc_id": doc, "handler": handler, "attempt": attempt}
    )


def rows(text: str) -> dict[str, list[str]]:
    """Table rows by their first cell."""
    found = {}
    for line in text.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            found[cells[0]] = cells[1:]
    return found


def rendered(statuses: list[BatchStatus], width: int = 200) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render_status(statuses))
    return console.export_text()


@pytest.fixture
async def mixed_batch(store: Store) -> str:
    """Two handlers part way through: done, dead-lettered, retrying and untouched documents."""
    batch = "b-mixed"
    await publish(store, batch)
    for doc in ("d1", "d2", "d3"):
        await result(store, batch, doc, "entities")
    await dead_letter(store, batch, "d4", "entities")
    await llm_call(store, batch, "d5", "entities", attempt=1)
    await llm_call(store, batch, "d5", "entities", attempt=2)  # failed once, trying again
    for doc in ("d1", "d2", "d4"):
        await result(store, batch, doc, "supplier_risk")
    await llm_call(store, batch, "d3", "supplier_risk", attempt=3)
    await llm_call(store, batch, "d1", "supplier_risk", attempt=2)  # retried, then done
    await store.add_batch_usage(batch, usd=0.0100, prompt_tokens=800, completion_tokens=200)
    await store.add_batch_usage(
        batch, usd=0.0023, prompt_tokens=200, completion_tokens=34, category="retry"
    )
    await store.set_batch_budget(batch, 0.01)
    await store.set_batch_over_budget(batch, True)  # spent 0.0123 of 0.01
    return batch


async def test_counts_per_batch_and_handler_add_up_with_retrying_from_llm_attempts(
    store: Store, mixed_batch: str
) -> None:
    (status,) = await collect_status(store, [mixed_batch])
    assert status.counts.published == 5
    assert (status.counts.done, status.counts.dead_lettered) == (2, 1)
    # d5 retries in entities and d3 in supplier_risk; d1's retry already succeeded.
    assert status.retrying == 2
    assert status.handler_retrying == {"entities": 1, "supplier_risk": 1}
    assert status.pending() == 0
    assert status.record.budget_usd == 0.01
    assert not status.complete

    table = rows(rendered([status]))
    # published, done, retrying, parked, dead-lettered, pending, progress, docs/s
    assert table["all handlers"][:6] == ["5", "2", "2", "0", "1", "0"]
    assert table["entities"][:6] == ["5", "3", "1", "0", "1", "0"]
    assert table["supplier_risk"][:6] == ["5", "3", "1", "0", "0", "1"]
    assert table["entities"][6].endswith("80%")  # 3 done + 1 dead of 5
    assert table["supplier_risk"][6].endswith("60%")


async def test_at_80_columns_no_header_or_handler_name_is_folded(
    store: Store, mixed_batch: str
) -> None:
    # before, headers came out as "publis/hed", "dea/d-l/ett/ere/d" and "supplier_ris/k"
    text = rendered(await collect_status(store, [mixed_batch]), width=80)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("handler"))
    assert header.split() == [
        "handler", "published", "done", "retrying", "parked", "dead", "pending", "done", "%",
        "docs/s",
    ]  # fmt: skip
    assert max(len(line) for line in lines) <= 80
    cells = {line[:14].strip(): line[14:].split() for line in lines if line[:1].isalpha()}
    assert cells["supplier_risk"][:7] == ["5", "3", "1", "0", "0", "1", "60%"]
    assert cells["all handlers"][:6] == ["5", "2", "2", "0", "1", "0"]


async def test_the_table_names_the_batch_topic_cost_budget_and_over_budget_flag(
    store: Store, mixed_batch: str
) -> None:
    text = rendered(await collect_status(store, [mixed_batch]))
    assert "batch b-mixed → documents" in text
    assert "cost $0.0123 (2 LLM calls, 1234 tokens; retries $0.0023)" in text
    assert "budget $0.01" in text
    assert "OVER BUDGET" in text
    assert "published" in text and "retrying" in text and "dead-lettered" in text


async def test_a_handler_known_only_from_its_llm_calls_keeps_documents_pending(
    store: Store,
) -> None:
    await publish(store, "b-early", ["d1", "d2"])
    await result(store, "b-early", "d1", "entities")
    await result(store, "b-early", "d2", "entities")
    await llm_call(store, "b-early", "d1", "supplier_risk", attempt=1)
    (status,) = await collect_status(store, ["b-early"])
    assert set(status.counts.handlers) == {"entities", "supplier_risk"}
    assert (status.counts.done, status.pending()) == (0, 2)
    assert not status.complete


async def test_recent_batches_are_listed_newest_first_and_unknown_ids_refused(
    store: Store,
) -> None:
    await publish(store, "b-old", ["d1"])
    await publish(store, "b-new", ["d1"])
    statuses = await collect_status(store)
    assert [s.batch_id for s in statuses] == ["b-new", "b-old"]
    assert [s.batch_id for s in await collect_status(store, limit=1)] == ["b-new"]
    with pytest.raises(NotFound, match=r"no batch .nope. in the store"):
        await collect_status(store, ["nope"])


async def test_a_complete_batch_measures_throughput_up_to_its_last_result(
    store: Store,
) -> None:
    await publish(store, "b-done", ["d1", "d2"])
    await result(store, "b-done", "d1", "entities")
    await dead_letter(store, "b-done", "d2", "entities")
    (status,) = await collect_status(store, ["b-done"])
    assert status.complete
    assert status.last_activity is not None
    assert status.record.created_at <= status.last_activity <= status.observed_at
    assert "complete" in rendered([status])


async def test_a_batch_is_complete_once_publishing_ended_and_nothing_sent_is_pending(
    store: Store,
) -> None:
    await store.record_batch("b-open", topic="documents")  # still publishing, nothing yet
    await publish(store, "b-unsent", ["d1", "d2"])
    await store.update_batch("b-unsent", status="failed", counts={"sent": 1, "failed": 1})
    await result(store, "b-unsent", "d1", "entities")
    opened, unsent = await collect_status(store, ["b-open", "b-unsent"])
    assert not opened.complete
    assert unsent.complete  # d2 was never sent: nothing more will arrive


def make_status(
    done: int, dead: int, *, created: datetime, observed: datetime, status: str = "published"
) -> BatchStatus:
    published = 10
    pending = published - done - dead
    return BatchStatus(
        record=BatchRecord(id="b", topic="documents", status=status, created_at=created),
        counts=BatchCounts(
            batch_id="b",
            published=published,
            done=done,
            dead_lettered=dead,
            pending=pending,
            handlers={"h": HandlerCounts(done=done, dead_lettered=dead, pending=pending)},
        ),
        observed_at=observed,
    )


def test_throughput_since_creation_and_over_the_last_interval() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    first = make_status(4, 1, created=t0, observed=t0 + timedelta(seconds=10))
    assert throughput(first) == {None: 0.5, "h": 0.5}
    second = make_status(8, 2, created=t0, observed=t0 + timedelta(seconds=12))
    assert throughput(second, first) == {None: 2.5, "h": 2.5}


def test_retrying_follows_the_batch_count_rules() -> None:
    attempted = {"a": {"x", "y", "z"}, "b": {"w"}}
    done = {"a": {"x"}, "b": {"y", "z"}}
    dead = {"b": {"w"}, "a": {"y"}}
    overall, per_handler = retrying_counts(attempted, done, dead, ["a", "b"])
    # a: x done, y dead → z retrying; b: w dead → nothing. Overall: z (done in b only).
    assert per_handler == {"a": 1}
    assert overall == 1
    # once z is done everywhere it no longer retries anywhere
    done["a"].add("z")
    assert retrying_counts(attempted, done, dead, ["a", "b"]) == (0, {})


async def test_watch_returns_once_every_batch_shown_is_complete(store: Store) -> None:
    await publish(store, "b-watch", ["d1", "d2"])
    await result(store, "b-watch", "d1", "entities")
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    watching = asyncio.create_task(watch(store, console, ["b-watch"], interval=0.02))
    await result(store, "b-watch", "d2", "entities")
    final = await asyncio.wait_for(watching, timeout=20)
    assert [s.complete for s in final] == [True]
    assert rows(out.getvalue())["entities"][:6] == ["2", "2", "0", "0", "0", "0"]


def status_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    status_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def mongo_env(monkeypatch: pytest.MonkeyPatch, local_mongo: LocalMongo, store: Store) -> None:
    for name in list(os.environ):
        if name.startswith("DOCBUS_") or name == "MONGODB_URI":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = status_cli.run(status_args(*argv), console=Console(file=out, width=200))
    return code, out.getvalue()


@pytest.mark.usefixtures("mongo_env")
async def test_the_command_reads_the_configured_store(
    store: Store, mixed_batch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = await asyncio.to_thread(run_cli, "--batch", mixed_batch)
    assert code == 1  # a dead letter, and over budget: attention
    assert rows(text)["all handlers"][:6] == ["5", "2", "2", "0", "1", "0"]
    await publish(store, "b-clean", ["d1"])
    code, text = await asyncio.to_thread(run_cli, "--batch", "b-clean", "--no-broker")
    assert code == 0
    assert "published · created" in text
    capsys.readouterr()
    code, text = await asyncio.to_thread(run_cli, "--batch", "missing")
    assert code == 1 and text == ""
    assert capsys.readouterr().err == "docbus status: error: no batch 'missing' in the store\n"


# -- parked documents ---------------------------------------------------------------------------


# Each parked message its own sequence number, as Service Bus gives them (a record is keyed on
# it: two equal ones would be one record).
_sequence_numbers = itertools.count(1)


async def parked(store: Store, batch_id: str, doc: str, subscription: str, reason: str) -> None:
    from subscriber.parking import ParkedMessage, park

    await park(
        store,
        ParkedMessage(
            topic="documents", subscription=subscription, sequence_number=next(_sequence_numbers),
            reason=reason, batch_id=batch_id, doc_id=doc, message_id=message_id(batch_id, doc),
            deferred=True,
        ),
    )  # fmt: skip


async def test_parked_documents_are_counted_apart_from_pending_and_retrying(
    store: Store,
) -> None:
    await publish(store, "b-parked", ["d1", "d2", "d3", "d4"])
    await result(store, "b-parked", "d1", "entities")
    await llm_call(store, "b-parked", "d2", "entities", attempt=2)  # retried, then parked
    await parked(store, "b-parked", "d2", "entities", "SystemicFailure")
    await parked(store, "b-parked", "d3", "entities", "OverBudget")
    await parked(store, "b-parked", "d1", "entities", "SystemicFailure")  # done since: not parked
    (status,) = await collect_status(store, ["b-parked"])
    assert (status.parked, status.handler_parked) == (2, {"entities": 2})
    assert (status.retrying, status.handler_retrying) == (0, {})
    assert status.pending() == 1 and status.pending("entities") == 1  # d4
    assert status.parked_reasons == {"SystemicFailure": 2, "OverBudget": 1}
    assert not status.complete
    text = rendered([status])
    # published, done, retrying, parked, dead-lettered, pending
    assert rows(text)["entities"][:6] == ["4", "1", "0", "2", "0", "1"]
    assert "parked: OverBudget 1, SystemicFailure 2" in text


async def test_a_parked_message_of_a_subscription_is_counted_under_its_handler(
    store: Store,
) -> None:
    await publish(store, "b-sub", ["d1", "d2"])
    await dead_letter(store, "b-sub", "d1", "supplier_risk")
    await store.database["dead_letters"].update_many(
        {"batch_id": "b-sub"}, {"$set": {"subscription": "supplier-risk"}}
    )
    await parked(store, "b-sub", "d2", "supplier-risk", "SystemicFailure")
    (status,) = await collect_status(store, ["b-sub"])
    assert status.handler_parked == {"supplier_risk": 1}
    assert status.pending("supplier_risk") == 0


# -- what is left on the broker -----------------------------------------------------------------


async def settled_batch(store: Store, batch_id: str) -> None:
    await publish(store, batch_id, ["d1"])
    await result(store, batch_id, "d1", "entities")


async def send(connection_string: str, batch_id: str, doc: str) -> None:
    from azure.servicebus import ServiceBusMessage
    from azure.servicebus.aio import ServiceBusClient

    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_topic_sender("documents") as sender:
            await sender.send_messages(
                ServiceBusMessage(
                    b"{}", message_id=f"{batch_id}:{doc}",
                    application_properties={"batch_id": batch_id, "doc_id": doc,
                                            "docbus-route": "*"},
                )
            )  # fmt: skip


async def drain(connection_string: str, subscription: str) -> int:
    from azure.servicebus.aio import ServiceBusClient

    async with ServiceBusClient.from_connection_string(connection_string) as client:
        async with client.get_subscription_receiver("documents", subscription) as receiver:
            messages = await receiver.receive_messages(max_message_count=10, max_wait_time=1)
            for message in messages:
                await receiver.complete_message(message)
            return len(messages)


def broker_settings(connection_string: str) -> Settings:
    return Settings(servicebus=ServiceBusSettings(connection_string=SecretStr(connection_string)))


async def test_a_batch_settled_in_mongo_is_complete_only_once_the_broker_holds_none_of_it(
    store: Store, servicebus_connection_string: str
) -> None:
    await settled_batch(store, "b-left")
    await send(servicebus_connection_string, "b-left", "d1")  # e.g. a replay still in flight
    await send(servicebus_connection_string, "b-other", "d9")  # another batch: not counted
    settings = broker_settings(servicebus_connection_string)
    async with BacklogProbe(settings, load_topology()) as probe:
        (status,) = await collect_status(store, ["b-left"], probe=probe)
        assert status.settled and not status.complete
        assert status.backlog is not None
        assert status.backlog.left == {"entities": 1, "supplier-risk": 1}
        assert status.state == "finishing"
        text = rendered([status])
        assert "2 message(s) of the batch still on the broker (entities 1, supplier-risk 1)" in text
        assert "complete" not in text.split("batch b-left")[1].split("·")[0]

        assert await drain(servicebus_connection_string, "entities") == 2
        assert await drain(servicebus_connection_string, "supplier-risk") == 2
        (status,) = await collect_status(store, ["b-left"], probe=probe)
    assert status.complete and status.broker_checked
    assert status.state == "complete"


async def test_without_a_broker_to_ask_a_settled_batch_is_complete_but_not_checked(
    store: Store,
) -> None:
    await settled_batch(store, "b-nobroker")
    async with BacklogProbe(Settings(), load_topology()) as probe:
        (status,) = await collect_status(store, ["b-nobroker"], probe=probe)
    assert status.complete and not status.broker_checked
    assert status.state == "complete (broker not checked)"
    text = rendered([status])
    assert "complete (broker not checked)" in text
    assert "broker: no Service Bus configured" in text


async def test_an_unreachable_broker_is_not_waited_for_beyond_the_timeout(store: Store) -> None:
    await settled_batch(store, "b-down")
    await settled_batch(store, "b-down-2")
    down = broker_settings(
        "Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey=s;"
        "UseDevelopmentEmulator=true"
    )
    async with BacklogProbe(down, load_topology(), timeout=0.5) as probe:
        started = asyncio.get_running_loop().time()
        statuses = await collect_status(store, ["b-down", "b-down-2"], probe=probe)
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 3  # one timeout, not one per batch and subscription
    assert [s.state for s in statuses] == ["complete (broker not checked)"] * 2


async def test_watch_waits_for_the_broker_too(
    store: Store, servicebus_connection_string: str
) -> None:
    await settled_batch(store, "b-watch-broker")
    await send(servicebus_connection_string, "b-watch-broker", "d1")
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    settings = broker_settings(servicebus_connection_string)
    async with BacklogProbe(settings, load_topology()) as probe:
        watching = asyncio.create_task(
            watch(store, console, ["b-watch-broker"], interval=0.05, probe=probe)
        )
        await asyncio.sleep(0.3)
        assert not watching.done()  # the message is still there
        await drain(servicebus_connection_string, "entities")
        await drain(servicebus_connection_string, "supplier-risk")
        final = await asyncio.wait_for(watching, timeout=20)
    assert [s.state for s in final] == ["complete"]


# -- JSON ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("mongo_env")
async def test_json_is_one_document_with_the_table_s_figures(
    store: Store, mixed_batch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await parked(store, mixed_batch, "d5", "supplier_risk", "SystemicFailure")
    await settled_batch(store, "b-json-done")
    code = await asyncio.to_thread(
        cli.main, ["status", "--batch", mixed_batch, "--batch", "b-json-done", "--json"]
    )
    captured = capsys.readouterr()
    assert code == 1, captured.err  # the mixed batch needs attention
    mixed, done = json.loads(captured.out)["batches"]
    assert mixed["attention"] == ["1 dead-lettered", "1 parked", "over budget"]
    assert done["attention"] == []
    assert mixed["batch_id"] == mixed_batch and mixed["state"] == "published"
    assert mixed["documents"] == {
        "published": 5, "done": 2, "retrying": 1, "parked": 1, "dead_lettered": 1,
        "rolled_back": 0, "pending": 0
    }  # fmt: skip
    assert mixed["handlers"]["supplier_risk"] == {
        "done": 3, "retrying": 1, "parked": 1, "dead_lettered": 0, "rolled_back": 0, "pending": 0
    }  # fmt: skip
    assert mixed["parked_reasons"] == {"SystemicFailure": 1}
    assert mixed["over_budget"] is True and mixed["budget_usd"] == 0.01
    assert mixed["broker"] is None  # not settled: the broker was not asked
    assert done["complete"] is True and done["state"] == "complete (broker not checked)"
    assert done["broker"] == {
        "checked": False, "left": {}, "unchecked": {"*": "no Service Bus configured"}
    }  # fmt: skip


@pytest.mark.usefixtures("mongo_env")
async def test_watch_with_json_prints_once_when_complete(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish(store, "b-wj", ["d1", "d2"])
    await result(store, "b-wj", "d1", "entities")
    argv = ["status", "--batch", "b-wj", "--watch", "--json", "--interval", "0.05"]
    watching = asyncio.create_task(asyncio.to_thread(cli.main, argv))
    await asyncio.sleep(0.3)
    assert not watching.done()
    await result(store, "b-wj", "d2", "entities")
    assert await asyncio.wait_for(watching, timeout=20) == 0
    (batch,) = json.loads(capsys.readouterr().out)["batches"]
    assert batch["complete"] and batch["documents"]["done"] == 2


def test_a_parked_document_is_not_also_retrying() -> None:
    attempted = {"a": {"x", "y"}, "b": {"z"}}
    parked = {"a": {"x"}, "b": {"y"}}
    (retrying, retrying_per), (parked_n, parked_per) = unfinished_counts(
        attempted, parked, done={}, dead={}, handlers=["a", "b"]
    )
    # a: x parked, y retrying; b: y parked, z retrying. Overall y is parked (in b), not retrying.
    assert (parked_n, parked_per) == (2, {"a": 1, "b": 1})
    assert (retrying, retrying_per) == (1, {"a": 1, "b": 1})


async def test_without_a_topology_the_broker_is_not_asked(
    store: Store, servicebus_connection_string: str
) -> None:
    await settled_batch(store, "b-notopology")
    settings = broker_settings(servicebus_connection_string)
    async with BacklogProbe(settings, None) as probe:
        (status,) = await collect_status(store, ["b-notopology"], probe=probe)
    assert status.state == "complete (broker not checked)"
    assert status.backlog is not None and status.backlog.unchecked == {"*": "no topology file"}
