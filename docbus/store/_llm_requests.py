"""Pending LLM requests: the ``llm_requests`` collection of batch mode.

In batch mode ``ctx.llm`` does not call the live endpoint: it registers a
:class:`~docbus.llm_batch.BatchRequest` here (:meth:`~LLMRequestsMixin.register_llm_request`),
keyed by the step that makes it plus the request's content, so the same call on a redelivery
finds the same record — and its answer once one came back — instead of asking twice. A record
moves through :class:`LLMRequestState`::

    pending -> submitted (claimed by one provider batch record) -> answered | failed
            ^------------- resubmitted / released ------------|
    pending | submitted -> held (its docbus batch cancelled)  -> pending (resumed)

A request is in at most one open provider batch because only a ``pending`` request with no
``provider_batch`` can be claimed, in one conditional update (:mod:`docbus.store._provider_batches`
claims and settles them). Every write is durable (``w: majority, j: true``). Neighbours:
:mod:`docbus.llm_batch` (the pure planning), :mod:`docbus.store._submitter` (the lease).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pymongo import ASCENDING, IndexModel, InsertOne
from pymongo.errors import DuplicateKeyError

from docbus.llm_batch import BatchRequest, History, input_line
from docbus.store._base import StoreBase, _now
from docbus.store._errors import StoreError, _translated
from docbus.store._group import GroupFinder

REQUESTS = "llm_requests"
_FEW = 8
"""Keys read through the group finder at most (more: one query of their own)."""


class LLMRequestState(enum.StrEnum):
    """Where one batch-mode request is (see the module docstring)."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    ANSWERED = "answered"
    FAILED = "failed"
    HELD = "held"


class LLMRequestRecord(BaseModel):
    """One batch-mode request: what it asks, who asked, where it is, and its answer."""

    model_config = ConfigDict(frozen=True)

    key: str
    endpoint: str
    model: str
    body: dict[str, Any]
    size: int
    """Bytes of its line in an input file (for splitting and accumulation)."""
    estimated_tokens: int = 0
    estimated_usd: float = 0.0
    """Its expected cost at the batch price, reserved against its batch's budget while open."""
    step_id: str
    batch_id: str | None = None
    doc_id: str | None = None
    handler: str | None = None
    state: LLMRequestState = LLMRequestState.PENDING
    provider_batch: str | None = None
    """The provider-batch record that holds it while ``submitted``."""
    attempts: int = 0
    expiries: int = 0
    answer: dict[str, Any] | None = None
    """The output line's ``body`` (a ``chat.completion``), ``request_id``, usage and the
    provider batch that answered."""
    failure: dict[str, Any] | None = None
    """``reason`` and ``description`` of its dead letter (state ``failed``), or of the last
    failure that sent it back to ``pending``."""
    created_at: datetime
    updated_at: datetime

    @property
    def history(self) -> History:
        return History(attempts=self.attempts, expiries=self.expiries)

    def as_request(self) -> BatchRequest:
        return BatchRequest(
            key=self.key,
            endpoint=self.endpoint,
            model=self.model,
            body=self.body,
            estimated_tokens=self.estimated_tokens,
        )


class PendingGroup(BaseModel):
    """Pending requests of one endpoint and model: how many, how big, how old the oldest and
    the newest."""

    model_config = ConfigDict(frozen=True)

    endpoint: str
    model: str
    requests: int
    size: int
    oldest: datetime
    newest: datetime | None = None


def request_record(raw: dict[str, Any]) -> LLMRequestRecord:
    """A request's record from its stored document."""
    return LLMRequestRecord.model_validate({**raw, "key": raw["_id"]})


def _key_of(raw: Mapping[str, Any]) -> str:
    return str(raw["_id"])


def request_finder(store: StoreBase) -> GroupFinder[str]:
    """Reads of requests by key, each delivery's sent with the others' of the moment as one
    ``$in`` query (:mod:`docbus.store._group`); ``find(key, key)``."""
    return store._finder(REQUESTS, "_id", _key_of)


