"""Results: insert-only handler outputs; which version is current is worked out when read.

A result's ``_id`` is ``handler@message_id``, so a redelivered message (or a concurrent duplicate
of it) finds its earlier write: the insert is refused and nothing else is stored. Nothing stored is
ever changed by a write: a re-run of a document that has results (a nightly re-run under a new
batch, a replay) is one more insert, exactly what a fresh document costs, at any size of
``results`` — an update costs the server several times an insert (every index entry rewritten),
which made re-processing cost twice a first run when a re-run demoted the old current version.

Which version is *current* is derived, never stored: of one (document, handler)'s versions not
rolled back, the one that ranks highest (:func:`docbus.records.result_rank`: when its run was
issued, then when it was written). So there is exactly one by construction — no flag to keep
unique, no window between a demotion and a promotion, nothing a crash can leave half done.
Version numbers are worked out the same way: a document's versions counted in the order they
were written. Readers therefore read every version of the documents they report on
(:meth:`ResultsMixin._records`); for ad-hoc queries :meth:`StoreBase.ensure_indexes` keeps a view,
``current_results``, holding the current versions.

Each version keeps the run that wrote it (a batch's publication or a replay), so
:meth:`ResultsMixin.withdraw_results` can withdraw exactly one run's versions, tagged with the
rollback's id, and :meth:`ResultsMixin.restore_results` can put exactly those back: the only
updates results ever see, made by an operator. Replay generations come from
:mod:`docbus.store._replays`; the rollback is :mod:`docbus.ops.rollback`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, InsertOne
from pymongo.errors import DuplicateKeyError

from docbus.records import ResultRecord, ResultWrite, result_rank
from docbus.store._base import StoreBase, _now, in_slices
from docbus.store._errors import StoreError, _translated

# The package's name, not this private module's: the store logged as ``docbus.store`` before
# it was split, and logging configuration keyed on that name must keep working.
logger = logging.getLogger("docbus.store")

_EXPORT_PAGE = 500
"""Documents an export works out at once (it reads their versions from other batches)."""
_RANGE_SLACK = 10
"""Versions per wanted document a range read may return before ``$in`` is used instead."""
_RANKING = {"_id": 1, "doc_id": 1, "handler": 1, "issued_at": 1, "written_at": 1, "rolled_back": 1}
"""What numbering and ranking a document's versions needs of each."""


def _rank(raw: Mapping[str, Any]) -> tuple[datetime, datetime, str]:
    return result_rank(raw.get("issued_at"), raw["written_at"], raw["_id"])


def standing(versions: Iterable[Mapping[str, Any]]) -> dict[Any, tuple[int, bool]]:
    """Each version's (number, whether it is current), for every version of the (document,
    handler) pairs ``versions`` holds — all of them, or the numbers and the choice are wrong.

    Numbers count a document's versions in the order they were written (as the numbers stored
    before results were insert-only were given); the current one is the highest-ranked version
    not rolled back (:func:`docbus.records.result_rank`), if there is one.
    """
    owners: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for raw in versions:
        owners.setdefault((raw["doc_id"], raw["handler"]), []).append(raw)
    found: dict[Any, tuple[int, bool]] = {}
    for owned in owners.values():
        owned.sort(key=lambda raw: (raw["written_at"], raw["_id"]))
        live = [raw for raw in owned if not raw.get("rolled_back")]
        top = max(live, key=_rank)["_id"] if live else None
        for number, raw in enumerate(owned, start=1):
            found[raw["_id"]] = (number, raw["_id"] == top)
    return found


