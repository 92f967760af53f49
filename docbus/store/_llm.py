"""LLM audit: the insert-only ``llm_calls`` rows and the spend summed from them.

:class:`LLMAuditMixin` records one row per LLM call (prompt, answer, tokens, cost, latency),
streams a batch's rows oldest first, and sums their spend or yields their figures without
prompts or answers for ``docbus report``. A batch's running cost totals and budget live on its
batch record (:mod:`docbus.store._batches`); the row shape is :class:`docbus.records.LLMCallRecord`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, InsertOne

from docbus.records import LLMCallRecord
from docbus.store._base import StoreBase
from docbus.store._errors import _translated

_USAGE_FIELDS = (
    "handler",
    "step",
    "category",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "error_type",
)


class LLMAuditMixin(StoreBase):
    """LLM audit rows and the spend they add up to."""

    async def record_llm_call(self, call: Mapping[str, Any] | LLMCallRecord) -> str:
        """Insert one LLM audit row; returns its id. Rows written at the same time by other
        handlers go in the same command (:mod:`docbus.store._group`)."""
        if isinstance(call, LLMCallRecord):
            row = call.model_dump(mode="python", exclude={"id"})
        else:
            row = dict(call)
        row.setdefault("_id", ObjectId())
        with _translated("record llm call"):
            await self._writer("llm_calls", durable=False).write(InsertOne(row))
        return str(row["_id"])

    async def iter_llm_calls(
        self,
        batch_id: str,
        *,
        doc_id: str | None = None,
        step: str | None = None,
        handler: str | None = None,
    ) -> AsyncIterator[LLMCallRecord]:
        """A batch's LLM audit rows matching every filter given, oldest first."""
        query: dict[str, Any] = {"batch_id": batch_id}
        for field, value in (("doc_id", doc_id), ("step", step), ("handler", handler)):
            if value is not None:
                query[field] = value
        with _translated(f"read llm calls of {batch_id}"):
            cursor = self._c("llm_calls").find(query).sort([("created_at", ASCENDING)])
            async for raw in cursor:
                yield LLMCallRecord.model_validate({**raw, "id": str(raw["_id"])})

    async def llm_calls(
        self,
        batch_id: str,
        *,
        doc_id: str | None = None,
        step: str | None = None,
        handler: str | None = None,
    ) -> list[LLMCallRecord]:
        """:meth:`iter_llm_calls` as a list."""
        return [
            call
            async for call in self.iter_llm_calls(
                batch_id, doc_id=doc_id, step=step, handler=handler
            )
        ]

    async def llm_spend(
        self, batch_id: str, *, doc_id: str | None = None, generation: int | None = None
    ) -> float:
        """USD spent on LLM calls by a batch (or one of its documents, optionally in one replay
        generation), summed from the audit rows."""
        match: dict[str, Any] = {"batch_id": batch_id}
        if doc_id is not None:
            match["doc_id"] = doc_id
        if generation is not None:
            match["generation"] = generation
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$group": {"_id": None, "usd": {"$sum": "$cost_usd"}}},
        ]
        with _translated(f"sum llm spend of {batch_id}"):
            async for row in await self._c("llm_calls").aggregate(pipeline):
                return float(row.get("usd") or 0.0)
        return 0.0

    async def iter_llm_usage(self, batch_id: str) -> AsyncIterator[dict[str, Any]]:
        """The figures of a batch's LLM audit rows, without prompts or answers, in no set order.

        Each mapping holds ``handler``, ``step``, ``category``, ``prompt_tokens``,
        ``completion_tokens``, ``cost_usd``, ``latency_s`` and ``error_type`` (``None`` or
        missing where a row has none): what ``docbus report`` adds up, streamed.
        """
        projection = {field: 1 for field in _USAGE_FIELDS} | {"_id": 0}
        with _translated(f"read llm usage of {batch_id}"):
            async for raw in self._c("llm_calls").find({"batch_id": batch_id}, projection):
                yield raw

    async def llm_handlers(self, batch_id: str) -> list[str]:
        """The handlers that made LLM calls for a batch, sorted."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id}},
            {"$group": {"_id": "$handler"}},
        ]
        with _translated(f"read the handlers of batch {batch_id}'s llm calls"):
            found = [row["_id"] async for row in await self._c("llm_calls").aggregate(pipeline)]
        return sorted(name for name in found if isinstance(name, str))

    async def llm_retried(self, batch_id: str) -> dict[str, set[str]]:
        """Handler → the documents of a batch it made LLM calls for on a second or later
        delivery (``attempt >= 2``)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id, "attempt": {"$gte": 2}}},
            {"$group": {"_id": {"h": "$handler", "d": "$doc_id"}}},
        ]
        found: dict[str, set[str]] = {}
        with _translated(f"read the retried llm calls of batch {batch_id}"):
            async for row in await self._c("llm_calls").aggregate(pipeline):
                name, doc = row["_id"].get("h"), row["_id"].get("d")
                if isinstance(name, str) and doc is not None:
                    found.setdefault(name, set()).add(str(doc))
        return found
