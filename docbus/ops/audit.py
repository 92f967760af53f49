"""Audit export rows: a batch's LLM prompt/response pairs, one plain row per request.

Every LLM request a handler makes is an audit row (:class:`~docbus.records.LLMCallRecord`,
written by :mod:`handlers.llm`). :func:`export_rows` streams the rows an :class:`ExportFilter`
selects — a batch, optionally one step, handler or document — oldest first, straight from the
store's cursor (``Store.iter_llm_calls``), each as JSON-ready data with the fields of
:data:`EXPORT_FIELDS`: its ids, step, model, re-ask and retry numbers, the prompt messages, the
response text, the parsed output, tokens, cost, latency and error. A batch of any size is read in
constant memory. ``docbus audit export`` (:mod:`docbus.cli.audit`) writes them as JSONL or CSV.
Neighbours: :mod:`docbus.ops.report` (the same rows added up).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from docbus.records import LLMCallRecord
from docbus.store import Store

__all__ = ["EXPORT_FIELDS", "ExportFilter", "export_row", "export_rows"]

EXPORT_FIELDS: tuple[str, ...] = (
    "id",
    "created_at",
    "batch_id",
    "doc_id",
    "generation",
    "message_id",
    "handler",
    "handler_version",
    "step",
    "attempt",
    "reask",
    "retry",
    "category",
    "kind",
    "mode",
    "model",
    "response_model",
    "messages",
    "response_text",
    "parsed",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "error_type",
    "error_message",
    "request_id",
)
"""The fields of one exported row, in order (the CSV header)."""


@dataclass(frozen=True)
class ExportFilter:
    """Which rows of a batch to export (``None``: any)."""

    batch_id: str
    step: str | None = None
    handler: str | None = None
    doc_id: str | None = None

    def describe(self) -> str:
        parts = [f"batch {self.batch_id!r}"]
        for label, value in (("step", self.step), ("handler", self.handler), ("doc", self.doc_id)):
            if value is not None:
                parts.append(f"{label} {value!r}")
        return ", ".join(parts)


def export_row(call: LLMCallRecord) -> dict[str, Any]:
    """One audit row as JSON-ready data with the fields of :data:`EXPORT_FIELDS`."""
    data = call.model_dump(mode="json")
    return {name: data.get(name) for name in EXPORT_FIELDS}


async def export_rows(store: Store, selection: ExportFilter) -> AsyncIterator[dict[str, Any]]:
    """The selected audit rows, oldest first, each read from the cursor only once the one
    before it has been taken."""
    async for call in store.iter_llm_calls(
        selection.batch_id,
        step=selection.step,
        handler=selection.handler,
        doc_id=selection.doc_id,
    ):
        yield export_row(call)
