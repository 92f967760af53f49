"""``docbus publish`` refuses what the broker would drop silently, resumes batches, fails fast.

Real SDK against emulators built from topologies that disagree with the one ``docbus publish``
reads (``infra/topology.toml`` unless ``--topology``), real SecantusDB; the command runs as from
a shell, configured through ``DOCBUS_*`` variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from docbus.cli import build_parser
from docbus.cli import publish as cli
from docbus.envelope import Envelope
from docbus.local.emulator.config import parse_config
from docbus.local.emulator.server import EmulatorThread
from docbus.store import Store
from docbus.topology import SubscriptionSpec, TopicSpec, Topology
from tests.docbus.cli.test_publish import (
    TOPIC,
    broker_env,
    clean_env,
    good,
    mongo_env,
    publish,
    receive_all,
    waiting,
    write_jsonl,
)

__all__ = ["broker_env", "clean_env", "mongo_env"]  # fixtures shared with test_publish


@pytest.fixture
def deploy(monkeypatch: pytest.MonkeyPatch, mongo_env: None) -> Iterator[Callable[..., str]]:
    """Start an emulator with just the given topics; point the environment at it."""
    with contextlib.ExitStack() as stack:

        def start(*topics: TopicSpec) -> str:
            config = parse_config(Topology(topics).emulator_config())
            emulator = stack.enter_context(EmulatorThread(config))
            monkeypatch.setenv("DOCBUS_SERVICEBUS__CONNECTION_STRING", emulator.connection_string)
            monkeypatch.setenv("DOCBUS_PUBLISHER__SEND_CONCURRENCY", "1")
            return emulator.connection_string

        yield start


# -- a topic whose messages the broker would drop -----------------------------------------------


async def test_a_subscription_missing_on_the_broker_is_refused_and_nothing_is_recorded(
    tmp_path: Path,
    deploy: Callable[..., str],
    store: Store,
) -> None:
    # deployed: only "entities"; the topology (infra/topology.toml) also has "supplier-risk"
    connection = deploy(TopicSpec(TOPIC, (SubscriptionSpec("entities"),)))
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), good("n2")])
    code, out = await publish(str(source), "--topic", TOPIC, "--id-field", "id", "--batch-id", "b")
    assert code == 1
    assert "'supplier-risk' does not exist on the broker" in out and "deploy" in out
    assert "'entities'" not in out
    assert await store.list_batches() == []
    assert await receive_all(connection, "entities", 1) == []


async def test_a_topic_with_no_subscription_on_the_broker_is_refused(
    tmp_path: Path,
    deploy: Callable[..., str],
    store: Store,
) -> None:
    deploy(TopicSpec(TOPIC))
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    started = time.monotonic()
    code, out = await publish(str(source), "--topic", TOPIC, "--id-field", "id")
    assert code == 1
    assert "'entities', 'supplier-risk' does not exist on the broker" in out
    assert "nothing was sent" in out
    assert time.monotonic() - started < 5
    assert await store.list_batches() == []


async def test_a_topic_the_topology_does_not_know_is_refused(
    tmp_path: Path,
    deploy: Callable[..., str],
    store: Store,
) -> None:
    deploy(TopicSpec("other", (SubscriptionSpec("s"),)))
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    code, out = await publish(str(source), "--topic", "other", "--id-field", "id")
    assert code == 1
    assert "unknown topic 'other'" in out and "topology" in out
    assert await store.list_batches() == []


async def test_a_topology_topic_without_subscriptions_is_refused(
    tmp_path: Path,
    deploy: Callable[..., str],
    store: Store,
) -> None:
    deploy(TopicSpec(TOPIC, (SubscriptionSpec("entities"),)))
    topology = tmp_path / "topology.toml"
    topology.write_text(f'[[topics]]\nname = "{TOPIC}"\n', encoding="utf-8")
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    code, out = await publish(str(source), "--topic", TOPIC, "--topology", str(topology))
    assert code == 1
    assert f"topic '{TOPIC}' has no subscriptions" in out
    assert await store.list_batches() == []


async def test_an_unreadable_topology_is_a_configuration_error(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    missing = tmp_path / "nope.toml"
    code, out = await publish(str(source), "--topic", TOPIC, "--topology", str(missing))
    assert code == 2
    assert "topology file not found" in out and "--topology" in out


# -- a batch id used before -----------------------------------------------------------------


async def test_a_reused_batch_id_is_refused_and_resume_sends_only_what_is_missing(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), good("n2"), good("n3")])
    args = ("--topic", TOPIC, "--id-field", "id", "--batch-id", "b1")
    code, out = await publish(str(source), *args)
    assert code == 0, out

    code, out = await publish(str(source), *args)
    assert code == 1
    assert "batch b1 already exists" in out and "3 documents" in out
    assert "--resume" in out and "docbus replay --batch b1" in out
    assert await waiting(broker_env) == {"entities": 3, "supplier-risk": 3}

    # n1 was processed (has a result); n5 was recorded by a run that died before sending it;
    # n2 was edited since; n4 is new.
    await store.database["results"].insert_one({"batch_id": "b1", "doc_id": "n1", "handler": "h"})
    n5 = good("n5")
    await store.record_documents(
        [Envelope(doc_id="n5", batch_id="b1", topic=TOPIC, content=n5["text"],
                  metadata={k: v for k, v in n5.items() if k != "text"})]
    )  # fmt: skip
    edited = {**good("n2"), "text": "Acme Castings now says the fire was small."}
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), edited, good("n3"), good("n4"), n5])
    out_buffer, err_buffer = io.StringIO(), io.StringIO()
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    parsed = parser.parse_args([str(source), *args, "--resume", "--json"])
    code = await asyncio.to_thread(
        cli.run, parsed, console=Console(file=out_buffer), err_console=Console(file=err_buffer)
    )
    assert code == 1  # n2 is listed, not sent
    summary = json.loads(out_buffer.getvalue())
    assert (summary["already_sent"], summary["resent"], summary["sent"]) == (1, 2, 3)
    [problem] = summary["skipped_inputs"]
    assert (problem["file"], problem["line"]) == (str(source), 2)
    assert "differs from document 'n2'" in problem["reason"]
    # n3 arrived the first time: its copy is dropped as a duplicate; n4 and n5 arrive
    arrived = await receive_all(broker_env, "entities", 5)
    assert sorted(e.doc_id for e in arrived) == ["n1", "n2", "n3", "n4", "n5"]
    assert next(e for e in arrived if e.doc_id == "n2").content == good("n2")["text"]
    assert sorted([e.doc_id async for e in store.iter_documents("b1")]) == [
        "n1", "n2", "n3", "n4", "n5",
    ]  # fmt: skip
    record = await store.get_batch("b1")
    assert record is not None and record.counts["documents"] == 5


# -- a broker that is down, --json, documented exit codes -------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_broker_that_is_down_fails_fast_naming_where_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mongo_env: None, store: Store
) -> None:
    port = closed_port()
    monkeypatch.setenv(
        "DOCBUS_SERVICEBUS__CONNECTION_STRING",
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;",
    )
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1")])
    started = time.monotonic()
    code, out = await publish(str(source), "--topic", TOPIC, "--id-field", "id")
    assert time.monotonic() - started < 4
    assert code == 3  # unavailable: try again later
    assert f"127.0.0.1:{port}" in out and "docbus up" in out
    assert len(out.strip().splitlines()) == 1
    assert await store.list_batches() == []


async def test_json_prints_the_summary_alone_on_stdout(
    tmp_path: Path, broker_env: str, store: Store
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), good("n2"), "{bad"])
    out_buffer, err_buffer = io.StringIO(), io.StringIO()
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    parsed = parser.parse_args(
        [str(source), "--topic", TOPIC, "--id-field", "id", "--batch-id", "bj", "--json",
         "--skip-invalid"]
    )  # fmt: skip
    code = await asyncio.to_thread(
        cli.run, parsed, console=Console(file=out_buffer), err_console=Console(file=err_buffer)
    )
    assert code == 1
    summary = json.loads(out_buffer.getvalue())
    assert (summary["batch_id"], summary["sent"], summary["skipped"], summary["ok"]) == (
        "bj", 2, 1, False,
    )  # fmt: skip
    assert summary["skipped_inputs"][0]["line"] == 3
    assert err_buffer.getvalue() == ""


async def test_json_errors_go_to_stderr_with_each_problem_and_the_refusal_to_stdout(
    tmp_path: Path,
) -> None:
    source = write_jsonl(tmp_path / "news.jsonl", [good("n1"), "{bad"])
    out_buffer, err_buffer = io.StringIO(), io.StringIO()
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    parsed = parser.parse_args([str(source), "--topic", TOPIC, "--json"])
    code = cli.run(parsed, console=Console(file=out_buffer), err_console=Console(file=err_buffer))
    assert code == 1
    refusal = json.loads(out_buffer.getvalue())  # a refusal is JSON on stdout too
    assert (refusal["ok"], refusal["sent"], refusal["exit_code"]) == (False, 0, 1)
    assert [(p["line"], p["reason"].split(":")[0]) for p in refusal["problems"]] == [
        (2, "invalid JSON")
    ]
    assert f"{source}:2: invalid JSON" in err_buffer.getvalue()


def test_help_documents_the_exit_codes() -> None:
    text = build_parser("publish").format_help()
    assert "exit codes:" in text
    assert "0  every document was sent" in text and "1  something was skipped" in text
