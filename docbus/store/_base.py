"""The store's base: the MongoDB client, its lifecycle, the indexes and the collection accessor.

:class:`StoreBase` owns the ``pymongo.AsyncMongoClient`` (opened by :meth:`~StoreBase.connect`,
never by the constructor), creates the indexes the store's guarantees rely on, and hands the
concept mixins (batches, documents, results, dead letters, checkpoints, LLM audit, replays) their
collections through ``_c``; each mixin subclasses it so mypy checks their bodies against it.
:class:`docbus.store.Store` combines them. Errors are translated by :mod:`docbus.store._errors`.

Durability is decided here, once. Every write is *durable* by default: it carries the write
concern of :func:`durable_write_concern` (``w: "majority"``, ``j: true`` unless configured
otherwise), so the server acknowledges it only once it would keep it through its own crash —
a result before its message is completed, a dead-letter or parked record before the broker is
told, documents and payloads before they are published, replay claims and rollbacks. Only the
writes a worker makes behind its handlers (audit rows, checkpoints, cost increments: ``_c(name,
durable=False)``) take the server's default: each is followed by a durable write of the same
delivery (its result or dead-letter record), and a server makes a durable write durable
together with every write it acknowledged before it (the journal and the oplog are sequential),
so one journal flush per group of results covers them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import SecretStr
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, OperationFailure
from pymongo.write_concern import WriteConcern

from docbus.settings import mask_mongo_uri
from docbus.store._errors import StoreError, _translated
from docbus.store._group import GroupFinder, GroupWriter

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

logger = logging.getLogger("docbus.store")

_RETIRED_RESULT_INDEXES = frozenset(
    {"one_version_number", "one_current_version", "batch_id_1_handler_1"}
)
"""Results indexes of docbus before results were insert-only: the unique version numbers and
the partial unique index on stored ``current`` flags would refuse insert-only versions."""

CURRENT_RESULTS_VIEW = "current_results"
CURRENT_RESULTS_PIPELINE: list[dict[str, Any]] = [
    {"$match": {"rolled_back": False}},
    # docbus.records.result_rank: when the run was issued, then when written, then the id
    {"$addFields": {"_rank": {"$ifNull": ["$issued_at", "$written_at"]}}},
    {"$sort": {"doc_id": 1, "handler": 1, "_rank": -1, "written_at": -1, "_id": -1}},
    {"$group": {"_id": {"doc_id": "$doc_id", "handler": "$handler"}, "top": {"$first": "$$ROOT"}}},
    {"$replaceRoot": {"newRoot": "$top"}},
    {"$project": {"_rank": 0, "current": 0, "version": 0}},
]
"""The view ``current_results``: each (document, handler)'s highest-ranked version not rolled
back (``current`` and ``version`` stored by older docbus versions are dropped: not kept up)."""


def _now() -> datetime:
    return datetime.now(UTC)


IN_SLICE = 100
"""Values per ``$in`` in the store's commands over many keys: an ``$in`` of thousands is
quadratic on some servers (SecantusDB: a find of 2,000 keys 2.8 s, 0.2 s in slices of 100; an
``update_many`` 6 s, 0.9 s), and on the others slices cost a few round trips."""


def in_slices(values: Sequence[T]) -> Iterator[list[T]]:
    """``values`` in slices of :data:`IN_SLICE`."""
    for start in range(0, len(values), IN_SLICE):
        yield list(values[start : start + IN_SLICE])


def durable_write_concern(
    w: str | int = "majority", journal: bool = True, timeout: float = 10.0
) -> WriteConcern:
    """The write concern of every write docbus must not lose (see the module docstring).

    ``timeout`` bounds the wait for the other members (``wtimeout``), so a replica set that
    lost its majority fails the write (transient, :class:`StoreUnavailable`) instead of
    hanging it.
    """
    return WriteConcern(w=w, j=journal, wtimeout=max(1, int(timeout * 1000)))


class StoreBase:
    """The client, lifecycle and indexes shared by every part of :class:`docbus.store.Store`."""

    def __init__(
        self,
        uri: str | SecretStr,
        database: str = "docbus",
        *,
        timeout: float = 10.0,
        write_linger: float = 0.0,
        write_concern: str | int = "majority",
        journal: bool = True,
    ) -> None:
        self._uri = uri if isinstance(uri, SecretStr) else SecretStr(uri)
        self._database_name = database
        self._timeout = timeout
        self._write_linger = write_linger
        self._durable = durable_write_concern(write_concern, journal, timeout)
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._writers: dict[str, GroupWriter] = {}
        self._finders: dict[str, GroupFinder[Any]] = {}
        # collection objects of the connected client: a worker asks for a few per message
        self._collections: dict[tuple[str, bool], AsyncCollection[dict[str, Any]]] = {}

    def __repr__(self) -> str:
        uri = mask_mongo_uri(self._uri.get_secret_value())
        return f"Store({uri!r}, {self._database_name!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the client and check the server answers; raises :class:`StoreUnavailable`."""
        if self._client is not None:
            return
        timeout_ms = int(self._timeout * 1000)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self._uri.get_secret_value(),
            tz_aware=True,
            appname="docbus",
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
        )
        try:
            with _translated(f"connect to {mask_mongo_uri(self._uri.get_secret_value())}"):
                await client.admin.command("ping")
        except BaseException:
            await client.close()
            raise
        self._client = client
        self._db = client.get_database(self._database_name, write_concern=self._durable)

    async def close(self) -> None:
        """Send what group writers still hold, then close the client."""
        for writer in list(self._writers.values()):
            await writer.drain()
        if self._client is not None:
            client, self._client, self._db = self._client, None, None
            self._collections.clear()
            await client.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def database(self) -> AsyncDatabase[dict[str, Any]]:
        """The underlying database, for tools that need a query the store does not offer.

        Its writes are durable (see the module docstring), like the store's own."""
        if self._db is None:
            raise StoreError("the store is not connected: await store.connect() first")
        return self._db

    async def drop_database(self) -> None:
        """Drop the store's whole database: for throwaway databases (``docbus.testing``'s
        ``store`` fixture); docbus itself never calls it."""
        with _translated(f"drop database {self._database_name}"):
            await self.database.client.drop_database(self._database_name)

    @property
    def write_concern(self) -> WriteConcern:
        """The write concern of the store's durable writes."""
        return self._durable

    def _c(self, name: str, *, durable: bool = True) -> AsyncCollection[dict[str, Any]]:
        """Collection ``name``; ``durable=False`` only for the writes behind a handler that a
        durable write of the same delivery follows (see the module docstring), and for hints
        that nothing depends on (retry notes)."""
        collection = self._collections.get((name, durable))
        if collection is None:
            concern = None if durable else WriteConcern()  # None: the database's (durable)
            collection = self.database.get_collection(name, write_concern=concern)
            self._collections[(name, durable)] = collection
        return collection

    def _writer(self, name: str, *, durable: bool = True) -> GroupWriter:
        """The group writer of collection ``name`` (see :mod:`docbus.store._group`): for the
        small writes every handler makes at once, which it sends as one bulk write (so a
        durable group costs the server one journal flush). One per collection, so a
        collection's grouped writes are either all durable or all behind a handler."""
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = GroupWriter(
                lambda: self._c(name, durable=durable), name, linger=self._write_linger
            )
        return writer

    def _finder(
        self, name: str, field: str, key_of: Callable[[Mapping[str, Any]], K]
    ) -> GroupFinder[K]:
        """The group finder of collection ``name`` by ``field``, splitting answers by
        ``key_of``; one per (collection, field), so its callers must agree on ``key_of``."""
        finder = self._finders.get(f"{name}.{field}")
        if finder is None:
            finder = GroupFinder(lambda: self._c(name), name, field, key_of)
            self._finders[f"{name}.{field}"] = finder
        return finder

    async def ensure_indexes(self) -> None:
        """Create the indexes the store's guarantees rely on (idempotent)."""
        indexes: dict[str, list[IndexModel]] = {
            "batches": [IndexModel([("created_at", DESCENDING)])],
            # "documents": none beyond `_id` (batch:doc), which is unique per batch and document
            # and answers a batch's queries as a range (docbus.store._documents.batch_documents)
            # Insert-only (docbus.store._results): `_id` is the one unique key; a document's
            # versions, and a batch's by document id (exports stream in that order).
            "results": [
                IndexModel([("doc_id", ASCENDING), ("handler", ASCENDING)], name="doc_versions"),
                IndexModel(
                    [("batch_id", ASCENDING), ("handler", ASCENDING), ("doc_id", ASCENDING)],
                    name="batch_versions",
                ),
            ],
            "dead_letters": [
                IndexModel([("batch_id", ASCENDING), ("handler", ASCENDING)]),
                IndexModel([("doc_id", ASCENDING)]),
            ],
            "checkpoints": [
                IndexModel(
                    [("doc_id", ASCENDING), ("handler", ASCENDING), ("handler_version", ASCENDING)]
                ),
            ],
            "parked": [
                IndexModel(
                    [
                        ("topic", ASCENDING),
                        ("subscription", ASCENDING),
                        ("sequence_number", ASCENDING),
                    ]
                ),
                IndexModel([("batch_id", ASCENDING)]),
            ],
            "llm_calls": [
                IndexModel([("batch_id", ASCENDING), ("step", ASCENDING)]),
                IndexModel([("batch_id", ASCENDING), ("doc_id", ASCENDING)]),
                # iter_llm_calls streams in this order: no in-memory sort of a whole batch
                IndexModel([("batch_id", ASCENDING), ("created_at", ASCENDING)]),
            ],
        }
        with _translated("ensure indexes"):
            await self._drop_indexes("results", _RETIRED_RESULT_INDEXES)
            for collection, models in indexes.items():
                await self._c(collection).create_indexes(models)
            await self._ensure_current_results_view()

    async def _drop_indexes(self, collection: str, names: Collection[str]) -> None:
        """Drop these indexes where a database made by an older docbus still has them."""
        present = [raw["name"] async for raw in await self._c(collection).list_indexes()]
        for name in present:
            if name in names:
                await self._c(collection).drop_index(name)

    async def _ensure_current_results_view(self) -> None:
        """The read-only view ``current_results``: each (document, handler)'s current version,
        for people querying Mongo themselves (docbus works it out as it reads, see
        :mod:`docbus.store._results`). A server without views (some Cosmos DB tiers) gets a
        warning, not an error: nothing of docbus's own reads it."""
        found = await self.database.list_collections(filter={"name": CURRENT_RESULTS_VIEW})
        existing = [raw async for raw in found]
        try:
            if not existing:
                await self.database.create_collection(
                    CURRENT_RESULTS_VIEW, viewOn="results", pipeline=CURRENT_RESULTS_PIPELINE
                )
            elif existing[0].get("options", {}).get("pipeline") != CURRENT_RESULTS_PIPELINE:
                await self.database.command(
                    "collMod",
                    CURRENT_RESULTS_VIEW,
                    viewOn="results",
                    pipeline=CURRENT_RESULTS_PIPELINE,
                )
        except (CollectionInvalid, OperationFailure) as exc:
            logger.warning(
                "the view %s was not created (%s): read current results with "
                "`docbus results export` instead",
                CURRENT_RESULTS_VIEW,
                exc,
            )
