"""A two-step LLM handler for the report's end-to-end test; each document's ``behaviour``
metadata steers it: ``bad-schema`` makes every answer of the first step violate its schema
(re-asks, then a dead letter), ``flaky`` fails between the steps on the first delivery (the
second step then runs on a later delivery: a retry)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from docbus.local.llm_server import FAULT_HEADER
from handlers import Context, Document, handler


class Kind(BaseModel):
    kind: str
    language: str


class Brief(BaseModel):
    summary: str
    keywords: list[str]


@handler(topic="docs", subscription="review", version="1")
async def review(doc: Document, ctx: Context) -> dict[str, Any]:
    behaviour = str(doc.metadata.get("behaviour", "ok"))
    headers = {FAULT_HEADER: "schema"} if behaviour == "bad-schema" else None
    kind = await ctx.step(
        "classify", ctx.llm.extract, Kind, f"Classify: {doc.text}", extra_headers=headers
    )
    if behaviour == "flaky" and ctx.delivery_count == 1:
        raise RuntimeError("connection lost between the steps")
    brief = await ctx.step("summarise", ctx.llm.extract, Brief, f"Summarise: {doc.text}")
    return {"kind": kind.kind, "summary": brief.summary}
