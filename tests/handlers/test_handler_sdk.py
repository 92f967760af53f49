from __future__ import annotations

import importlib
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from docbus.envelope import Envelope, Source
from docbus.store import PayloadError, Store
from handlers import Context, DeadLetter, Document, Retry, handler, run_handler
from handlers.runtime import (
    HandlerDiscoveryError,
    HandlerSpec,
    InvalidOutput,
    discover_handlers,
    handler_spec,
    resolve_document,
    serialize_output,
)

HERE = Path(__file__).resolve().parent


@pytest.fixture
def sample_handlers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("docbus_sample_handlers")


class Entities(BaseModel):
    companies: list[str]


@handler(topic="documents", subscription="entities", version=3)
async def extract(doc: Document, ctx: Context) -> Entities:
    if "poison" in doc.text:
        raise DeadLetter("NotANewsItem", "the document is a price list")
    if "busy" in doc.text:
        raise Retry(after=30, reason="RateLimited")
    ctx.logger.info("extracting %d characters", len(doc.text))
    return Entities(companies=[w for w in doc.text.split() if w.istitle()])


# -- decorator ---------------------------------------------------------------------------------


def test_the_decorator_returns_the_function_unchanged_with_a_spec() -> None:
    async def plain(doc: Document, ctx: Context) -> dict[str, Any]:
        return {}

    decorated = handler(topic="t", subscription="s")(plain)
    assert decorated is plain
    assert handler_spec(plain) == HandlerSpec(name="plain", topic="t", subscription="s")
    spec = handler_spec(extract)
    assert spec is not None and (spec.name, spec.version) == ("extract", "3")
    with pytest.raises(AttributeError):
        spec.version = "4"  # type: ignore[misc]
    assert handler_spec(lambda: None) is None


def test_the_decorator_refuses_what_cannot_work() -> None:
    def sync(doc: Document, ctx: Context) -> dict[str, Any]:
        return {}

    with pytest.raises(TypeError, match="async def"):
        handler(topic="t", subscription="s")(sync)  # type: ignore[type-var]

    async def fn(doc: Document, ctx: Context) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="handler name"):
        handler(topic="t", subscription="s", name="has@sign")(fn)
    with pytest.raises(ValueError, match="subscription must not be empty"):
        handler(topic="t", subscription="")(fn)


# -- outcomes ----------------------------------------------------------------------------------


def test_the_exception_vocabulary() -> None:
    retry = Retry(after=2.5, reason="RateLimited")
    assert (retry.after, retry.reason, str(retry)) == (
        2.5,
        "RateLimited",
        "RateLimited (after 2.5 s)",
    )
    assert Retry().after is None
    with pytest.raises(ValueError):
        Retry(after=-1)
    dead = DeadLetter("Unsupported", "binary PDF")
    assert (dead.reason, dead.description, str(dead)) == (
        "Unsupported",
        "binary PDF",
        "Unsupported: binary PDF",
    )
    with pytest.raises(ValueError):
        DeadLetter("")
    assert isinstance(InvalidOutput("x"), DeadLetter)


async def test_run_handler_returns_the_output() -> None:
    result = await run_handler(extract, "Acme and Beta signed a deal")
    assert result == Entities(companies=["Acme", "Beta"])


async def test_run_handler_lets_dead_letter_and_retry_through() -> None:
    with pytest.raises(DeadLetter) as dead:
        await run_handler(extract, "poison pill")
    assert dead.value.reason == "NotANewsItem"
    with pytest.raises(Retry) as retry:
        await run_handler(extract, "busy server")
    assert retry.value.after == 30


async def test_run_handler_rejects_output_that_cannot_be_stored() -> None:
    @handler(topic="t", subscription="s")
    async def forgets_to_return(doc: Document, ctx: Context) -> None:
        return None

    with pytest.raises(InvalidOutput, match="returned NoneType"):
        await run_handler(forgets_to_return, "text")


