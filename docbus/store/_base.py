"""The store's base: the MongoDB client, its lifecycle, the indexes and the collection accessor.

:class:`StoreBase` owns the ``pymongo.AsyncMongoClient`` (opened by :meth:`~StoreBase.connect`,
never by the constructor), creates the indexes the store's guarantees rely on, and hands the
concept mixins (batches, documents, results, dead letters, checkpoints, LLM audit, replays) their
collections through ``_c``; each mixin subclasses it so mypy checks their bodies against it.
:class:`docbus.store.Store` combines them. Errors are translated by :mod:`docbus.store._errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import SecretStr
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from docbus.settings import mask_mongo_uri
from docbus.store._errors import StoreError, _translated
from docbus.store._group import GroupFinder, GroupWriter

K = TypeVar("K", bound=Hashable)


def _now() -> datetime:
    return datetime.now(UTC)


class StoreBase:
    """The client, lifecycle and indexes shared by every part of :class:`docbus.store.Store`."""

    def __init__(
        self,
        uri: str | SecretStr,
        database: str = "docbus",
        *,
        timeout: float = 10.0,
        write_linger: float = 0.0,
    ) -> None:
        self._uri = uri if isinstance(uri, SecretStr) else SecretStr(uri)
        self._database_name = database
        self._timeout = timeout
        self._write_linger = write_linger
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._writers: dict[str, GroupWriter] = {}
        self._finders: dict[str, GroupFinder[Any]] = {}

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
        self._db = client[self._database_name]

    async def close(self) -> None:
        """Send what group writers still hold, then close the client."""
        for writer in list(self._writers.values()):
            await writer.drain()
        if self._client is not None:
            client, self._client, self._db = self._client, None, None
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
        """The underlying database, for tools that need a query the store does not offer."""
        if self._db is None:
            raise StoreError("the store is not connected: await store.connect() first")
        return self._db

    def _c(self, name: str) -> AsyncCollection[dict[str, Any]]:
        return self.database[name]

    def _writer(self, name: str) -> GroupWriter:
        """The group writer of collection ``name`` (see :mod:`docbus.store._group`): for the
        small writes every handler makes at once, which it sends as one bulk write."""
        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = GroupWriter(
                lambda: self._c(name), name, linger=self._write_linger
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
            "documents": [
                IndexModel([("batch_id", ASCENDING), ("doc_id", ASCENDING)], unique=True),
                IndexModel([("doc_id", ASCENDING)]),
            ],
            "results": [
                IndexModel(
                    [("doc_id", ASCENDING), ("handler", ASCENDING), ("version", ASCENDING)],
                    unique=True,
                    name="one_version_number",
                ),
                IndexModel(
                    [("doc_id", ASCENDING), ("handler", ASCENDING)],
                    unique=True,
                    partialFilterExpression={"current": True},
                    name="one_current_version",
                ),
                IndexModel([("batch_id", ASCENDING), ("handler", ASCENDING)]),
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
            for collection, models in indexes.items():
                await self._c(collection).create_indexes(models)
