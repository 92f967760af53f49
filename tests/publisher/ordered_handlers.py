"""Handlers for the LLM-mode refusal tests: one ordered handler on ``docs``, one unordered."""

from __future__ import annotations

from typing import Any

from handlers import handler


@handler(topic="docs", subscription="alpha", ordered_by="customer")
async def in_order(doc: Any, ctx: Any) -> dict[str, Any]:
    return {}


@handler(topic="documents", subscription="entities")
async def any_order(doc: Any, ctx: Any) -> dict[str, Any]:
    return {}