async def test_run_handler_builds_the_context_a_worker_would(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: dict[str, Any] = {}

    @handler(topic="documents", subscription="s", version="7", name="probe")
    async def probe(doc: Document, ctx: Context) -> dict[str, Any]:
        seen.update(
            doc=doc, batch=ctx.batch_id, doc_id=ctx.doc_id, delivery=ctx.delivery_count,
            name=ctx.handler_name, version=ctx.handler_version, llm=ctx.llm,
            message_id=ctx.message_id,
        )  # fmt: skip
        ctx.logger.warning("looked at it")
        return {"ok": True}

    llm = object()
    with caplog.at_level(logging.INFO):
        await run_handler(
            probe, "Some text", doc_id="d9", batch_id="b7", metadata={"country": "FR"},
            delivery_count=3, llm=llm,
        )  # fmt: skip
    doc = seen["doc"]
    assert (doc.doc_id, doc.batch_id, doc.text, doc.metadata) == (
        "d9",
        "b7",
        "Some text",
        {"country": "FR"},
    )
    assert (seen["batch"], seen["doc_id"], seen["delivery"]) == ("b7", "d9", 3)
    assert (seen["name"], seen["version"], seen["llm"]) == ("probe", "7", llm)
    assert seen["message_id"] == "b7:d9:0"
    assert "[probe b7/d9] looked at it" in caplog.text

    given = Document(doc_id="x", batch_id="b", text="t", source=Source(path="f.txt"))
    await run_handler(probe, given, batch_id="b2")
    assert (seen["doc"].doc_id, seen["doc"].batch_id, seen["doc"].source) == (
        "x",
        "b2",
        Source(path="f.txt"),
    )


def test_serialize_output_accepts_models_and_json_able_dicts() -> None:
    assert serialize_output(Entities(companies=["A"])) == {"companies": ["A"]}
    when = datetime(2025, 1, 2, 3, 4, tzinfo=UTC)
    assert serialize_output({"at": when, "n": 1}) == {"at": "2025-01-02T03:04:00Z", "n": 1}
    with pytest.raises(InvalidOutput, match="non-string keys"):
        serialize_output({1: "x"})
    with pytest.raises(InvalidOutput, match="not JSON-able"):
        serialize_output({"x": object()})
    with pytest.raises(InvalidOutput, match="returned list"):
        serialize_output([1, 2])


# -- documents and claim-checks ----------------------------------------------------------------


async def test_claim_checked_documents_are_resolved_from_the_store(store: Store) -> None:
    text = "long annual report " * 20_000
    ref = await store.put_payload(text)
    envelope = Envelope(doc_id="d1", batch_id="b1", topic="documents", claim_check=ref,
                        metadata={"k": "v"}, content_type="text/markdown")  # fmt: skip
    with pytest.raises(ValueError, match="resolve it first"):
        Document.from_envelope(envelope)
    doc = await resolve_document(envelope, store)
    assert (doc.text, doc.metadata, doc.content_type) == (text, {"k": "v"}, "text/markdown")
    inline = Envelope(doc_id="d2", batch_id="b1", topic="documents", content="short")
    assert (await resolve_document(inline, store)).text == "short"
    missing = envelope.model_copy(update={"claim_check": ref.model_copy(update={"id": "0" * 64})})
    with pytest.raises(PayloadError):
        await resolve_document(missing, store)


async def test_checkpoint_keys_round_trip_through_the_store(store: Store) -> None:
    spec = handler_spec(extract)
    assert spec is not None
    envelope = Envelope(doc_id="d1", batch_id="b1", topic="documents", content="x")
    ctx = Context(envelope, spec, store=store)
    key = ctx.checkpoint_key("classify", {"text": "x"})
    assert key == ctx.checkpoint_key("classify", {"text": "x"})
    assert key != ctx.checkpoint_key("classify", {"text": "y"})
    assert (key.handler, key.handler_version) == ("extract", "3")
    await store.put_checkpoint(key, {"type": "news"})
    hit = await store.get_checkpoint(key)
    assert hit is not None and hit.output == {"type": "news"}


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_by_module_object_and_name(sample_handlers: ModuleType) -> None:
    for source in (sample_handlers, "docbus_sample_handlers"):
        found = discover_handlers(source)
        assert [(h.name, h.spec.subscription) for h in found] == [
            ("entities", "entities"),
            ("supplier_risk", "supplier-risk"),
        ]
        assert found[0].fn is sample_handlers.entities
        assert found[1].spec.ordered_by == "supplier"


def test_discovery_by_file_path(tmp_path: Path) -> None:
    path = tmp_path / "my_handlers.py"
    path.write_text(
        "from handlers import handler\n"
        "@handler(topic='documents', subscription='mine')\n"
        "async def mine(doc, ctx):\n"
        "    return {}\n"
    )
    found = discover_handlers(str(path))
    assert [h.name for h in found] == ["mine"]
    assert discover_handlers(path)[0].fn is found[0].fn  # imported once


def test_a_handler_file_imports_its_neighbours_as_a_script_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `docbus worker --handlers jobs/both.py`, where both.py does `from shared_models import
    # …` (jobs/shared_models.py), run from another directory: as `python jobs/both.py` would.
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "shared_models_x1.py").write_text("LABEL = 'from a neighbour'\n")
    (jobs / "both.py").write_text(
        "from shared_models_x1 import LABEL\n"
        "from handlers import handler\n"
        "@handler(topic='documents', subscription='both')\n"
        "async def both(doc, ctx):\n"
        "    return {'label': LABEL}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    found = discover_handlers("jobs/both.py")
    assert [h.name for h in found] == ["both"]
    assert sys.modules["shared_models_x1"].LABEL == "from a neighbour"
    sys.modules.pop("shared_models_x1")


def test_discovery_of_explicit_functions(sample_handlers: ModuleType) -> None:
    found = discover_handlers([extract, sample_handlers.supplier_risk])
    assert [h.name for h in found] == ["extract", "supplier_risk"]
    with pytest.raises(HandlerDiscoveryError, match="not decorated"):
        discover_handlers([sample_handlers.not_a_handler])


def test_discovery_refuses_clashes_and_nothing(tmp_path: Path, sample_handlers: ModuleType) -> None:
    with pytest.raises(HandlerDiscoveryError, match="both run on subscription documents/entities"):
        discover_handlers([extract, sample_handlers.entities])

    async def fn(doc: Document, ctx: Context) -> dict[str, Any]:
        return {}

    twin = handler(topic="other", subscription="x", name="extract")(fn)
    with pytest.raises(HandlerDiscoveryError, match="two handlers are named 'extract'"):
        discover_handlers([extract, twin])
    empty = tmp_path / "empty_mod.py"
    empty.write_text("x = 1\n")
    with pytest.raises(HandlerDiscoveryError, match="no @handler functions"):
        discover_handlers(str(empty))
    with pytest.raises(HandlerDiscoveryError, match="cannot import handler module"):
        discover_handlers("no.such.module_anywhere")
    broken = tmp_path / "broken_mod.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(HandlerDiscoveryError, match="boom at import"):
        discover_handlers(str(broken))
