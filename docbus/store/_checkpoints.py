"""Checkpoints: stored step outputs, so a redelivered message resumes where it stopped.

:class:`CheckpointsMixin` keeps the ``checkpoints`` collection, one output per
:class:`docbus.records.CheckpointKey` (document, handler and version, step and input hash),
where the first write wins; :class:`Checkpoint` is what it returns. The steps that write them
are in :mod:`handlers.steps`; the LLM calls they make are audited by :mod:`docbus.store._llm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from pymongo import InsertOne, ReplaceOne
from pymongo.errors import DuplicateKeyError

from docbus.records import CheckpointKey
from docbus.store._base import StoreBase, _now
from docbus.store._errors import _translated


class Checkpoint(NamedTuple):
    """A stored step output."""

    output: Any
    created_at: datetime


class StoredStep(NamedTuple):
    """A stored step output with whose it is, as a document's lineage lists it."""

    handler: str
    handler_version: str
    step: str
    created_at: datetime
    output: Any


class CheckpointsMixin(StoreBase):
    """Step outputs by checkpoint key."""

    async def get_checkpoint(self, key: CheckpointKey) -> Checkpoint | None:
        """One step's stored output, read together with the other deliveries' reads of the
        moment (a batch round re-runs thousands of deliveries, each asking for its waiting
        step once)."""
        finder = self._finder("checkpoints", "_id", _id_of)
        with _translated(f"read checkpoint {key.step}"):
            found = await finder.find(key.id, key.id)
        return Checkpoint(found[0]["output"], found[0]["created_at"]) if found else None

    async def checkpoints_of(
        self, doc_id: str, handler: str, handler_version: str
    ) -> dict[str, Checkpoint]:
        """Every stored step output of one document under one handler version, by key id:
        one query per delivery instead of one per step, and one command for the deliveries
        that ask at the same time (:mod:`docbus.store._group`)."""
        finder = self._finder("checkpoints", "doc_id", _owner)
        with _translated(f"read checkpoints of {doc_id}"):
            found = await finder.find(
                (doc_id, handler, handler_version),
                doc_id,
                {"handler": handler, "handler_version": handler_version},
            )
        return {raw["_id"]: Checkpoint(raw["output"], raw["created_at"]) for raw in found}

    async def document_steps(self, doc_id: str) -> list[StoredStep]:
        """Every stored step output of a document, under any handler and version, oldest
        first."""
        with _translated(f"read the steps of {doc_id}"):
            cursor = self._c("checkpoints").find({"doc_id": doc_id}).sort("created_at", 1)
            return [
                StoredStep(
                    str(raw.get("handler")),
                    str(raw.get("handler_version")),
                    str(raw.get("step")),
                    raw["created_at"],
                    raw.get("output"),
                )
                async for raw in cursor
            ]

    async def put_checkpoint(
        self,
        key: CheckpointKey,
        output: Any,
        *,
        batch_id: str | None = None,
        replace: bool = False,
    ) -> bool:
        """Store a step's output; the first write wins. Returns True if this call stored it.

        ``replace`` overwrites an existing output (for one that can no longer be loaded).
        Checkpoints written at the same time by other handlers go in the same command; this
        returns once this one is acknowledged.
        """
        fields = {
            "doc_id": key.doc_id,
            "handler": key.handler,
            "handler_version": key.handler_version,
            "step": key.step,
            "input_hash": key.input_hash,
            "batch_id": batch_id,
            "output": output,
            "created_at": _now(),
        }
        writer = self._writer("checkpoints", durable=False)
        with _translated(f"write checkpoint {key.step}"):
            if replace:
                await writer.write(ReplaceOne({"_id": key.id}, fields, upsert=True))
                return True
            try:
                # An insert, not an upsert: the same outcome (the _id index lets the first
                # write win) for half of SecantusDB's work per checkpoint.
                await writer.write(InsertOne({"_id": key.id, **fields}))
            except DuplicateKeyError:
                return False
            return True


def _id_of(raw: Mapping[str, Any]) -> Any:
    return raw["_id"]


def _owner(raw: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """Whose checkpoint a stored one is: (document, handler, handler version)."""
    return raw.get("doc_id"), raw.get("handler"), raw.get("handler_version")
