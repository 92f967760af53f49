"""Batches: the ``batches`` collection — one record per published batch, its LLM spend and budget.

:class:`BatchesMixin` records and lists batches, keeps their LLM cost totals and own budget
(the ``over_budget`` flag that parks a batch's messages), and counts a batch's progress from
``documents``, ``results`` and ``dead_letters`` (:meth:`~BatchesMixin.batch_counts`,
:meth:`~BatchesMixin.documents_settled`, :meth:`~BatchesMixin.last_activity`,
:meth:`~BatchesMixin.finish_times`). The
per-call figures behind the totals are the LLM audit rows (:mod:`docbus.store._llm`); the
record shapes are in :mod:`docbus.records`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument

from docbus.records import (
    LLM_MODES,
    BatchBudget,
    BatchCounts,
    BatchRecord,
    HandlerCounts,
    LLMMode,
    SpendCategory,
)
from docbus.store._base import StoreBase, _now
from docbus.store._documents import batch_documents
from docbus.store._errors import _translated


class BatchesMixin(StoreBase):
    """Batch records, their spend and budget, and their progress counts."""

    async def record_batch(
        self,
        batch_id: str,
        *,
        topic: str,
        source: Sequence[str] = (),
        status: str = "publishing",
        counts: Mapping[str, int] | None = None,
        llm_mode: LLMMode | None = None,
    ) -> None:
        """Create the batch record, or refresh it when the same batch is published again.

        ``llm_mode`` (``live`` or ``batch``) is kept on the record for the workers and for
        replays; ``None`` leaves a mode set before in place (a new record then has none: the
        handler's default or the worker's setting applies).
        """
        now = _now()
        fields: dict[str, Any] = {
            "topic": topic,
            "source": list(source),
            "status": status,
            "updated_at": now,
        }
        if counts is not None:
            fields["counts"] = dict(counts)
        if llm_mode is not None:
            fields["llm_mode"] = _checked_mode(llm_mode)
        on_insert: dict[str, Any] = {"created_at": now, "over_budget": False}
        if counts is None:
            on_insert["counts"] = {}
        with _translated(f"record batch {batch_id}"):
            await self._c("batches").update_one(
                {"_id": batch_id}, {"$set": fields, "$setOnInsert": on_insert}, upsert=True
            )

    async def update_batch(
        self, batch_id: str, *, status: str | None = None, counts: Mapping[str, int] | None = None
    ) -> None:
        fields: dict[str, Any] = {"updated_at": _now()}
        if status is not None:
            fields["status"] = status
        if counts is not None:
            fields["counts"] = dict(counts)
        with _translated(f"update batch {batch_id}"):
            await self._c("batches").update_one({"_id": batch_id}, {"$set": fields})

    async def set_batch_llm_mode(self, batch_id: str, llm_mode: LLMMode) -> bool:
        """Set the LLM mode of a recorded batch (a replay told ``--llm-mode``); False when the
        batch has no record."""
        mode = _checked_mode(llm_mode)
        with _translated(f"set the llm mode of batch {batch_id}"):
            outcome = await self._c("batches").update_one(
                {"_id": batch_id}, {"$set": {"llm_mode": mode, "updated_at": _now()}}
            )
        return outcome.matched_count > 0

    async def mark_batch_llm_cancelled(self, batch_id: str, cancelled: bool) -> bool:
        """Note (or clear) that an operator cancelled the batch's LLM requests
        (``docbus llm-batches cancel`` / ``resume``); False when the batch has no record."""
        stamp = _now() if cancelled else None
        with _translated(f"mark batch {batch_id} cancelled"):
            outcome = await self._c("batches").update_one(
                {"_id": batch_id}, {"$set": {"llm_cancelled_at": stamp, "updated_at": _now()}}
            )
        return outcome.matched_count > 0

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        with _translated(f"read batch {batch_id}"):
            raw = await self._c("batches").find_one({"_id": batch_id})
        return _batch(raw) if raw else None

    async def batch_exists(self, batch_id: str) -> bool:
        """Whether anything knows the batch: its record, a recorded document or a result
        (results written by a library caller may have no batch record)."""
        with _translated(f"look up batch {batch_id}"):
            if await self._c("batches").find_one({"_id": batch_id}, {"_id": 1}) is not None:
                return True
            if await self._c("documents").find_one(batch_documents(batch_id), {"_id": 1}):
                return True
            if await self._c("results").find_one({"batch_id": batch_id}, {"_id": 1}):
                return True
        return False

    async def list_batches(self, limit: int = 50) -> list[BatchRecord]:
        """The most recent batches first."""
        with _translated("list batches"):
            cursor = self._c("batches").find({}).sort("created_at", DESCENDING).limit(limit)
            return [_batch(raw) async for raw in cursor]

    async def add_batch_usage(
        self,
        batch_id: str,
        *,
        usd: float,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        calls: int = 1,
        category: SpendCategory = "first",
    ) -> None:
        """Add one LLM call's (or a sum of calls') cost to the batch's totals.

        ``category`` ``reask`` or ``retry`` also adds it to ``cost.reasks`` / ``cost.retries``,
        so the spend on re-asks and retries can be reported apart. A batch without a record
        (never published) keeps no totals; its ``llm_calls`` rows still hold every figure.
        Increments of the same batch made at the same time by other handlers are summed into
        one ``$inc`` (:mod:`docbus.store._group`); this returns once the sum is acknowledged.
        """
        figures = {
            "usd": usd,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "calls": calls,
        }
        increments = {f"cost.{name}": value for name, value in figures.items()}
        if category != "first":
            group = "reasks" if category == "reask" else "retries"
            increments.update({f"cost.{group}.{name}": value for name, value in figures.items()})
        with _translated(f"add usage to batch {batch_id}"):
            await self._writer("batches", durable=False).increment(batch_id, increments)

    async def llm_usage_by_mode(self, batch_id: str) -> list[dict[str, Any]]:
        """A batch's LLM audit rows summed per handler, step, model and LLM mode
        (``llm_mode``; rows without one were made live): mappings with ``handler``, ``step``,
        ``model``, ``llm_mode``, ``calls``, ``prompt_tokens``, ``completion_tokens`` and
        ``cost_usd``."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id}},
            {
                "$group": {
                    "_id": {
                        "h": "$handler",
                        "s": "$step",
                        "model": "$model",
                        "m": {"$ifNull": ["$llm_mode", "live"]},
                    },
                    "calls": {"$sum": 1},
                    "prompt_tokens": {"$sum": "$prompt_tokens"},
                    "completion_tokens": {"$sum": "$completion_tokens"},
                    "cost_usd": {"$sum": "$cost_usd"},
                }
            },
        ]
        rows = []
        with _translated(f"sum the llm usage of batch {batch_id} by mode"):
            async for raw in await self._c("llm_calls").aggregate(pipeline):
                key = raw["_id"]
                rows.append(
                    {
                        "handler": key.get("h"),
                        "step": key.get("s"),
                        "model": key.get("model"),
                        "llm_mode": str(key.get("m") or "live"),
                        "calls": int(raw.get("calls") or 0),
                        "prompt_tokens": int(raw.get("prompt_tokens") or 0),
                        "completion_tokens": int(raw.get("completion_tokens") or 0),
                        "cost_usd": float(raw.get("cost_usd") or 0.0),
                    }
                )
        return rows

    async def set_batch_over_budget(self, batch_id: str, over_budget: bool) -> None:
        with _translated(f"flag batch {batch_id}"):
            await self._c("batches").update_one(
                {"_id": batch_id}, {"$set": {"over_budget": over_budget, "updated_at": _now()}}
            )

    async def batch_budget(self, batch_id: str) -> BatchBudget | None:
        """A batch's own budget, spend and flag, read cheaply (before every LLM call)."""
        # Every handler asks before each call: reads of the moment share one query.
        finder = self._finder("batches", "_id", _batch_id)
        with _translated(f"read budget of batch {batch_id}"):
            found = await finder.find(batch_id, batch_id)
        if not found:
            return None
        raw = found[0]
        budget = raw.get("budget_usd")
        return BatchBudget(
            budget_usd=float(budget) if budget is not None else None,
            spent_usd=float((raw.get("cost") or {}).get("usd", 0.0)),
            over_budget=bool(raw.get("over_budget")),
        )

    async def batch_llm_mode(self, batch_id: str) -> str | None:
        """The LLM mode a batch was published (or replayed) with, ``live`` or ``batch``;
        None when it has no record or says nothing (then the handler's or the settings' mode
        applies)."""
        with _translated(f"read the llm mode of batch {batch_id}"):
            raw = await self._c("batches").find_one({"_id": batch_id}, {"llm_mode": 1})
        mode = raw.get("llm_mode") if raw else None
        return str(mode) if mode else None

    async def set_batch_budget(self, batch_id: str, usd: float | None) -> BatchRecord | None:
        """Set (``None``: clear) a batch's own LLM budget; returns the updated record.

        A budget above what the batch has spent also clears ``over_budget``, so its parked
        messages may run again.
        """
        if usd is not None and usd < 0:
            raise ValueError("a budget must be zero or positive")
        with _translated(f"set budget of batch {batch_id}"):
            raw = await self._c("batches").find_one_and_update(
                {"_id": batch_id},
                {"$set": {"budget_usd": usd, "updated_at": _now()}},
                return_document=ReturnDocument.AFTER,
            )
            if raw is None:
                return None
            spent = float((raw.get("cost") or {}).get("usd", 0.0))
            if raw.get("over_budget") and (usd is None or spent < usd):
                raw = await self._c("batches").find_one_and_update(
                    {"_id": batch_id},
                    {"$set": {"over_budget": False}},
                    return_document=ReturnDocument.AFTER,
                )
        return _batch(raw) if raw else None

    async def batch_counts(self, batch_id: str, *, handlers: Iterable[str] = ()) -> BatchCounts:
        """Published / done / dead-lettered / pending for a batch, overall and per handler.

        ``handlers`` names handlers expected to process the batch even if none has reported
        yet (without it, only handlers with a result or dead letter in the batch count).
        """
        done: dict[str, set[str]] = {name: set() for name in handlers}
        dead: dict[str, set[str]] = {name: set() for name in done}
        withdrawn: dict[str, set[str]] = {name: set() for name in done}
        with _translated(f"count batch {batch_id}"):
            published = await self._c("documents").count_documents(batch_documents(batch_id))
            for collection, match, into in (
                ("results", {"batch_id": batch_id, "rolled_back": False}, done),
                ("dead_letters", {"batch_id": batch_id}, dead),
                ("results", {"batch_id": batch_id, "rolled_back": True}, withdrawn),
            ):
                pipeline: list[dict[str, Any]] = [
                    {"$match": match},
                    {"$group": {"_id": {"h": "$handler", "d": "$doc_id"}}},
                ]
                async for row in await self._c(collection).aggregate(pipeline):
                    name = row["_id"].get("h")
                    if name is not None:
                        into.setdefault(name, set()).add(row["_id"]["d"])
                        for each in (done, dead, withdrawn):
                            each.setdefault(name, set())
        per_handler: dict[str, HandlerCounts] = {}
        for name in sorted(done):
            unresolved = dead[name] - done[name]
            rolled = withdrawn[name] - done[name] - unresolved
            per_handler[name] = HandlerCounts(
                done=len(done[name]),
                dead_lettered=len(unresolved),
                rolled_back=len(rolled),
                pending=max(0, published - len(done[name]) - len(unresolved) - len(rolled)),
            )
        if done:
            all_done = set.intersection(*done.values())
            any_dead = set.union(*(dead[n] - done[n] for n in done))
            any_rolled = set.union(*(withdrawn[n] - done[n] for n in done)) - any_dead
            n_done, n_dead, n_rolled = len(all_done), len(any_dead), len(any_rolled)
        else:
            n_done = n_dead = n_rolled = 0
        return BatchCounts(
            batch_id=batch_id,
            published=published,
            done=n_done,
            dead_lettered=n_dead,
            rolled_back=n_rolled,
            pending=max(0, published - n_done - n_dead - n_rolled),
            handlers=per_handler,
        )

    async def documents_settled(
        self, batch_id: str, doc_ids: Iterable[str]
    ) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Of the given documents of a batch: (handler → those it has a result for that is not
        rolled back, handler → those it has a dead letter for)."""
        docs = sorted(set(doc_ids))
        done: dict[str, set[str]] = {}
        dead: dict[str, set[str]] = {}
        with _translated(f"read the outcomes of batch {batch_id}"):
            for collection, match, into in (
                ("results", {"batch_id": batch_id, "rolled_back": False}, done),
                ("dead_letters", {"batch_id": batch_id}, dead),
            ):
                cursor = self._c(collection).find(
                    {**match, "doc_id": {"$in": docs}}, {"doc_id": 1, "handler": 1}
                )
                async for raw in cursor:
                    if isinstance(raw.get("handler"), str):
                        into.setdefault(raw["handler"], set()).add(str(raw["doc_id"]))
        return done, dead

    async def last_activity(self, batch_id: str) -> datetime | None:
        """When the latest result or dead letter of a batch was written, if any."""
        latest: list[datetime] = []
        with _translated(f"read the last activity of batch {batch_id}"):
            for collection, stamp in (
                ("results", "written_at"),
                ("dead_letters", "dead_lettered_at"),
            ):
                raw = await self._c(collection).find_one(
                    {"batch_id": batch_id}, {stamp: 1}, sort=[(stamp, -1)]
                )
                if raw is not None and isinstance(raw.get(stamp), datetime):
                    latest.append(raw[stamp])
        return max(latest) if latest else None

    async def finish_times(self, batch_id: str) -> list[datetime]:
        """When each result version and each dead letter of a batch was written, sorted: the
        events a throughput chart counts (:mod:`docbus.ops.timeline`)."""
        times: list[datetime] = []
        with _translated(f"read the finish times of batch {batch_id}"):
            for collection, stamp in (
                ("results", "written_at"),
                ("dead_letters", "dead_lettered_at"),
            ):
                cursor = self._c(collection).find({"batch_id": batch_id}, {stamp: 1, "_id": 0})
                async for raw in cursor:
                    if isinstance(raw.get(stamp), datetime):
                        times.append(raw[stamp])
        return sorted(times)


def _checked_mode(mode: str) -> LLMMode:
    for known in LLM_MODES:
        if mode == known:
            return known
    raise ValueError(f"unknown LLM mode {mode!r}: use one of {', '.join(LLM_MODES)}")


def _batch_id(raw: Mapping[str, Any]) -> Any:
    return raw.get("_id")


def _batch(raw: Mapping[str, Any]) -> BatchRecord:
    return BatchRecord.model_validate({**raw, "id": raw["_id"]})
