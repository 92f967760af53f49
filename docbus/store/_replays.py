"""Replays: each document's replay generations and the audit records of replay and rollback runs.

:class:`ReplaysMixin` allocates a document's next generation (one above any seen in
``generations``, ``results`` or ``dead_letters``, atomically per document) and keeps one
``replays`` or ``rollbacks`` record per run (a rollback's undo is a run of its own). The
replay tooling (:mod:`publisher.replay`, :mod:`docbus.cli.rollback`) drives it; results' own
versions are in :mod:`docbus.store._results`.
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, ReturnDocument

from docbus.records import ReplayRecord, RollbackRecord
from docbus.store._base import StoreBase
from docbus.store._errors import StoreError, _translated


class ReplaysMixin(StoreBase):
    """Replay generations, and replay and rollback audit records."""

    async def known_generation(self, batch_id: str, doc_id: str) -> int:
        """The highest replay generation of a document that anything has seen (0 if none)."""
        scope = {"batch_id": batch_id, "doc_id": doc_id}
        with _translated(f"read generation of {batch_id}:{doc_id}"):
            known = [0]
            raw = await self._c("generations").find_one({"_id": f"{batch_id}:{doc_id}"})
            if raw is not None:
                known.append(int(raw.get("last", 0)))
            for collection in ("results", "dead_letters"):
                top = await self._c(collection).find_one(
                    {**scope, "generation": {"$ne": None}},
                    {"generation": 1},
                    sort=[("generation", DESCENDING)],
                )
                if top is not None and isinstance(top.get("generation"), int):
                    known.append(top["generation"])
        return max(known)

    async def next_generation(self, batch_id: str, doc_id: str) -> int:
        """Allocate the document's next replay generation: one above every one known.

        Concurrent callers get distinct generations (one atomic counter per document).
        """
        key = f"{batch_id}:{doc_id}"
        known = await self.known_generation(batch_id, doc_id)
        counters = self._c("generations")
        with _translated(f"allocate generation of {key}"):
            await counters.update_one({"_id": key}, {"$max": {"last": known}}, upsert=True)
            raw = await counters.find_one_and_update(
                {"_id": key}, {"$inc": {"last": 1}}, return_document=ReturnDocument.AFTER
            )
        if raw is None:  # pragma: no cover - deleted behind our back
            raise StoreError(f"allocate generation of {key}: counter vanished")
        return int(raw["last"])

    async def record_replay(self, record: ReplayRecord) -> None:
        """Keep (or update) the audit record of one replay run."""
        await self._keep("replays", record)

    async def get_replay(self, replay_id: str) -> ReplayRecord | None:
        with _translated(f"read replay {replay_id}"):
            raw = await self._c("replays").find_one({"_id": replay_id})
        return ReplayRecord.model_validate({**raw, "id": raw["_id"]}) if raw else None

    async def replays_of_batch(self, batch_id: str) -> list[ReplayRecord]:
        """The replay runs that sent documents of a batch (or were asked to), oldest first."""
        query = {"$or": [{"items.batch_id": batch_id}, {"filters.batch_id": batch_id}]}
        with _translated(f"read replays of {batch_id}"):
            cursor = self._c("replays").find(query).sort("started_at", ASCENDING)
            return [ReplayRecord.model_validate({**raw, "id": raw["_id"]}) async for raw in cursor]

    async def record_rollback(self, record: RollbackRecord) -> None:
        """Keep (or update) the audit record of one rollback or undo run."""
        await self._keep("rollbacks", record)

    async def _keep(self, collection: str, record: ReplayRecord | RollbackRecord) -> None:
        fields = record.model_dump(mode="python", exclude={"id"})
        with _translated(f"record {record.id} in {collection}"):
            await self._c(collection).replace_one(
                {"_id": record.id}, {"_id": record.id, **fields}, upsert=True
            )

    async def get_rollback(self, rollback_id: str) -> RollbackRecord | None:
        with _translated(f"read rollback {rollback_id}"):
            raw = await self._c("rollbacks").find_one({"_id": rollback_id})
        return RollbackRecord.model_validate({**raw, "id": raw["_id"]}) if raw else None