class ResultsMixin(StoreBase):
    """Write, read, withdraw and restore versioned handler results."""

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
        """Store a handler's output as a new version, once per (message, handler): one
        (grouped) insert, whatever versions the document has.

        ``run_id`` and ``issued_at`` name the run that sent the message and when it was
        issued (:attr:`docbus.envelope.Envelope.run` and ``issued_at``); without ``issued_at``
        the version ranks by when it is written. A second write for the same message and
        handler — a redelivery, or a concurrent duplicate — stores nothing and returns
        ``created=False``. The write is durable (:mod:`docbus.store._base`).
        """
        key = f"{handler}@{message_id}"
        now = _now()
        record = {
            "_id": key,
            "doc_id": doc_id,
            "handler": handler,
            "handler_version": handler_version,
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
            try:
                await self._writer("results").write(InsertOne(record))
            except DuplicateKeyError as exc:
                if not await self._refused_as_written(key, exc):
                    raise StoreError(
                        f"write result {key}: refused by the results index "
                        f"{_index_of(exc)} of an older docbus; run `docbus worker` once (or "
                        "Store.ensure_indexes()), which replaces it"
                    ) from exc
                return ResultWrite(key, False)
        return ResultWrite(key, True)

    async def _refused_as_written(self, key: str, exc: DuplicateKeyError) -> bool:
        """Whether a refused result insert is this message's earlier write (a redelivery),
        not a unique index that ``ensure_indexes`` has not replaced yet — which would lose
        the result if taken for one."""
        pattern = (exc.details or {}).get("keyPattern")
        if pattern is not None and dict(pattern) == {"_id": 1}:
            return True
        # another index, or a server that does not say which: look
        return await self._c("results").find_one({"_id": key}, {"_id": 1}) is not None

    async def has_result(self, handler: str, message_id: str) -> bool:
        """Whether a delivery of ``message_id`` stored a result for ``handler`` already."""
        key = f"{handler}@{message_id}"
        with _translated(f"read result {key}"):
            return await self._c("results").find_one({"_id": key}, {"_id": 1}) is not None

    async def current_result(self, doc_id: str, handler: str) -> ResultRecord | None:
        """The current version of a handler's result for a document, if any."""
        history = await self.result_history(doc_id, handler)
        return next((record for record in history if record.current), None)

    async def iter_current_results(
        self, handler: str, *, batch_id: str | None = None
    ) -> AsyncIterator[ResultRecord]:
        """The current version of every document a handler finished (whose current version
        is of one batch), by document id, read a page of documents at a time (exports of any
        size)."""
        query: dict[str, Any] = {"handler": handler}
        if batch_id is not None:
            query["batch_id"] = batch_id
        with _translated(f"read current results of {handler}"):
            page: list[dict[str, Any]] = []
            cursor = self._c("results").find(query).sort("doc_id", ASCENDING)
            async for raw in cursor:
                if len(page) >= _EXPORT_PAGE and raw["doc_id"] != page[-1]["doc_id"]:
                    for record in await self._current_of(page, handler, batch_id):
                        yield record
                    page = []
                page.append(raw)
            for record in await self._current_of(page, handler, batch_id):
                yield record

    async def _current_of(
        self, page: list[dict[str, Any]], handler: str, batch_id: str | None
    ) -> list[ResultRecord]:
        """The current versions among ``page`` — every version of its documents of
        ``handler``, or (``batch_id``) every version of that batch, whose documents' versions
        of other batches are read here."""
        versions = {raw["_id"]: raw for raw in page}
        if batch_id is not None and page:
            for raw in await self._versions_of(handler, sorted({raw["doc_id"] for raw in page})):
                versions.setdefault(raw["_id"], raw)
        numbers = standing(versions.values())
        return [_result(raw, *numbers[raw["_id"]]) for raw in page if numbers[raw["_id"]][1]]

    async def result_handlers(self) -> list[str]:
        """Every handler that has written a result, sorted."""
        with _translated("read result handlers"):
            return sorted(str(name) for name in await self._c("results").distinct("handler"))

    async def result_history(self, doc_id: str, handler: str) -> list[ResultRecord]:
        """Every version of a handler's result for a document, oldest first."""
        with _translated(f"read result history {doc_id}/{handler}"):
            cursor = self._c("results").find({"doc_id": doc_id, "handler": handler})
            versions = [raw async for raw in cursor]
        numbers = standing(versions)
        return sorted((_result(raw, *numbers[raw["_id"]]) for raw in versions), key=_order)

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
        found: list[dict[str, Any]] = []
        with _translated("read result versions"):
            for chunk in in_slices(wanted) if wanted is not None else [None]:
                selector = query if chunk is None else {**query, "doc_id": {"$in": chunk}}
                found.extend([raw async for raw in self._c("results").find(selector)])
            # Selected by document (and handler) only: these are every version of theirs.
            whole = set(query) <= {"doc_id", "handler"}
            return await self._records(found, whole=whole)

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
        for chunk in in_slices(sorted(set(legacy_message_ids))):
            selectors.append({**base, "message_id": {"$in": chunk}, "run_id": None})
        found: dict[str, dict[str, Any]] = {}
        with _translated("read the result versions of a run"):
            for selector in selectors:
                async for raw in self._c("results").find(selector):
                    found[raw["_id"]] = raw
            return await self._records(list(found.values()))

    async def _records(
        self, versions: list[dict[str, Any]], *, whole: bool = False
    ) -> list[ResultRecord]:
        """``versions`` as records, by document, handler and version: numbered and marked
        current among every version of their documents, which are read here unless they are
        ``whole`` already (every version of each of their (document, handler) pairs)."""
        if not versions:
            return []
        ranked: dict[Any, Mapping[str, Any]] = {}
        if not whole:
            owners: dict[str, set[str]] = {}
            for raw in versions:
                owners.setdefault(raw["handler"], set()).add(raw["doc_id"])
            for handler, docs in sorted(owners.items()):
                for chunk in in_slices(sorted(docs)):
                    for raw in await self._versions_of(handler, chunk):
                        ranked[raw["_id"]] = raw
        for raw in versions:  # as this read saw them (one written since is in `ranked` only)
            ranked[raw["_id"]] = raw
        numbers = standing(ranked.values())
        return sorted((_result(raw, *numbers[raw["_id"]]) for raw in versions), key=_order)

    async def _versions_of(self, handler: str, doc_ids: list[str]) -> list[dict[str, Any]]:
        """What ranking needs of every version of these documents (sorted ids) of ``handler``.

        Read as the range of ids from the first to the last when that range holds not too many
        other documents' versions — documents of one batch usually sit together, and a range
        is one index walk (~0.03 ms per version on SecantusDB) where ``$in`` is one lookup per
        id (~0.5 ms: a 75,000-document export spent a minute on them) — by ``$in`` otherwise.
        """
        results = self._c("results")
        span = {"doc_id": {"$gte": doc_ids[0], "$lte": doc_ids[-1]}, "handler": handler}
        most = _RANGE_SLACK * len(doc_ids) + 16
        found = await results.find(span, _RANKING).limit(most).to_list()
        if len(found) < most:
            wanted = set(doc_ids)
            return [raw for raw in found if raw["doc_id"] in wanted]
        listed = {"doc_id": {"$in": doc_ids}, "handler": handler}
        return await results.find(listed, _RANKING).to_list()

    async def withdraw_results(
        self, version_ids: Collection[str], rollback_id: str
    ) -> list[ResultRecord]:
        """Mark these result versions rolled back by ``rollback_id`` (those not already
        rolled back); each affected document's highest-ranked remaining version is current
        from then on. Returns the versions this call withdrew, as they are now."""
        return await self._flip(
            [{"_id": {"$in": chunk}} for chunk in in_slices(sorted(set(version_ids)))],
            {"rolled_back": False},
            {"$set": {"rolled_back": True, "rolled_back_by": rollback_id,
                      "rolled_back_at": _now()}},
            lambda record: record.rolled_back_by == rollback_id,
            f"roll back results ({rollback_id})",
        )  # fmt: skip

    async def restore_results(self, rollback_id: str) -> list[ResultRecord]:
        """Put back every version ``rollback_id`` withdrew (and nothing else). Returns the
        versions restored, as they are now."""
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
        """Apply ``change`` to the versions ``selectors`` pick that meet ``condition``; the
        versions returned are those ``changed_here`` (a concurrent run may have flipped one
        of them first)."""
        results = self._c("results")
        with _translated(operation):
            ids: list[str] = []
            for selector in selectors:
                cursor = results.find({**selector, **condition}, {"_id": 1})
                ids.extend([raw["_id"] async for raw in cursor])
            for chunk in in_slices(ids):
                await results.update_many({**condition, "_id": {"$in": chunk}}, change)
            flipped: list[dict[str, Any]] = []
            for chunk in in_slices(ids):
                flipped.extend([raw async for raw in results.find({"_id": {"$in": chunk}})])
            changed = [record for record in await self._records(flipped) if changed_here(record)]
        logger.info("%s: %d result version(s)", operation, len(changed))
        return changed


def _index_of(exc: DuplicateKeyError) -> str:
    found = re.search(r"index: (\S+)", str(exc))
    return found.group(1) if found else "(unnamed)"


def _order(record: ResultRecord) -> tuple[str, str, int]:
    return record.doc_id, record.handler, record.version


def _result(raw: Mapping[str, Any], version: int, current: bool) -> ResultRecord:
    # `version` and `current` stored by versions written before results were insert-only
    # are ignored: both are worked out from the document's versions (`standing`).
    return ResultRecord.model_validate(
        {**raw, "id": raw["_id"], "version": version, "current": current}
    )
