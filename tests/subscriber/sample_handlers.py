"""Handlers for the worker's tests; each document's ``behaviour`` metadata says what to do.

Every invocation is recorded in the store's ``invocations`` collection, so tests count calls
made by workers in other processes too.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from handlers import Context, DeadLetter, Document, handler
from handlers.errors import OverBudget


async def _record(ctx: Context, event: str) -> None:
    assert ctx.store is not None
    await ctx.store.database["invocations"].insert_one(
        {
            "doc_id": ctx.doc_id,
            "event": event,
            "attempt": ctx.delivery_count,
            "at": datetime.now(UTC),
        }
    )


@handler(topic="docs", subscription="work", version="1")
async def work(doc: Document, ctx: Context) -> dict[str, Any]:
    behaviour = str(doc.metadata.get("behaviour", "ok"))
    await _record(ctx, "start")
    if behaviour.startswith("fail-times:"):
        if ctx.delivery_count <= int(behaviour.split(":")[1]):
            raise RuntimeError(f"transient failure on delivery {ctx.delivery_count}")
    elif behaviour == "always-fail":
        raise RuntimeError("the downstream service is broken")
    elif behaviour == "over-budget":
        raise OverBudget(ctx.batch_id, spent=1.0, budget=0.5)
    elif behaviour == "poison":
        raise DeadLetter("BadDocument", "the document has no usable text; fix it and replay")
    elif behaviour.startswith("slow:"):
        await asyncio.sleep(float(behaviour.split(":")[1]))
    elif behaviour == "hang-first" and ctx.delivery_count == 1:
        await asyncio.sleep(3600)
    await _record(ctx, "done")
    return {"length": len(doc.text), "head": doc.text[:12].upper()}
