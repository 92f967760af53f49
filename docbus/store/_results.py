"""Results: versioned handler outputs that converge on exactly one current version.

A result's ``_id`` is ``handler@message_id``, so a redelivered message finds its earlier write;
versions are unique per (doc_id, handler); and a partial unique index on (doc_id, handler) where
``current`` is true lets at most one version be current. :meth:`ResultsMixin.write_result` then
converges: the version that ranks highest (:func:`docbus.records.result_rank`: when its run was
issued, then its version number) and is not rolled back becomes current, the others are
demoted, and a writer that lost a race re-reads instead of overwriting. Each version keeps the
run that wrote it (a batch's publication or a replay), so :meth:`ResultsMixin.withdraw_results`
can withdraw exactly one run's versions, tagged with the rollback's id, and
:meth:`ResultsMixin.restore_results` can put exactly those back; both converge again. Replay
generations come from :mod:`docbus.store._replays`; the rollback is :mod:`docbus.ops.rollback`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, InsertOne
from pymongo.errors import DuplicateKeyError

from docbus.records import ResultRecord, ResultWrite, result_rank
from docbus.store._base import StoreBase, _now
from docbus.store._errors import StoreError, _translated

# The package's name, not this private module's: the store logged as ``docbus.store`` before
# it was split, and logging configuration keyed on that name must keep working.
logger = logging.getLogger("docbus.store")

_CONVERGE_ATTEMPTS = 20
_VERSION_ATTEMPTS = 20
_IN_CHUNK = 1000
"""Values per ``$in`` (a batch's rollback may name many thousands of versions)."""
_RANKING = {"_id": 1, "issued_at": 1, "written_at": 1, "version": 1, "current": 1, "rolled_back": 1}


def _rank(raw: Mapping[str, Any]) -> tuple[datetime, int]:
    return result_rank(raw.get("issued_at"), raw["written_at"], raw["version"])


def convergence(versions: Iterable[Mapping[str, Any]]) -> tuple[Any | None, list[Any]]:
    """(the id of the version that must be current, the ids of those that must stop being).

    ``versions`` is one (document, handler)'s versions as one reader saw them. Only versions
    in that view are demoted, so a newer version another writer made current since survives a
    stale view (its promotion then fails on the unique index, and the reader looks again).
    """
    seen = list(versions)
    live = [raw for raw in seen if not raw.get("rolled_back")]
    top = max(live, key=_rank)["_id"] if live else None
    demote = [raw["_id"] for raw in seen if raw.get("current") and raw["_id"] != top]
    return top, demote


class ResultsMixin(StoreBase):
    """Write, read, converge, withdraw and restore versioned handler results."""

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
        run_id: str | None = None,
        issued_at: datetime | None = None,
    ) -> ResultWrite:
        """Write a handler's output as a new version, once per (message, handler).

        ``run_id`` and ``issued_at`` name the run that sent the message and when it was
        issued (:attr:`docbus.envelope.Envelope.run` and ``issued_at``); without ``issued_at``
        the version ranks by when it is written. A second write for the same message and
        handler — a redelivery, or a concurrent duplicate — creates nothing and returns the
        first write with ``created=False``. Either way, on return exactly one version of
        (doc_id, handler) is current. The write is durable (:mod:`docbus.store._base`).
        """
        key = f"{handler}@{message_id}"
        results = self._c("results")
        created = False
        now = _now()

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
                "run_id": run_id,
                "issued_at": issued_at or now,
                "output": dict(output),
                "written_at": now,
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
        """Make the top-ranked live version current and every other version not current."""
        results = self._c("results")
        scope = {"doc_id": doc_id, "handler": handler}
        for _ in range(_CONVERGE_ATTEMPTS):
            seen = [raw async for raw in results.find(scope, _RANKING)]
            top, demote = convergence(seen)
            if demote:
                await results.update_many(
                    {"_id": {"$in": demote}, "current": True}, {"$set": {"current": False}}
                )
            if top is None or any(raw["_id"] == top and raw["current"] for raw in seen):
                return
            try:
                promoted = await results.update_one(
                    {"_id": top, "rolled_back": False}, {"$set": {"current": True}}
                )
            except DuplicateKeyError:
                continue  # another version became current meanwhile: look again
            if promoted.matched_count:
                return
            # withdrawn meanwhile: look again
        raise StoreError(f"results of {doc_id}/{handler}: current version did not settle")

    async def current_result(self, doc_id: str, handler: str) -> ResultRecord | None:
        """The current version of a handler's result for a document, if any."""
        scope = {"doc_id": doc_id, "handler": handler, "rolled_back": False}
        with _translated(f"read result {doc_id}/{handler}"):
            raw = await self._c("results").find_one({**scope, "current": True})
            if raw is None:  # mid-convergence: apply the same ranking
                live = [raw async for raw in self._c("results").find(scope)]
                raw = max(live, key=_rank) if live else None
        return _result(raw) if raw else None

    async def result_history(self, doc_id: str, handler: str) -> list[ResultRecord]:
        """Every version of a handler's result for a document, oldest first."""
        with _translated(f"read result history {doc_id}/{handler}"):
            cursor = self._c("results").find({"doc_id": doc_id, "handler": handler})
            return [_result(raw) async for raw in cursor.sort("version", ASCENDING)]

    async def result_versions(
        self,
        *,
        doc_id: str | None = None,
        handler: str | None = None,
        batch_id: str | None = None,
        min_generation: int | None = None,
        include_rolled_back: bool = True,
        doc_ids: Collection[str] | None = None,
        rolled_back_by: str | None = None,
    ) -> list[ResultRecord]:
        """Result versions matching every filter given, by document, handler and version.

        ``doc_ids``: versions of any of these documents; ``rolled_back_by``: the versions
        that rollback withdrew (and that are still withdrawn).
        """
        query: dict[str, Any] = {}
        for field, value in (
            ("doc_id", doc_id),
            ("handler", handler),
            ("batch_id", batch_id),
            ("rolled_back_by", rolled_back_by),
        ):
            if value is not None:
                query[field] = value
        if min_generation is not None:
            query["generation"] = {"$gte": min_generation}
        if not include_rolled_back:
            query["rolled_back"] = False
        wanted = sorted(set(doc_ids)) if doc_ids is not None else None
        found: list[ResultRecord] = []
        with _translated("read result versions"):
            for chunk in _chunks(wanted) if wanted is not None else [None]:
                selector = query if chunk is None else {**query, "doc_id": {"$in": chunk}}
                found.extend([_result(raw) async for raw in self._c("results").find(selector)])
        return sorted(found, key=lambda r: (r.doc_id, r.handler, r.version))

    async def run_result_versions(
        self,
        run_ids: Collection[str] = (),
        *,
        batch_id: str | None = None,
        publish_of: str | None = None,
        legacy_message_ids: Collection[str] = (),
        handler: str | None = None,
        include_rolled_back: bool = False,
    ) -> list[ResultRecord]:
        """The result versions the runs ``run_ids`` wrote, by document, handler and version.

        ``batch_id`` keeps only that batch's versions (a dead-letter replay may span batches).
        Versions written before runs were named are found too: ``publish_of`` B adds B's
        generation-0 versions, ``legacy_message_ids`` those written for these messages.
        """
        base: dict[str, Any] = {}
        if batch_id is not None:
            base["batch_id"] = batch_id
        if handler is not None:
            base["handler"] = handler
        if not include_rolled_back:
            base["rolled_back"] = False
        selectors: list[dict[str, Any]] = []
        if run_ids:
            selectors.append({**base, "run_id": {"$in": sorted(set(run_ids))}})
        if publish_of is not None:
            selectors.append({**base, "batch_id": publish_of, "generation": 0, "run_id": None})
        for chunk in _chunks(sorted(set(legacy_message_ids))):
            selectors.append({**base, "message_id": {"$in": chunk}, "run_id": None})
        found: dict[str, ResultRecord] = {}
        with _translated("read the result versions of a run"):
            for selector in selectors:
                async for raw in self._c("results").find(selector):
                    found[raw["_id"]] = _result(raw)
        return sorted(found.values(), key=lambda r: (r.doc_id, r.handler, r.version))

    async def withdraw_results(
        self, version_ids: Collection[str], rollback_id: str
    ) -> list[ResultRecord]:
        """Mark these result versions rolled back by ``rollback_id`` (those not already
        rolled back); each affected document's highest-ranked remaining version becomes
        current. Returns the versions this call withdrew, as they are now."""
        return await self._flip(
            [{"_id": {"$in": chunk}} for chunk in _chunks(sorted(set(version_ids)))],
            {"rolled_back": False},
            {"$set": {"rolled_back": True, "current": False, "rolled_back_by": rollback_id,
                      "rolled_back_at": _now()}},
            lambda record: record.rolled_back_by == rollback_id,
            f"roll back results ({rollback_id})",
        )  # fmt: skip

    async def restore_results(self, rollback_id: str) -> list[ResultRecord]:
        """Put back every version ``rollback_id`` withdrew (and nothing else), converging each
        affected document again. Returns the versions restored, as they are now."""
        return await self._flip(
            [{}],
            {"rolled_back_by": rollback_id, "rolled_back": True},
            {
                "$set": {"rolled_back": False},
                "$unset": {"rolled_back_by": "", "rolled_back_at": ""},
            },
            lambda record: not record.rolled_back,
            f"restore the results rolled back by {rollback_id}",
        )

    async def _flip(
        self,
        selectors: Sequence[dict[str, Any]],
        condition: dict[str, Any],
        change: dict[str, Any],
        changed_here: Callable[[ResultRecord], bool],
        operation: str,
    ) -> list[ResultRecord]:
        """Apply ``change`` to the versions ``selectors`` pick that meet ``condition``, then
        converge their documents; the versions returned are those ``changed_here`` (a
        concurrent run may have flipped one of them first)."""
        results = self._c("results")
        with _translated(operation):
            ids: list[str] = []
            for selector in selectors:
                cursor = results.find({**selector, **condition}, {"_id": 1})
                ids.extend([raw["_id"] async for raw in cursor])
            for chunk in _chunks(ids):
                await results.update_many({**condition, "_id": {"$in": chunk}}, change)
            for doc_id, handler in sorted({(r.doc_id, r.handler) for r in await self._by_ids(ids)}):
                await self._converge(doc_id, handler)
            changed = [record for record in await self._by_ids(ids) if changed_here(record)]
        logger.info("%s: %d result version(s)", operation, len(changed))
        return changed

    async def _by_ids(self, ids: Sequence[str]) -> list[ResultRecord]:
        found: list[ResultRecord] = []
        for chunk in _chunks(ids):
            cursor = self._c("results").find({"_id": {"$in": chunk}})
            found.extend([_result(raw) async for raw in cursor])
        return sorted(found, key=lambda r: (r.doc_id, r.handler, r.version))


def _chunks(values: Sequence[Any]) -> list[list[Any]]:
    return [list(values[i : i + _IN_CHUNK]) for i in range(0, len(values), _IN_CHUNK)]


def _result(raw: Mapping[str, Any]) -> ResultRecord:
    return ResultRecord.model_validate({**raw, "id": raw["_id"]})
