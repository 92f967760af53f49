"""The no-op handler ``bench/overhead.py`` runs in docbus's worker: it returns a tiny dict.

Kept in a module of its own, importing only the handler SDK, so ``docbus worker --handlers
bench/_overhead_noop.py`` starts as a user's worker with a handler that never calls an LLM.
"""

from __future__ import annotations

from handlers import Context, Document, handler

TOPIC = "work"
SUBSCRIPTION = "noop"


@handler(topic=TOPIC, subscription=SUBSCRIPTION, version="1")
async def noop(doc: Document, ctx: Context) -> dict[str, bool]:
    """Nothing to do: the cost measured is docbus's alone."""
    return {"ok": True}
