"""Checkpointed steps: a finished step is never paid for twice, on the real store and server."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from docbus.local.llm_server import LLMServer
from docbus.records import CheckpointKey
from docbus.store import Store
from handlers import Context, DeadLetter, step
from handlers.llm import LLMClient
from tests.handlers.llm_support import (
    INVOICE_TEXT,
    Invoice,
    Party,
    Summary,
    chat_requests,
    make_client,
    make_ctx,
)


class Crash(Exception):
    """Stands for the worker dying between two steps."""


async def three_steps(ctx: Context, *, crash_before_last: bool = False) -> dict[str, Any]:
    invoice = await ctx.step("invoice", ctx.llm.extract, Invoice, INVOICE_TEXT)
    summary = await ctx.step("summary", ctx.llm.extract, Summary, f"Summarise: {INVOICE_TEXT}")
    if crash_before_last:
        raise Crash
    note = await ctx.step("note", ctx.llm.complete, f"Note on {invoice.seller.name}", max_tokens=20)
    return {"invoice": invoice, "summary": summary, "note": note}


async def test_a_repeated_step_with_the_same_input_calls_the_llm_once(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        first = await make_ctx(store, llm=client).step(
            "invoice", make_ctx(store, llm=client).llm.extract, Invoice, INVOICE_TEXT
        )
        again_ctx = make_ctx(store, attempt=2, llm=client)
        again = await again_ctx.step("invoice", again_ctx.llm.extract, Invoice, INVOICE_TEXT)
    assert chat_requests(llm_server) == 1
    assert isinstance(again, Invoice) and again == first
    assert isinstance(again.seller, Party)  # re-validated into the model, not a dict


async def test_a_crash_after_two_of_three_steps_reruns_only_the_third(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        with pytest.raises(Crash):
            await three_steps(make_ctx(store, llm=client), crash_before_last=True)
        assert chat_requests(llm_server) == 2
        output = await three_steps(make_ctx(store, attempt=2, llm=client))
    assert chat_requests(llm_server) == 3
    rows = await store.llm_calls("b1")
    assert [(r.step, r.attempt) for r in rows] == [("invoice", 1), ("summary", 1), ("note", 2)]
    assert isinstance(output["invoice"], Invoice) and isinstance(output["note"], str)


@pytest.mark.parametrize(
    "change",
    [
        {"text": INVOICE_TEXT + " Payment by bank transfer."},
        {"version": "2"},
        {"doc_id": "d2"},
        {"handler": "other"},
    ],
    ids=["input", "handler-version", "document", "handler"],
)
async def test_other_input_or_handler_version_recomputes(
    llm_server: LLMServer, store: Store, change: dict[str, str]
) -> None:
    async def run(ctx: Context, text: str) -> Invoice:
        return await ctx.step("invoice", ctx.llm.extract, Invoice, text)

    async with make_client(llm_server, store) as client:
        await run(make_ctx(store, llm=client), INVOICE_TEXT)
        text = change.get("text", INVOICE_TEXT)
        other: dict[str, Any] = {key: value for key, value in change.items() if key != "text"}
        await run(make_ctx(store, llm=client, **other), text)
        await run(make_ctx(store, llm=client, **other), text)  # and that one is kept too
    assert chat_requests(llm_server) == 2


class Reading(BaseModel):
    value: float


async def test_outputs_come_back_as_they_were_stored(store: Store) -> None:
    calls: list[str] = []

    async def produce(kind: str) -> Any:
        calls.append(kind)
        return {
            "model": Reading(value=1.5),
            "models": [Reading(value=1), Reading(value=2)],
            "json": {"a": [1, "two", None], "b": 2.5},
            "text": "plain",
            "none": None,
        }[kind]

    kinds = ["model", "models", "json", "text", "none"]
    first = [await make_ctx(store).step(kind, produce, kind) for kind in kinds]
    again = [await make_ctx(store, attempt=2).step(kind, produce, kind) for kind in kinds]
    assert calls == kinds  # the second round came from the checkpoints
    assert first == again
    assert again[0] == Reading(value=1.5) and again[1] == [Reading(value=1), Reading(value=2)]


async def test_the_first_run_returns_the_stored_json_form_too(store: Store) -> None:
    async def tuple_maker() -> tuple[int, int]:
        return (1, 2)

    assert await make_ctx(store).step("pair", tuple_maker) == [1, 2]
    assert await make_ctx(store).step("pair", tuple_maker) == [1, 2]


async def test_the_decorator_form_keeps_the_context_out_of_the_input_hash(
    llm_server: LLMServer, store: Store
) -> None:
    @step("summary")
    async def summarise(ctx: Context, text: str) -> Summary:
        return await ctx.llm.extract(Summary, text)

    async with make_client(llm_server, store) as client:
        one = await summarise(make_ctx(store, llm=client), INVOICE_TEXT)
        two = await summarise(make_ctx(store, attempt=3, llm=client), INVOICE_TEXT)
    assert one == two and chat_requests(llm_server) == 1
    assert summarise.__name__ == "summarise"


async def test_audit_rows_name_the_step_and_failures_carry_it(
    llm_server: LLMServer, store: Store
) -> None:
    async def fails(ctx: Context) -> None:
        await ctx.llm.complete("hello")
        raise DeadLetter("Bad", "nope")

    async with make_client(llm_server, store) as client:
        ctx = make_ctx(store, llm=client)
        assert ctx.current_step is None
        with pytest.raises(DeadLetter) as caught:
            await ctx.step("checking", fails, ctx)
        assert ctx.current_step is None
        await ctx.llm.complete("outside any step")
    assert caught.value.step == "checking"
    rows = await store.llm_calls("b1")
    assert [r.step for r in rows] == ["checking", None]


async def test_without_a_store_a_step_simply_runs(llm_server: LLMServer) -> None:
    async with make_client(llm_server) as client:
        for _ in range(2):
            ctx = make_ctx(None, llm=client)
            await ctx.step("summary", ctx.llm.extract, Summary, INVOICE_TEXT)
    assert chat_requests(llm_server) == 2


async def test_an_output_that_no_longer_loads_is_recomputed_and_replaced(store: Store) -> None:
    ctx = make_ctx(store)
    key: CheckpointKey = ctx.checkpoint_key(
        "reading", {"step": "reading", "args": [], "kwargs": {}}
    )
    stale = {
        "format": "docbus.step/1",
        "kind": "model",
        "class": "gone.module:Reading",
        "json": "{}",
    }
    await store.put_checkpoint(key, stale)

    async def measure() -> Reading:
        return Reading(value=3)

    assert await ctx.step("reading", measure) == Reading(value=3)
    stored = await store.get_checkpoint(key)
    assert stored is not None and stored.output["class"].endswith(":Reading")
    assert "gone" not in stored.output["class"]


async def test_arguments_that_cannot_be_hashed_are_refused(store: Store) -> None:
    async def fn(value: object) -> int:
        return 1

    with pytest.raises(TypeError, match="not JSON-able"):
        await make_ctx(store).step("odd", fn, object())


async def test_a_client_given_to_the_context_is_bound_to_it(llm_server: LLMServer) -> None:
    client = make_client(llm_server)
    ctx = make_ctx(None, llm=client)
    assert not isinstance(ctx.llm, LLMClient) and ctx.llm.ctx is ctx
    await client.aclose()


def test_a_checkpointed_model_loads_whether_its_module_came_by_path_or_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `docbus worker --handlers my_steps.py` imports the file under a name of its own;
    # `--handlers my_steps` imports the module. A checkpoint one stored must load in the
    # other (a fleet started both ways, or a re-run started the other way): else every
    # finished step is paid for again ("class … not found; runs again").
    from handlers.discovery import discover_handlers
    from handlers.steps import decode_output, encode_output

    source = tmp_path / "my_steps.py"
    source.write_text(
        "from pydantic import BaseModel\n"
        "from handlers import handler\n"
        "class Ticket(BaseModel):\n    label: str\n"
        "@handler(topic='t', subscription='s')\n"
        "async def h(doc, ctx):\n    return {}\n"
    )
    by_path = discover_handlers(str(source))[0].fn.__module__
    by_path_module = sys.modules[by_path]
    stored = encode_output(by_path_module.Ticket(label="urgent"))
    assert stored["class"] == "my_steps:Ticket"  # the same wherever the module came from
    loaded = decode_output(stored)
    assert type(loaded) is by_path_module.Ticket and loaded.label == "urgent"

    # the worker started with the module name reads what the path-started one stored (here
    # and before: under the file's own module name), and the other way round
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, by_path)
    by_name = importlib.import_module("my_steps")
    try:
        for stored_class in ("my_steps:Ticket", f"{by_path}:Ticket"):
            loaded = decode_output({**stored, "class": stored_class})
            assert type(loaded) is by_name.Ticket and loaded.label == "urgent", stored_class
    finally:
        sys.modules.pop("my_steps", None)