class LLMRequestsMixin(StoreBase):
    """Batch-mode requests, registered idempotently and read back by key."""

    async def ensure_indexes(self) -> None:
        await super().ensure_indexes()
        with _translated("ensure the indexes of llm_requests"):
            await self._c(REQUESTS).create_indexes(
                [
                    IndexModel(
                        [
                            ("state", ASCENDING),
                            ("endpoint", ASCENDING),
                            ("model", ASCENDING),
                            ("created_at", ASCENDING),
                        ],
                        name="pending_by_group",
                    ),
                    IndexModel([("provider_batch", ASCENDING)]),
                    IndexModel([("batch_id", ASCENDING), ("state", ASCENDING)]),
                ]
            )

    async def register_llm_request(
        self,
        request: BatchRequest,
        *,
        step_id: str,
        batch_id: str | None = None,
        doc_id: str | None = None,
        handler: str | None = None,
        estimated_usd: float = 0.0,
    ) -> LLMRequestRecord:
        """Register ``request`` as pending, or return its record as it stands if the same call
        was registered before (a redelivery): registering twice changes nothing.
        ``estimated_usd`` is reserved against its batch's budget until it is answered."""
        now = _now()
        # as the server keeps it (milliseconds): the record returned is the one stored
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        fields = {
            "endpoint": request.endpoint,
            "model": request.model,
            "body": dict(request.body),
            "size": len(input_line(request)),
            "estimated_tokens": request.estimated_tokens,
            "estimated_usd": estimated_usd,
            "step_id": step_id,
            "batch_id": batch_id,
            "doc_id": doc_id,
            "handler": handler,
            "state": LLMRequestState.PENDING.value,
            "provider_batch": None,
            "attempts": 0,
            "expiries": 0,
            "answer": None,
            "failure": None,
            "created_at": now,
            "updated_at": now,
        }
        finder = request_finder(self)
        with _translated(f"register LLM request {request.key[:12]}"):
            # grouped with the other deliveries' registrations: a round registers thousands.
            # An insert, not an upsert: the same call registered before (a redelivery, or a
            # concurrent registration) is refused on `_id` and read back as it stands; an
            # upsert would cost the server a lookup before every insert.
            try:
                await self._writer(REQUESTS).write(InsertOne({"_id": request.key, **fields}))
            except DuplicateKeyError:
                found = await finder.find(request.key, request.key)
            else:
                return request_record({**fields, "_id": request.key})
        if not found:
            raise StoreError(f"registering LLM request {request.key[:12]} stored nothing")
        return request_record(found[0])

    async def llm_requests(self, keys: Iterable[str]) -> dict[str, LLMRequestRecord]:
        """The records of ``keys`` that exist, by key (a few keys: read together with the
        other deliveries' reads of the moment, :func:`request_finder`)."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        with _translated("read LLM requests"):
            if len(wanted) <= _FEW:
                finder = request_finder(self)
                found = await asyncio.gather(*(finder.find(key, key) for key in wanted))
                return {raws[0]["_id"]: request_record(raws[0]) for raws in found if raws}
            cursor = self._c(REQUESTS).find({"_id": {"$in": wanted}})
            return {raw["_id"]: request_record(raw) async for raw in cursor}

    async def pending_llm_groups(self) -> list[PendingGroup]:
        """Pending requests counted per endpoint and model, oldest group first."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"state": LLMRequestState.PENDING.value, "provider_batch": None}},
            {
                "$group": {
                    "_id": {"e": "$endpoint", "m": "$model"},
                    "requests": {"$sum": 1},
                    "size": {"$sum": "$size"},
                    "oldest": {"$min": "$created_at"},
                    "newest": {"$max": "$created_at"},
                }
            },
        ]
        groups = []
        with _translated("count pending LLM requests"):
            async for row in await self._c(REQUESTS).aggregate(pipeline):
                groups.append(
                    PendingGroup(
                        endpoint=str(row["_id"]["e"]),
                        model=str(row["_id"]["m"]),
                        requests=int(row["requests"]),
                        size=int(row["size"]),
                        oldest=row["oldest"],
                        newest=row.get("newest"),
                    )
                )
        return sorted(groups, key=lambda g: g.oldest)

    async def pending_llm_requests(
        self, endpoint: str, model: str, *, limit: int = 0
    ) -> list[LLMRequestRecord]:
        """Pending requests of one group, oldest first (``limit`` 0: all)."""
        query = {
            "state": LLMRequestState.PENDING.value,
            "provider_batch": None,
            "endpoint": endpoint,
            "model": model,
        }
        with _translated(f"read pending LLM requests of {model}"):
            cursor = self._c(REQUESTS).find(query).sort("created_at", ASCENDING)
            if limit:
                cursor = cursor.limit(limit)
            return [request_record(raw) async for raw in cursor]

    async def submitted_llm_tokens(self, endpoint: str, model: str) -> int:
        """The estimated tokens of one group's requests in open provider batches: what they
        hold of a queued-token quota."""
        pipeline: list[dict[str, Any]] = [
            {
                "$match": {
                    "state": LLMRequestState.SUBMITTED.value,
                    "endpoint": endpoint,
                    "model": model,
                }
            },
            {"$group": {"_id": None, "tokens": {"$sum": "$estimated_tokens"}}},
        ]
        with _translated(f"sum the queued tokens of {model}"):
            async for row in await self._c(REQUESTS).aggregate(pipeline):
                return int(row.get("tokens") or 0)
        return 0

    async def fail_llm_requests(self, keys: Iterable[str], reason: str, description: str) -> int:
        """Dead-letter pending requests that can never be submitted (too big for any file);
        returns how many. Their documents get the dead letter when they ask again."""
        with _translated("fail LLM requests"):
            outcome = await self._c(REQUESTS).update_many(
                {
                    "_id": {"$in": list(keys)},
                    "state": LLMRequestState.PENDING.value,
                    "provider_batch": None,
                },
                {
                    "$set": {
                        "state": LLMRequestState.FAILED.value,
                        "failure": {"reason": reason, "description": description},
                        "updated_at": _now(),
                    }
                },
            )
        return outcome.modified_count

    async def count_llm_requests(self, *, batch_id: str | None = None) -> dict[str, int]:
        """Requests per state (of one docbus batch), every state present (0 when none)."""
        match: dict[str, Any] = {} if batch_id is None else {"batch_id": batch_id}
        counts = {state.value: 0 for state in LLMRequestState}
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$group": {"_id": "$state", "n": {"$sum": 1}}},
        ]
        with _translated("count LLM requests"):
            async for row in await self._c(REQUESTS).aggregate(pipeline):
                counts[str(row["_id"])] = int(row["n"])
        return counts

    async def reserved_llm_usd(self, batch_id: str) -> float:
        """The estimated cost of a batch's requests not answered yet (pending, submitted or
        held): what its next round will spend, counted against its budget."""
        pipeline: list[dict[str, Any]] = [
            {
                "$match": {
                    "batch_id": batch_id,
                    "state": {
                        "$in": [
                            LLMRequestState.PENDING.value,
                            LLMRequestState.SUBMITTED.value,
                            LLMRequestState.HELD.value,
                        ]
                    },
                }
            },
            {"$group": {"_id": None, "usd": {"$sum": "$estimated_usd"}}},
        ]
        with _translated(f"sum the reserved LLM cost of {batch_id}"):
            async for row in await self._c(REQUESTS).aggregate(pipeline):
                return float(row.get("usd") or 0.0)
        return 0.0

    async def hold_llm_requests(self, batch_id: str) -> int:
        """Hold a cancelled docbus batch's pending requests (not submitted until resumed);
        returns how many. Its submitted ones are held when their provider batch settles."""
        with _translated(f"hold the LLM requests of {batch_id}"):
            outcome = await self._c(REQUESTS).update_many(
                {
                    "batch_id": batch_id,
                    "state": LLMRequestState.PENDING.value,
                    "provider_batch": None,
                },
                {"$set": {"state": LLMRequestState.HELD.value, "updated_at": _now()}},
            )
        return outcome.modified_count

    async def release_held_llm_requests(self, batch_id: str) -> int:
        """Make a resumed docbus batch's held requests pending again; returns how many."""
        with _translated(f"release the held LLM requests of {batch_id}"):
            outcome = await self._c(REQUESTS).update_many(
                {"batch_id": batch_id, "state": LLMRequestState.HELD.value},
                {"$set": {"state": LLMRequestState.PENDING.value, "updated_at": _now()}},
            )
        return outcome.modified_count
