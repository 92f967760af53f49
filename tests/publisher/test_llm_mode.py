"""The LLM mode of a publish: kept on the batch record, and refused in batch mode for ordered
handlers — the pure refusal, the library, and ``docbus publish`` against the emulator."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from docbus.cli import publish as cli
from docbus.local.mongo import LocalMongo
from docbus.settings import Settings
from docbus.store import Store
from docbus.topology import parse_topology
from handlers.runtime import discover_handlers
from publisher import PublishRefused, publish_documents
from publisher.llm_mode import batch_mode_refusal

SESSIONS = parse_topology(
    {
        "topics": [
            {
                "name": "docs",
                "subscriptions": [{"name": "alpha", "requires_session": True}, {"name": "beta"}],
            },
            {"name": "documents", "subscriptions": [{"name": "entities"}]},
        ]
    }
)
SESSIONS_TOML = """\
[[topics]]
name = "documents"

  [[topics.subscriptions]]
  name = "entities"
  requires_session = true
"""
HANDLERS = "tests.publisher.ordered_handlers"


def test_batch_mode_is_refused_only_for_a_topic_with_an_ordered_handler() -> None:
    specs = [item.spec for item in discover_handlers(HANDLERS)]
    refusal = batch_mode_refusal("docs", "batch", handlers=specs)
    assert refusal is not None and "handler 'in_order' is ordered" in refusal
    assert "--llm-mode live" in refusal
    assert batch_mode_refusal("documents", "batch", handlers=specs) is None
    refusal = batch_mode_refusal("docs", "batch", topology=SESSIONS)
    assert refusal is not None and "subscription 'alpha' requires sessions" in refusal
    assert batch_mode_refusal("documents", "batch", topology=SESSIONS) is None
    for mode in ("live", None):  # live mode and "the default" are never refused
        assert batch_mode_refusal("docs", mode, topology=SESSIONS, handlers=specs) is None
    assert batch_mode_refusal("unknown", "batch", topology=SESSIONS) is None  # refused elsewhere


async def test_publish_documents_refuses_batch_mode_on_a_session_topic_and_records_nothing(
    store: Store,
) -> None:
    with pytest.raises(PublishRefused, match="requires sessions"):
        await publish_documents(
            ["a text"], topic="docs", batch_id="b-ordered", settings=Settings(), store=store,
            topology=SESSIONS, llm_mode="batch",
        )  # fmt: skip
    assert await store.get_batch("b-ordered") is None
    with pytest.raises(ValueError, match="unknown LLM mode 'fast'"):
        await publish_documents(
            ["a text"], topic="docs", store=store, llm_mode="fast",  # type: ignore[arg-type]
        )  # fmt: skip


async def test_the_batch_record_keeps_its_mode_and_a_resume_without_one_leaves_it(
    store: Store,
) -> None:
    await store.record_batch("b1", topic="docs", llm_mode="batch")
    record = await store.get_batch("b1")
    assert record is not None and record.llm_mode == "batch"
    await store.record_batch("b1", topic="docs")  # republished (resumed) without a mode
    record = await store.get_batch("b1")
    assert record is not None and record.llm_mode == "batch"
    await store.record_batch("b2", topic="docs")
    record = await store.get_batch("b2")
    assert record is not None and record.llm_mode is None
    assert await store.set_batch_llm_mode("b2", "live") is True
    record = await store.get_batch("b2")
    assert record is not None and record.llm_mode == "live"
    assert await store.set_batch_llm_mode("missing", "live") is False
    with pytest.raises(ValueError, match="unknown LLM mode"):
        await store.set_batch_llm_mode("b2", "fast")  # type: ignore[arg-type]


# -- docbus publish ------------------------------------------------------------------------------


def run_publish(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(
        parser.parse_args(list(argv)),
        console=Console(file=out, width=250),
        err_console=Console(file=err, width=250),
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, local_mongo: LocalMongo, store: Store) -> None:
    for name in ("DOCBUS_SERVICEBUS__CONNECTION_STRING", "DOCBUS_SERVICEBUS__NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)


def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "d1", "text": "Acme reports a fire."}) + "\n")
    return path


def test_publish_refuses_batch_mode_for_an_ordered_topic_in_one_line_exit_2(
    tmp_path: Path, env: None
) -> None:
    topology = tmp_path / "topology.toml"
    topology.write_text(SESSIONS_TOML)
    docs = inputs(tmp_path)
    code, out, err = run_publish(
        str(docs), "--topic", "documents", "--topology", str(topology), "--llm-mode", "batch"
    )
    assert code == 2, out + err
    assert err.count("\n") == 1 and "requires sessions" in err and "nothing was sent" in err
    # Through --handlers: the default topology has no sessions, the module's handler is ordered.
    code, out, err = run_publish(
        str(docs), "--topic", "documents", "--llm-mode", "batch", "--handlers", HANDLERS,
        "--dry-run",
    )  # fmt: skip
    assert code == 0, out + err  # the ordered handler consumes 'docs', not 'documents'
    code, out, err = run_publish(
        str(docs), "--topic", "documents", "--llm-mode", "batch", "--handlers", "no.such.module"
    )
    assert code == 2 and err.count("\n") == 1 and "cannot read --handlers" in err


def test_a_dry_run_shows_the_llm_mode_it_would_keep(tmp_path: Path, env: None) -> None:
    code, out, err = run_publish(
        str(inputs(tmp_path)), "--topic", "documents", "--llm-mode", "batch", "--dry-run",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["llm_mode"] == "batch"


async def test_publish_keeps_the_llm_mode_on_the_batch_record(
    tmp_path: Path,
    env: None,
    store: Store,
    servicebus_connection_string: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    monkeypatch.setenv("DOCBUS_SERVICEBUS__CONNECTION_STRING", servicebus_connection_string)
    monkeypatch.setenv("DOCBUS_PUBLISHER__SEND_CONCURRENCY", "1")
    code, out, err = await asyncio.to_thread(
        run_publish, str(inputs(tmp_path)), "--topic", "documents", "--batch-id", "b-batch",
        "--llm-mode", "batch",
    )  # fmt: skip
    assert code == 0, out + err
    assert "LLM mode" in out and "batch" in out
    record = await store.get_batch("b-batch")
    assert record is not None and record.llm_mode == "batch" and record.status == "published"
