"""A handler that makes the mistake of blocking the event loop (``time.sleep`` in ``async def``).

``block`` in a document's metadata says how many seconds each run blocks; every run is recorded
in the store's ``invocations`` collection.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from handlers import Context, Document, handler


@handler(topic="slow", subscription="blocking", version="1")
async def blocking(doc: Document, ctx: Context) -> dict[str, Any]:
    assert ctx.store is not None
    await ctx.store.database["invocations"].insert_one(
        {"doc_id": ctx.doc_id, "attempt": ctx.delivery_count, "at": datetime.now(UTC)}
    )
    # the mistake: nothing else runs meanwhile
    time.sleep(float(doc.metadata.get("block", 0)))  # noqa: ASYNC251
    return {"length": len(doc.text)}
