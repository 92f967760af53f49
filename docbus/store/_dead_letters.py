"""Dead letters: the Mongo copy of every dead-lettered message, and its replay bookkeeping.

:class:`DeadLettersMixin` records each dead letter once per (message, subscription), selects them
for the DLQ tools and replay (:class:`DeadLetterFilter`), claims and releases one for replay so two
replays never both send it, and sums a batch's unresolved dead letters by reason (reading
``results`` to leave out those done since). Batch progress counts are in
:mod:`docbus.store._batches`; the record shape is :class:`docbus.records.DeadLetterRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from pymongo import ASCENDING

from docbus.records import DeadLetterRecord
from docbus.store._base import StoreBase, _now
from docbus.store._errors import _translated


@dataclass(frozen=True)
class DeadLetterFilter:
    """A selection of dead letters, as ``docbus dlq list`` and ``docbus replay`` take it;
    ``None`` fields do not filter."""

    batch_id: str | None = None
    reason: str | None = None
    handler: str | None = None
    topic: str | None = None
    subscription: str | None = None
    doc_id: str | None = None
    since: datetime | None = None
    """Dead-lettered at or after this time."""
    until: datetime | None = None
    """Dead-lettered before this time."""
    replayed: bool | None = None
    """True: only dead letters replayed already; False: only those never replayed."""
    include_resolved: bool = False
    """Also the resolved ones (their message got a result after all): not dead, so the DLQ
    tools and replay leave them out."""

    def describe(self) -> dict[str, Any]:
        """The filters that are set, JSON-able (for audit records and headings)."""
        return {
            item.name: value.isoformat() if isinstance(value, datetime) else value
            for item in fields(self)
            if (value := getattr(self, item.name)) is not None and item.name != "include_resolved"
        }

    def query(self) -> dict[str, Any]:
        """The MongoDB query of this selection."""
        query: dict[str, Any] = {} if self.include_resolved else {"resolved_at": None}
        for field, value in (
            ("batch_id", self.batch_id),
            ("handler", self.handler),
            ("subscription", self.subscription),
            ("reason", self.reason),
            ("topic", self.topic),
            ("doc_id", self.doc_id),
        ):
            if value is not None:
                query[field] = value
        if self.replayed is not None:
            query["replayed_at"] = {"$ne": None} if self.replayed else None
        if self.since is not None or self.until is not None:
            window: dict[str, datetime] = {}
            if self.since is not None:
                window["$gte"] = self.since
            if self.until is not None:
                window["$lt"] = self.until
            query["dead_lettered_at"] = window
        return query


class DeadLettersMixin(StoreBase):
    """Dead-letter records, their filters and their replay claims."""

    async def record_dead_letter(self, record: DeadLetterRecord) -> bool:
        """Keep the Mongo copy of a dead letter; once per (message, subscription).

        Returns True if this call created the record. If its handler already has a result for
        the same message, the record is marked resolved (``resolved_at``): a delivery whose
        lock was lost finished after all, and the document is done, not dead. The record is
        written before the result is looked for, and :meth:`resolve_dead_letters` runs after
        a result is written, so whichever of the two comes second sees the other.
        """
        fields = record.model_dump(mode="python")
        with _translated(f"record dead letter {record.id}"):
            outcome = await self._c("dead_letters").update_one(
                {"_id": record.id}, {"$setOnInsert": fields}, upsert=True
            )
            if record.handler is not None and record.batch_id is not None:
                done = await self._c("results").find_one(
                    {
                        "doc_id": record.doc_id,
                        "handler": record.handler,
                        "batch_id": record.batch_id,
                        "generation": record.generation or 0,
                    },
                    {"_id": 1},
                )
                if done is not None:
                    await self._c("dead_letters").update_one(
                        {"_id": record.id, "resolved_at": None}, {"$set": {"resolved_at": _now()}}
                    )
        return outcome.upserted_id is not None

    async def resolve_dead_letters(
        self, *, handler: str, batch_id: str, doc_id: str, generation: int = 0
    ) -> int:
        """Mark resolved the unresolved dead letters of ``handler`` for one message (batch,
        document, generation), now that a result for it is stored; returns how many."""
        with _translated(f"resolve dead letters of {batch_id}/{doc_id}"):
            outcome = await self._c("dead_letters").update_many(
                {
                    "batch_id": batch_id,
                    "handler": handler,
                    "doc_id": doc_id,
                    "generation": generation,
                    "resolved_at": None,
                },
                {"$set": {"resolved_at": _now()}},
            )
        return outcome.modified_count

    async def dead_letters(
        self, where: DeadLetterFilter | None = None, *, limit: int = 0
    ) -> list[DeadLetterRecord]:
        """The dead letters ``where`` selects (default: every unresolved one), oldest first
        (``limit`` 0: all)."""
        query = (where or DeadLetterFilter()).query()
        with _translated("read dead letters"):
            cursor = self._c("dead_letters").find(query).sort("dead_lettered_at", ASCENDING)
            if limit:
                cursor = cursor.limit(limit)
            return [DeadLetterRecord.model_validate(raw) async for raw in cursor]

    async def dead_letter_handlers(self, batch_id: str) -> dict[str, str]:
        """Subscription → the handler a batch's dead letters name for it (dead letters the
        broker made name none; a record written by a worker does)."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id, "handler": {"$type": "string"}}},
            {"$group": {"_id": {"s": "$subscription", "h": "$handler"}}},
        ]
        names: dict[str, str] = {}
        with _translated(f"read the handlers of batch {batch_id}'s dead letters"):
            async for pair in await self._c("dead_letters").aggregate(pipeline):
                names[str(pair["_id"].get("s"))] = str(pair["_id"].get("h"))
        return names

    async def mark_dead_letter_replayed(
        self, record: DeadLetterRecord, when: datetime | None = None
    ) -> None:
        with _translated(f"mark dead letter {record.id} replayed"):
            await self._c("dead_letters").update_one(
                {"_id": record.id}, {"$set": {"replayed_at": when or _now()}}
            )

    async def get_dead_letter(self, record_id: str) -> DeadLetterRecord | None:
        """One dead letter by its id (``subscription@message_id``)."""
        with _translated(f"read dead letter {record_id}"):
            raw = await self._c("dead_letters").find_one({"_id": record_id})
        return DeadLetterRecord.model_validate(raw) if raw else None

    async def claim_dead_letter_replay(
        self, record: DeadLetterRecord, when: datetime | None = None
    ) -> bool:
        """Mark a dead letter replayed unless someone else did since ``record`` was read.

        Returns True if this call claimed it: two replays running at once never both send it.
        """
        with _translated(f"claim dead letter {record.id} for replay"):
            outcome = await self._c("dead_letters").update_one(
                {"_id": record.id, "replayed_at": record.replayed_at},
                {"$set": {"replayed_at": when or _now()}},
            )
        return outcome.modified_count == 1

    async def release_dead_letter_replay(self, record: DeadLetterRecord, claimed: datetime) -> None:
        """Undo :meth:`claim_dead_letter_replay` (the message could not be sent after all)."""
        with _translated(f"release dead letter {record.id}"):
            await self._c("dead_letters").update_one(
                {"_id": record.id, "replayed_at": claimed},
                {"$set": {"replayed_at": record.replayed_at}},
            )

    async def dead_letter_reasons(self, batch_id: str) -> dict[str, dict[str, int]]:
        """Handler → reason → documents dead-lettered and not done since, for a batch.

        A document counts once per handler, under the reason of its latest dead letter, and
        not at all once the handler has a result for it: the counts per handler add up to
        :meth:`batch_counts`' ``dead_lettered``.
        """
        latest: dict[str, dict[str, str]] = {}
        done: dict[str, set[str]] = {}
        dead_pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id}},
            {"$sort": {"dead_lettered_at": ASCENDING}},
            {"$group": {"_id": {"h": "$handler", "d": "$doc_id"}, "reason": {"$last": "$reason"}}},
        ]
        done_pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id, "rolled_back": False}},
            {"$group": {"_id": {"h": "$handler", "d": "$doc_id"}}},
        ]
        with _translated(f"read dead-letter reasons of {batch_id}"):
            async for row in await self._c("dead_letters").aggregate(dead_pipeline):
                name = row["_id"].get("h")
                if name is not None:
                    latest.setdefault(name, {})[row["_id"].get("d")] = str(row["reason"])
            async for row in await self._c("results").aggregate(done_pipeline):
                name = row["_id"].get("h")
                if name in latest:
                    done.setdefault(name, set()).add(row["_id"].get("d"))
        reasons: dict[str, dict[str, int]] = {}
        for name in sorted(latest):
            counts: dict[str, int] = {}
            finished = done.get(name, set())
            for doc_id, reason in latest[name].items():
                if doc_id not in finished:
                    counts[reason] = counts.get(reason, 0) + 1
            if counts:
                reasons[name] = dict(sorted(counts.items()))
        return reasons
