"""Two handlers on one topic for the replay tests: ``alpha`` and ``beta``, one subscription each.

Every invocation and every run of the checkpointed step is written to Mongo (``invocations``,
``step_runs``), so tests count what each handler did. A document fails in a handler while the
``faults`` collection says so (``_id`` ``handler:doc_id``): the test's "cause" that an operator
fixes before replaying. :func:`make_handlers` builds the pair under another ``alpha`` version.
"""

from __future__ import annotations

from typing import Any

from handlers import Context, DeadLetter, Document, handler
from handlers.runtime import HandlerFunction

TOPIC = "docs"


async def _work(name: str, doc: Document, ctx: Context) -> dict[str, Any]:
    assert ctx.store is not None
    db = ctx.store.database
    envelope = ctx.envelope
    await db["invocations"].insert_one(
        {
            "handler": name,
            "doc_id": doc.doc_id,
            "generation": envelope.generation,
            "handler_version": ctx.handler_version,
            "target": envelope.target_subscription,
            "replay_of": envelope.replay_of,
            "delivery": ctx.delivery_count,
        }
    )
    fault = await db["faults"].find_one({"_id": f"{name}:{doc.doc_id}"})
    if fault is not None:
        raise DeadLetter(fault["reason"], fault.get("description", "the test says so"))

    async def summarise(text: str) -> str:
        await db["step_runs"].insert_one(
            {"handler": name, "doc_id": doc.doc_id, "handler_version": ctx.handler_version}
        )
        return f"{text[:10].upper()} (v{ctx.handler_version})"

    return {"summary": await ctx.step("summarise", summarise, doc.text)}


def make_handlers(alpha_version: str = "1") -> list[HandlerFunction]:
    """The two handlers, ``alpha`` at ``alpha_version``."""

    @handler(topic=TOPIC, subscription="alpha", version=alpha_version, name="alpha")
    async def alpha(doc: Document, ctx: Context) -> dict[str, Any]:
        return await _work("alpha", doc, ctx)

    @handler(topic=TOPIC, subscription="beta", version="1", name="beta")
    async def beta(doc: Document, ctx: Context) -> dict[str, Any]:
        return await _work("beta", doc, ctx)

    return [alpha, beta]


alpha, beta = make_handlers()
