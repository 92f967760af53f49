"""The store: docbus's MongoDB collections behind one narrow async seam.

:class:`Store` owns a ``pymongo.AsyncMongoClient`` and the collections ``batches`` (one record per
published batch), ``documents`` (each published document's input, so a batch can be replayed
without its source files), ``payloads`` (claim-checked content), ``results`` (versioned handler
outputs), ``dead_letters`` (the Mongo copy of every dead letter), ``checkpoints`` (step outputs)
and ``llm_calls`` (audit rows, insert only); ``generations`` (each document's last replay
generation), ``replays`` and ``rollbacks`` (one audit record per run) serve the replay tooling.
The shapes it returns are in :mod:`docbus.records`; the message contract it stores is
:mod:`docbus.envelope`. pymongo errors are translated in one place (:func:`_translated`) into
:class:`StoreError`.

Results are idempotent without transactions (so standalone MongoDB and Cosmos DB work too): a
result's ``_id`` is ``handler@message_id``, so a redelivered message finds its earlier write;
versions are unique per (doc_id, handler); and a partial unique index on (doc_id, handler) where
``current`` is true lets at most one version be current. :meth:`Store.write_result` then
converges: the highest (generation, version) that is not rolled back becomes current, lower ones
are demoted, and a writer that lost a race re-reads instead of overwriting. Between a demotion and
the promotion that follows it no version is flagged current for a moment; :meth:`current_result`
falls back to the same ranking so readers never see a gap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple, Self

from pydantic import SecretStr
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReplaceOne, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from docbus.envelope import ClaimCheck, Envelope, claim_check_for
from docbus.errors import DocbusError
from docbus.records import (
    BatchBudget,
    BatchCounts,
    BatchRecord,
    CheckpointKey,
    DeadLetterRecord,
    HandlerCounts,
    LLMCallRecord,
    ReplayRecord,
    ResultRecord,
    ResultWrite,
    RollbackRecord,
    SpendCategory,
)
from docbus.settings import MongoSettings, Settings, mask_mongo_uri

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Checkpoint",
    "PayloadError",
    "Store",
    "StoreError",
    "StoreUnavailable",
]

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 15 * 1024 * 1024
"""Largest claim-checked document: one Mongo document holds at most 16 MiB."""

_CONVERGE_ATTEMPTS = 20
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
_VERSION_ATTEMPTS = 20


class StoreError(DocbusError):
    """A MongoDB operation failed; ``transient`` says whether trying again may help."""

    transient = False


class StoreUnavailable(StoreError):
    """MongoDB could not be reached or timed out: transient."""

    transient = True


class PayloadError(StoreError):
    """A claim-check reference points at a payload that is missing or does not match its hash."""


class Checkpoint(NamedTuple):
    """A stored step output."""

    output: Any
    created_at: datetime


@contextlib.contextmanager
def _translated(operation: str) -> Iterator[None]:
    """The one place pymongo exceptions become docbus exceptions."""
    try:
        yield
    except StoreError:
        raise
    except (
        ConnectionFailure,
        AutoReconnect,
        NetworkTimeout,
        ServerSelectionTimeoutError,
        ExecutionTimeout,
        WTimeoutError,
    ) as exc:
        raise StoreUnavailable(f"{operation}: MongoDB unavailable: {exc}") from exc
    except PyMongoError as exc:
        raise StoreError(f"{operation}: {exc}") from exc


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    """docbus's MongoDB collections. Construct freely; ``await connect()`` (or ``async with``)."""

    def __init__(
        self, uri: str | SecretStr, database: str = "docbus", *, timeout: float = 10.0
    ) -> None:
        self._uri = uri if isinstance(uri, SecretStr) else SecretStr(uri)
        self._database_name = database
        self._timeout = timeout
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings | MongoSettings) -> Store:
        mongo = settings.mongodb if isinstance(settings, Settings) else settings
        return cls(mongo.uri, mongo.database, timeout=mongo.timeout)

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

    # -- batches ---------------------------------------------------------------------------

    async def record_batch(
        self,
        batch_id: str,
        *,
        topic: str,
        source: Sequence[str] = (),
        status: str = "publishing",
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """Create the batch record, or refresh it when the same batch is published again."""
        now = _now()
        fields: dict[str, Any] = {
            "topic": topic,
            "source": list(source),
            "status": status,
            "updated_at": now,
        }
        if counts is not None:
            fields["counts"] = dict(counts)
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

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        with _translated(f"read batch {batch_id}"):
            raw = await self._c("batches").find_one({"_id": batch_id})
        return _batch(raw) if raw else None

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
            await self._c("batches").update_one({"_id": batch_id}, {"$inc": increments})

    async def set_batch_over_budget(self, batch_id: str, over_budget: bool) -> None:
        with _translated(f"flag batch {batch_id}"):
            await self._c("batches").update_one(
                {"_id": batch_id}, {"$set": {"over_budget": over_budget, "updated_at": _now()}}
            )

    async def batch_budget(self, batch_id: str) -> BatchBudget | None:
        """A batch's own budget, spend and flag, read cheaply (before every LLM call)."""
        projection = {"budget_usd": 1, "cost.usd": 1, "over_budget": 1}
        with _translated(f"read budget of batch {batch_id}"):
            raw = await self._c("batches").find_one({"_id": batch_id}, projection)
        if raw is None:
            return None
        budget = raw.get("budget_usd")
        return BatchBudget(
            budget_usd=float(budget) if budget is not None else None,
            spent_usd=float((raw.get("cost") or {}).get("usd", 0.0)),
            over_budget=bool(raw.get("over_budget")),
        )

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

    # -- documents and payloads ------------------------------------------------------------

    async def record_documents(self, envelopes: Iterable[Envelope]) -> int:
        """Record published documents' inputs (idempotent per batch and doc). Returns the count."""
        now = _now()
        operations = []
        for envelope in envelopes:
            fields = envelope.model_dump(
                mode="python",
                exclude_none=True,
                exclude={"generation", "replay_of", "replayed_at", "target_subscription"},
            )
            fields["recorded_at"] = now
            key = f"{envelope.batch_id}:{envelope.doc_id}"
            operations.append(ReplaceOne({"_id": key}, {"_id": key, **fields}, upsert=True))
        if not operations:
            return 0
        with _translated("record documents"):
            await self._c("documents").bulk_write(operations, ordered=False)
        return len(operations)

    async def get_document(self, batch_id: str, doc_id: str) -> Envelope | None:
        """The generation-0 envelope of a published document."""
        with _translated(f"read document {batch_id}:{doc_id}"):
            raw = await self._c("documents").find_one({"_id": f"{batch_id}:{doc_id}"})
        return Envelope.model_validate(raw) if raw else None

    async def iter_documents(self, batch_id: str) -> AsyncIterator[Envelope]:
        """Every recorded document of a batch, as generation-0 envelopes (for replays)."""
        with _translated(f"read documents of {batch_id}"):
            cursor = self._c("documents").find({"batch_id": batch_id}).sort("_id", ASCENDING)
            async for raw in cursor:
                yield Envelope.model_validate(raw)

    async def put_payload(self, text: str) -> ClaimCheck:
        """Store a document's content for claim-check; identical content is stored once."""
        data = text.encode("utf-8")
        if len(data) > MAX_PAYLOAD_BYTES:
            raise PayloadError(
                f"document of {len(data)} bytes exceeds the claim-check limit of "
                f"{MAX_PAYLOAD_BYTES} bytes"
            )
        ref = claim_check_for(text)
        with _translated("store payload"):
            await self._c("payloads").update_one(
                {"_id": ref.id},
                {"$setOnInsert": {"data": data, "size": ref.size, "created_at": _now()}},
                upsert=True,
            )
        return ref

    async def load_payload(self, ref: ClaimCheck) -> str:
        """Resolve a claim-check reference; raises :class:`PayloadError` if it cannot be trusted."""
        if ref.collection != "payloads":
            raise PayloadError(f"claim-check names collection {ref.collection!r}, not 'payloads'")
        with _translated(f"load payload {ref.id}"):
            raw = await self._c("payloads").find_one({"_id": ref.id})
        if raw is None:
            raise PayloadError(f"claim-check payload {ref.id} not found")
        data = bytes(raw["data"])
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PayloadError(f"claim-check payload {ref.id} does not match its size and hash")
        return data.decode("utf-8")

    # -- results ---------------------------------------------------------------------------

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
        with _translated(f"write result {key}"):
            for _ in range(_VERSION_ATTEMPTS):
                existing = await results.find_one({"_id": key})
                if existing is not None:
                    break
                last = await results.find_one(
                    {"doc_id": doc_id, "handler": handler}, sort=[("version", DESCENDING)]
                )
                record = {
                    "_id": key,
                    "doc_id": doc_id,
                    "handler": handler,
                    "handler_version": handler_version,
                    "version": (last["version"] + 1) if last else 1,
                    # The first version of a document can be current at once: the partial
                    # unique index on current versions refuses a concurrent second one.
                    "current": last is None,
                    "rolled_back": False,
                    "batch_id": batch_id,
                    "generation": generation,
                    "message_id": message_id,
                    "output": dict(output),
                    "written_at": _now(),
                    "delivery_count": delivery_count,
                }
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

    # -- dead letters ----------------------------------------------------------------------

    async def record_dead_letter(self, record: DeadLetterRecord) -> bool:
        """Keep the Mongo copy of a dead letter; once per (message, subscription).

        Returns True if this call created the record.
        """
        fields = record.model_dump(mode="python")
        with _translated(f"record dead letter {record.id}"):
            outcome = await self._c("dead_letters").update_one(
                {"_id": record.id}, {"$setOnInsert": fields}, upsert=True
            )
        return outcome.upserted_id is not None

    async def dead_letters(
        self,
        *,
        batch_id: str | None = None,
        handler: str | None = None,
        subscription: str | None = None,
        reason: str | None = None,
        include_replayed: bool = True,
        limit: int = 0,
        topic: str | None = None,
        doc_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        only_replayed: bool = False,
    ) -> list[DeadLetterRecord]:
        """Dead letters matching every filter given, oldest first (``limit`` 0: all).

        ``since``/``until`` bound ``dead_lettered_at`` (inclusive, exclusive);
        ``include_replayed=False`` keeps those never replayed, ``only_replayed`` the others.
        """
        query: dict[str, Any] = {}
        for field, value in (
            ("batch_id", batch_id),
            ("handler", handler),
            ("subscription", subscription),
            ("reason", reason),
            ("topic", topic),
            ("doc_id", doc_id),
        ):
            if value is not None:
                query[field] = value
        if not include_replayed:
            query["replayed_at"] = None
        elif only_replayed:
            query["replayed_at"] = {"$ne": None}
        if since is not None or until is not None:
            window: dict[str, datetime] = {}
            if since is not None:
                window["$gte"] = since
            if until is not None:
                window["$lt"] = until
            query["dead_lettered_at"] = window
        with _translated("read dead letters"):
            cursor = self._c("dead_letters").find(query).sort("dead_lettered_at", ASCENDING)
            if limit:
                cursor = cursor.limit(limit)
            return [DeadLetterRecord.model_validate(raw) async for raw in cursor]

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

    # -- replay generations, replays and rollbacks -----------------------------------------

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

    async def record_replay(self, record: ReplayRecord) -> None:
        """Keep (or update) the audit record of one replay run."""
        fields = record.model_dump(mode="python", exclude={"id"})
        with _translated(f"record replay {record.id}"):
            await self._c("replays").replace_one(
                {"_id": record.id}, {"_id": record.id, **fields}, upsert=True
            )

    async def get_replay(self, replay_id: str) -> ReplayRecord | None:
        with _translated(f"read replay {replay_id}"):
            raw = await self._c("replays").find_one({"_id": replay_id})
        return ReplayRecord.model_validate({**raw, "id": raw["_id"]}) if raw else None

    async def record_rollback(self, record: RollbackRecord) -> None:
        """Keep the audit record of one rollback run."""
        fields = record.model_dump(mode="python", exclude={"id"})
        with _translated(f"record rollback {record.id}"):
            await self._c("rollbacks").insert_one({"_id": record.id, **fields})

    # -- checkpoints and audit -------------------------------------------------------------

    async def get_checkpoint(self, key: CheckpointKey) -> Checkpoint | None:
        with _translated(f"read checkpoint {key.step}"):
            raw = await self._c("checkpoints").find_one({"_id": key.id})
        return Checkpoint(raw["output"], raw["created_at"]) if raw else None

    async def checkpoints_of(
        self, doc_id: str, handler: str, handler_version: str
    ) -> dict[str, Checkpoint]:
        """Every stored step output of one document under one handler version, by key id:
        one query per delivery instead of one per step."""
        query = {"doc_id": doc_id, "handler": handler, "handler_version": handler_version}
        with _translated(f"read checkpoints of {doc_id}"):
            return {
                raw["_id"]: Checkpoint(raw["output"], raw["created_at"])
                async for raw in self._c("checkpoints").find(query)
            }

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
        with _translated(f"write checkpoint {key.step}"):
            if replace:
                await self._c("checkpoints").replace_one({"_id": key.id}, fields, upsert=True)
                return True
            outcome = await self._c("checkpoints").update_one(
                {"_id": key.id}, {"$setOnInsert": fields}, upsert=True
            )
        return outcome.upserted_id is not None

    async def record_llm_call(self, call: Mapping[str, Any] | LLMCallRecord) -> str:
        """Insert one LLM audit row; returns its id."""
        if isinstance(call, LLMCallRecord):
            row = call.model_dump(mode="python", exclude={"id"})
        else:
            row = dict(call)
        with _translated("record llm call"):
            outcome = await self._c("llm_calls").insert_one(row)
        return str(outcome.inserted_id)

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

    # -- status ----------------------------------------------------------------------------

    async def batch_counts(self, batch_id: str, *, handlers: Iterable[str] = ()) -> BatchCounts:
        """Published / done / dead-lettered / pending for a batch, overall and per handler.

        ``handlers`` names handlers expected to process the batch even if none has reported
        yet (without it, only handlers with a result or dead letter in the batch count).
        """
        done: dict[str, set[str]] = {name: set() for name in handlers}
        dead: dict[str, set[str]] = {name: set() for name in done}
        with _translated(f"count batch {batch_id}"):
            published = await self._c("documents").count_documents({"batch_id": batch_id})
            for collection, match, into in (
                ("results", {"batch_id": batch_id, "rolled_back": False}, done),
                ("dead_letters", {"batch_id": batch_id}, dead),
            ):
                pipeline: list[dict[str, Any]] = [
                    {"$match": match},
                    {"$group": {"_id": {"h": "$handler", "d": "$doc_id"}}},
                ]
                async for row in await self._c(collection).aggregate(pipeline):
                    name = row["_id"].get("h")
                    if name is not None:
                        into.setdefault(name, set()).add(row["_id"]["d"])
                        done.setdefault(name, set())
                        dead.setdefault(name, set())
        per_handler: dict[str, HandlerCounts] = {}
        for name in sorted(done):
            unresolved = dead[name] - done[name]
            per_handler[name] = HandlerCounts(
                done=len(done[name]),
                dead_lettered=len(unresolved),
                pending=max(0, published - len(done[name]) - len(unresolved)),
            )
        if done:
            all_done = set.intersection(*done.values())
            any_dead = set.union(*(dead[n] - done[n] for n in done))
            n_done, n_dead = len(all_done), len(any_dead)
        else:
            n_done = n_dead = 0
        return BatchCounts(
            batch_id=batch_id,
            published=published,
            done=n_done,
            dead_lettered=n_dead,
            pending=max(0, published - n_done - n_dead),
            handlers=per_handler,
        )


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


def _batch(raw: Mapping[str, Any]) -> BatchRecord:
    return BatchRecord.model_validate({**raw, "id": raw["_id"]})


def _result(raw: Mapping[str, Any]) -> ResultRecord:
    return ResultRecord.model_validate({**raw, "id": raw["_id"]})
