"""Handlers used by the discovery tests (imported by module name)."""

from __future__ import annotations

from pydantic import BaseModel

from handlers import Context, Document, handler


class Summary(BaseModel):
    words: int


@handler(topic="documents", subscription="entities", version="2")
async def entities(doc: Document, ctx: Context) -> Summary:
    return Summary(words=len(doc.text.split()))


@handler(topic="documents", subscription="supplier-risk", ordered_by="supplier")
async def supplier_risk(doc: Document, ctx: Context) -> dict[str, object]:
    return {"supplier": doc.metadata.get("supplier")}


async def not_a_handler(doc: Document, ctx: Context) -> dict[str, object]:
    return {}
