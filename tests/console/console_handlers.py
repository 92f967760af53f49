"""The handlers the console tests run: docbus's built-in two, and ``notes``.

``notes`` (subscription ``notes``) makes one checkpointed LLM call and returns the generation
it ran in, so a replayed document has two result versions that differ in that field.
"""

from __future__ import annotations

from typing import Any

from handlers import Context, Document, handler
from handlers.builtin import entities, supplier_risk

__all__ = ["entities", "notes", "supplier_risk"]


@handler(topic="documents", subscription="notes", version="1", name="notes")
async def notes(doc: Document, ctx: Context) -> dict[str, Any]:
    summary = await ctx.step("summarise", ctx.llm.complete, f"Summarise:\n\n{doc.text}")
    return {
        "summary": str(summary)[:200],
        "generation": ctx.envelope.generation,
        "length": len(doc.text),
    }
