"""What a handler returns is stored as it reads back, or dead-lettered saying what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.output import declared_output
from handlers.runtime import InvalidOutput, serialize_output
from publisher import publish_documents
from tests.subscriber import output_handlers
from tests.subscriber.conftest import Stack
from tests.subscriber.helpers import run_worker
from tests.subscriber.output_handlers import DICTS, RETURNS, Entities, Summary, declared


async def test_outputs_are_stored_faithfully_or_dead_lettered_naming_the_field(
    stack: Stack,
) -> None:
    # `declared` consumes "work" (-> Entities), `undeclared` consumes "other" (-> dict)
    docs = [
        {"doc_id": name, "text": "t", "metadata": {"returns": name}} for name in [*RETURNS, *DICTS]
    ]
    report = await publish_documents(
        docs, topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok
    await run_worker(stack, output_handlers)
    results = {
        (r["handler"], r["doc_id"]): r["output"]
        async for r in stack.store.database["current_results"].find({})
    }
    dead = {
        (r["handler"], r["doc_id"]): r async for r in stack.store.database["dead_letters"].find({})
    }
    assert results[("declared", "model")] == {"companies": ["Acme"]}
    assert results[("declared", "valid-dict")] == {"companies": ["Beta"]}
    assert results[("undeclared", "datetime")] == {
        "at": "2025-01-02T03:04:00Z",
        "day": "2025-01-02",
    }
    expected = {
        ("declared", "other-model"): "returned Summary, declares Entities",
        ("declared", "invalid-dict"): "not a valid Entities (companies: Field required)",
        ("undeclared", "set"): "field 'tags' holds a set",
        ("undeclared", "bytes"): "field 'nested.raw' holds a bytes",
        ("undeclared", "decimal"): "field 'items[0].price' holds a Decimal",
        ("undeclared", "huge-int"): "field 'n' holds an integer beyond 64 bits",
        ("undeclared", "nan"): "field 'score' holds nan",
    }
    assert set(dead) == set(expected)
    assert len(results) + len(dead) == 2 * len(docs)
    for key, says in expected.items():
        record = dead[key]
        assert record["reason"] == "InvalidHandlerOutput", record
        assert says in record["description"], record["description"]
        assert record["delivery_count"] == 1  # at once: the same code would fail again


@pytest.mark.parametrize(
    ("value", "declared_as", "says"),
    [
        (Summary(text="x"), (Entities,), "returned Summary, declares Entities"),
        ({"companies": "nope"}, (Entities,), "not a valid Entities"),
        ({"a": [{"b": {1, 2}}]}, None, "field 'a[0].b' holds a set"),
        ({"a": "lone \ud800"}, None, "not valid Unicode"),
        ({"a\x00b": 1}, None, "NUL"),
        ({"a": float("inf")}, None, "JSON cannot hold"),
        ({"a": object()}, None, "not JSON-able"),
    ],
)
def test_serialize_output_refuses_what_would_not_read_back_the_same(
    value: object, declared_as: Any, says: str
) -> None:
    with pytest.raises(InvalidOutput) as caught:
        serialize_output(value, declared_as)
    assert says in caught.value.description


def test_declared_output_reads_the_return_annotation() -> None:
    assert declared_output(declared) == (Entities,)
    assert declared_output(output_handlers.undeclared) is None

    async def either(doc: Any, ctx: Any) -> Entities | Summary | None:
        return None

    async def unresolvable(doc: Any, ctx: Any) -> NotImported:  # type: ignore[name-defined]  # noqa: F821
        return None

    assert declared_output(either) == (Entities, Summary)
    assert declared_output(unresolvable) is None
    assert serialize_output({"companies": ["A"]}, (Entities,)) == {"companies": ["A"]}
