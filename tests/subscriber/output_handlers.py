"""A handler for the output tests: each document's ``returns`` metadata says what it returns."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

from pydantic import BaseModel

from handlers import Context, Document, handler


class Entities(BaseModel):
    companies: list[str]


class Summary(BaseModel):
    text: str


RETURNS: dict[str, Any] = {
    "model": Entities(companies=["Acme"]),
    "other-model": Summary(text="not what was declared"),
    "valid-dict": {"companies": ["Beta"]},
    "invalid-dict": {"firms": ["Gamma"]},
}

DICTS: dict[str, Any] = {
    "datetime": {"at": dt.datetime(2025, 1, 2, 3, 4, tzinfo=dt.UTC), "day": dt.date(2025, 1, 2)},
    "set": {"tags": {"b", "a"}},
    "bytes": {"nested": {"raw": b"\xff\x00"}},
    "decimal": {"items": [{"price": decimal.Decimal("1.10")}]},
    "huge-int": {"n": 2**64},
    "nan": {"score": float("nan")},
}


@handler(topic="docs", subscription="work", version="1")
async def declared(doc: Document, ctx: Context) -> Entities:
    # every document reaches both handlers: each acts on its own table's only
    return RETURNS.get(str(doc.metadata["returns"]), Entities(companies=[]))  # type: ignore[no-any-return]


@handler(topic="docs", subscription="other", version="1")
async def undeclared(doc: Document, ctx: Context) -> dict[str, Any]:
    return DICTS.get(str(doc.metadata["returns"]), {})  # type: ignore[no-any-return]
