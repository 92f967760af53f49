"""Results: versioned handler outputs that converge on exactly one current version.

A result's ``_id`` is ``handler@message_id``, so a redelivered message finds its earlier write;
versions are unique per (doc_id, handler); and a partial unique index on (doc_id, handler) where
``current`` is true lets at most one version be current. :meth:`ResultsMixin.write_result` then
converges: the highest (generation, version) that is not rolled back becomes current, lower ones
are demoted, and a writer that lost a race re-reads instead of overwriting. Rollbacks withdraw
versions and converge again; replay generations come from :mod:`docbus.store._replays`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING, InsertOne
from pymongo.errors import DuplicateKeyError

from docbus.records import ResultRecord, ResultWrite
from docbus.store._base import StoreBase, _now
from docbus.store._errors import StoreError, _translated

# The package's name, not this private module's: the store logged as ``docbus.store`` before
# it was split, and logging configuration keyed on that name must keep working.
logger = logging.getLogger("docbus.store")

_CONVERGE_ATTEMPTS = 20
_VERSION_ATTEMPTS = 20


class ResultsMixin(StoreBase):
    """Write, read, converge and roll back versioned handler results."""

    async def write_result(
        self,
        *,
        doc_id: str,
        handler: str,
        handler_version: str,
        batch_id: str,
        message_id: str,
        output: Mapping[str, Any],
        generation: int = 0,
        delivery_count: int | None = None,
    ) -> ResultWrite:
        """Write a handler's output as a new version, once per (message, handler).

        A second write for the same message and handler — a redelivery, or a concurrent
        duplicate — creates nothing and returns the first write with ``created=False``.
        Either way, on return exactly one version of (doc_id, handler) is current.
        """
        key = f"{handler}@{message_id}"
        results = self._c("results")
        created = False

        def version(number: int) -> dict[str, Any]:
            return {
                "_id": key,
                "doc_id": doc_id,
                "handler": handler,
                "handler_version": handler_version,
                "version": number,
                # The first version of a document can be current at once: the partial
                # unique index on current versions refuses a concurrent second one.
                "current": number == 1,
                "rolled_back": False,
                "batch_id": batch_id,
                "generation": generation,
                "message_id": message_id,
                "output": dict(output),
                "written_at": _now(),
                "delivery_count": delivery_count,
            }

        with _translated(f"write result {key}"):
            # Most writes are a document's first version: try that in one (grouped) insert.
            # The unique indexes refuse it if this message wrote before (same _id), if the
            # document has a version already, or if one is current; then go the careful way.
            first = version(1)
            try:
                await self._writer("results").write(InsertOne(first))
            except DuplicateKeyError:
                pass
            else:
                return ResultWrite(_result(first), True)
            for _ in range(_VERSION_ATTEMPTS):
                existing = await results.find_one({"_id": key})
                if existing is not None:
                    break
                last = await results.find_one(
                    {"doc_id": doc_id, "handler": handler}, sort=[("version", DESCENDING)]
                )
                record = version(last["version"] + 1 if last else 1)
                try:
                    await results.insert_one(record)
                except DuplicateKeyError:
                    continue  # same key written concurrently, or the version number was taken
                created = True
                if record["current"]:
                    return ResultWrite(_result(record), created)
                break
            else:
                raise StoreError(f"write result {key}: no free version number after retries")
            await self._converge(doc_id, handler)
            stored = await results.find_one({"_id": key})
        if stored is None:  # pragma: no cover - deleted behind our back
            raise StoreError(f"write result {key}: record vanished")
        return ResultWrite(_result(stored), created)

    async def has_result(self, handler: str, message_id: str) -> bool:
        """Whether a delivery of ``message_id`` stored a result for ``handler`` already."""
        key = f"{handler}@{message_id}"
        with _translated(f"read result {key}"):
            return await self._c("results").find_one({"_id": key}, {"_id": 1}) is not None

    async def _converge(self, doc_id: str, handler: str) -> None:
        """Make the top (generation, version) current and every other version not current."""
        results = self._c("results")
        scope = {"doc_id": doc_id, "handler": handler}
        for _ in range(_CONVERGE_ATTEMPTS):
            top = await results.find_one(
                {**scope, "rolled_back": False},
                sort=[("generation", DESCENDING), ("version", DESCENDING)],
            )
            if top is None:
                await results.update_many({**scope, "current": True}, {"$set": {"current": False}})
                return
            if top["current"]:
                return
            # Demote only what ranks below our top: a newer version made current by a
            # concurrent writer must survive our stale view.
            await results.update_many(
                {**scope, "current": True, **_ranked_below(top)}, {"$set": {"current": False}}
            )
            try:
                await results.update_one(
                    {"_id": top["_id"], "rolled_back": False}, {"$set": {"current": True}}
                )
            except DuplicateKeyError:
                continue  # another version became current meanwhile: look again
        raise StoreError(f"results of {doc_id}/{handler}: current version did not settle")

    async def current_result(self, doc_id: str, handler: str) -> ResultRecord | None:
        """The current version of a handler's result for a document, if any."""
        scope = {"doc_id": doc_id, "handler": handler, "rolled_back": False}
        with _translated(f"read result {doc_id}/{handler}"):
            raw = await self._c("results").find_one({**scope, "current": True})
            if raw is None:  # mid-convergence: apply the same ranking
                raw = await self._c("results").find_one(
                    scope, sort=[("generation", DESCENDING), ("version", DESCENDING)]
                )
        return _result(raw) if raw else None

    async def result_history(self, doc_id: str, handler: str) -> list[ResultRecord]:
        """Every version of a handler's result for a document, oldest first."""
        with _translated(f"read result history {doc_id}/{handler}"):
            cursor = self._c("results").find({"doc_id": doc_id, "handler": handler})
            return [_result(raw) async for raw in cursor.sort("version", ASCENDING)]

    async def rollback_results(
        self, batch_id: str, *, generation: int | None = None, handler: str | None = None
    ) -> int:
        """Withdraw a batch's results (optionally one replay generation and up, one handler).

        Each affected document's previous version becomes current again. Returns how many
        result versions were rolled back.
        """
        query: dict[str, Any] = {"batch_id": batch_id, "rolled_back": False}
        if generation is not None:
            query["generation"] = {"$gte": generation}
        if handler is not None:
            query["handler"] = handler
        results = self._c("results")
        with _translated(f"roll back batch {batch_id}"):
            affected = {
                (raw["doc_id"], raw["handler"])
                async for raw in results.find(query, {"doc_id": 1, "handler": 1})
            }
            outcome = await results.update_many(
                query, {"$set": {"rolled_back": True, "current": False}}
            )
            for doc_id, name in sorted(affected):
                await self._converge(doc_id, name)
        logger.info("rolled back %d results of batch %s", outcome.modified_count, batch_id)
        return outcome.modified_count

    async def result_versions(
        self,
        *,
        doc_id: str | None = None,
        handler: str | None = None,
        batch_id: str | None = None,
        min_generation: int | None = None,
        include_rolled_back: bool = True,
    ) -> list[ResultRecord]:
        """Result versions matching every filter given, by document, handler and version."""
        query: dict[str, Any] = {}
        for field, value in (("doc_id", doc_id), ("handler", handler), ("batch_id", batch_id)):
            if value is not None:
                query[field] = value
        if min_generation is not None:
            query["generation"] = {"$gte": min_generation}
        if not include_rolled_back:
            query["rolled_back"] = False
        order = [("doc_id", ASCENDING), ("handler", ASCENDING), ("version", ASCENDING)]
        with _translated("read result versions"):
            cursor = self._c("results").find(query).sort(order)
            return [_result(raw) async for raw in cursor]


def _ranked_below(top: Mapping[str, Any]) -> dict[str, Any]:
    """The filter for result versions that rank below ``top`` (or are rolled back)."""
    generation, version = top["generation"], top["version"]
    return {
        "$or": [
            {"generation": {"$lt": generation}},
            {"generation": generation, "version": {"$lt": version}},
            {"rolled_back": True},
        ]
    }


def _result(raw: Mapping[str, Any]) -> ResultRecord:
    return ResultRecord.model_validate({**raw, "id": raw["_id"]})
