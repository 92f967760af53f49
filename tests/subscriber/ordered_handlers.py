"""An ordered handler for the worker's session tests: it records when each document starts/ends."""

from __future__ import annotations

import asyncio
from typing import Any

from handlers import Context, Document, handler


@handler(topic="ordered", subscription="in-order", version="1", ordered_by="key")
async def in_order(doc: Document, ctx: Context) -> dict[str, Any]:
    assert ctx.store is not None
    events = ctx.store.database["order_events"]
    await events.insert_one({"key": doc.metadata["key"], "n": doc.metadata["n"], "event": "start"})
    await asyncio.sleep(0.02)
    await events.insert_one({"key": doc.metadata["key"], "n": doc.metadata["n"], "event": "end"})
    return {"n": doc.metadata["n"]}
