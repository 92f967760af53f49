"""A three-step LLM handler for the worker's LLM tests (offline server, real client).

Step 3 hangs on a document's first delivery when its metadata says ``hang_in_step3``, so a
test can kill the worker between steps.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, Field

from handlers import Context, Document, handler


class Kind(BaseModel):
    kind: Literal["news", "report", "other"]


class Names(BaseModel):
    organisations: list[str] = Field(max_length=5)


class Gist(BaseModel):
    summary: str


class Result(BaseModel):
    kind: str
    organisations: list[str]
    summary: str


@handler(topic="llm", subscription="steps", version="1")
async def three_steps(doc: Document, ctx: Context) -> Result:
    kind = await ctx.step("classify", ctx.llm.extract, Kind, f"Classify:\n{doc.text}")
    names = await ctx.step("extract", ctx.llm.extract, Names, f"Organisations in:\n{doc.text}")

    async def summarise() -> Gist:
        if doc.metadata.get("hang_in_step3") and ctx.delivery_count == 1:
            await asyncio.sleep(3600)
        gist: Gist = await ctx.llm.extract(Gist, f"Summarise:\n{doc.text}")
        return gist

    gist = await ctx.step("summarise", summarise)
    return Result(kind=kind.kind, organisations=names.organisations, summary=gist.summary)
