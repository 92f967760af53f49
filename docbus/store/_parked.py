"""Parked messages: the ``parked`` records of messages a worker deferred, and what they add up to.

A message is parked when its failure is not its own fault — the LLM endpoint refuses the key or is
unreachable (``SystemicFailure``), the batch has spent its budget (``OverBudget``) — and Service
Bus keeps it deferred, which only its sequence number fetches back. :class:`ParkedMixin` keeps one
record per deferred message (:class:`ParkedMessage`): written before the deferral
(:meth:`~ParkedMixin.park`), confirmed after it (:meth:`~ParkedMixin.mark_parked_deferred`), listed
for resumption and for people (:meth:`~ParkedMixin.parked`, :meth:`~ParkedMixin.parked_groups`,
:meth:`~ParkedMixin.count_parked`), marked for resumption on request
(:meth:`~ParkedMixin.request_resume`) and removed once a worker has the message back
(:meth:`~ParkedMixin.unpark`). Neighbours: :mod:`subscriber.parking` and :mod:`subscriber.worker`
park and resume; ``docbus parked`` lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DeleteOne, IndexModel, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError

from docbus.store._base import StoreBase, in_slices
from docbus.store._errors import _translated
from docbus.store._llm_requests import (
    REQUESTS,
    LLMRequestState,
    request_finder,
)

COLLECTION = "parked"
AWAITING_BATCH = "AwaitingBatch"
"""The reason of a delivery parked until its batch-mode LLM requests are answered."""

UNCONFIRMED_AFTER = timedelta(minutes=5)
"""A record whose deferral was never confirmed (the worker died in between) is fetched back
after this long; by then the deferral either happened or never will."""


class ParkedMessage(BaseModel):
    """A deferred message's record: where it waits, why, and how to fetch it back."""

    model_config = ConfigDict(frozen=True)

    topic: str
    subscription: str
    sequence_number: int
    reason: str
    description: str = ""
    batch_id: str | None = None
    doc_id: str | None = None
    message_id: str | None = None
    handler: str | None = None
    parked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    deferred: bool = False
    """Set once Service Bus has deferred the message; only then can it be fetched back."""
    resume_requested_at: datetime | None = None
    """Set by ``docbus parked resume``: the next worker of its subscription fetches it back
    whether or not it sees the cause as cleared."""
    resumed_at: datetime | None = None
    """Set when a worker fetched the message back and its handler started: the record stays
    until the delivery settles (completed or dead-lettered: dropped; parked or given back:
    replaced), so a worker that dies meanwhile strands nothing — the record is fetchable again
    once :data:`UNCONFIRMED_AFTER` has passed."""
    llm_requests: list[str] = Field(default_factory=list)
    """Reason ``AwaitingBatch``: the keys of the batch-mode LLM requests it waits for; it is
    marked for resumption once every one is answered or failed
    (:meth:`ParkedMixin.request_resume_for_llm_requests`)."""

    @property
    def id(self) -> str:
        return f"{self.topic}/{self.subscription}#{self.sequence_number}"

    # What a resumer may fetch back, judged on a record in hand; `_fetchable_clauses` and
    # `_NOT_WAITING` say the same to the server.

    def deferral_settled(self, now: datetime) -> bool:
        """Whether its message can be fetched back as far as the deferral goes: confirmed, or
        unconfirmed for longer than :data:`UNCONFIRMED_AFTER` (it happened or never will)."""
        return self.deferred or self.parked_at < now - UNCONFIRMED_AFTER

    def in_hands(self, now: datetime) -> bool:
        """Whether a worker fetched it back less than :data:`UNCONFIRMED_AFTER` ago (its
        delivery has not settled yet, or that worker died and it is not stale yet)."""
        return self.resumed_at is not None and self.resumed_at >= now - UNCONFIRMED_AFTER

    @property
    def waiting(self) -> bool:
        """``AwaitingBatch`` and not marked for resumption: its requests are not all answered."""
        return self.reason == AWAITING_BATCH and self.resume_requested_at is None


class ParkedGroup(BaseModel):
    """Parked messages of one subscription (and handler) for one reason."""

    model_config = ConfigDict(frozen=True)

    topic: str
    subscription: str
    handler: str | None
    reason: str
    count: int
    description: str = ""
    """The description of the most recently parked of them: why, in the words of the error."""


def _query(
    *,
    topic: str | None = None,
    subscription: str | None = None,
    reason: str | None = None,
    batch_id: str | None = None,
    handler: str | None = None,
) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for field, value in (
        ("topic", topic),
        ("subscription", subscription),
        ("reason", reason),
        ("batch_id", batch_id),
        ("handler", handler),
    ):
        if value is not None:
            query[field] = value
    return query


def _fetchable_clauses(now: datetime, *, confirmed: bool) -> list[dict[str, Any]]:
    """Not in a worker's hands and (``confirmed``) its deferral settled, said to the server
    (:meth:`ParkedMessage.in_hands`, :meth:`ParkedMessage.deferral_settled`)."""
    stale = now - UNCONFIRMED_AFTER
    clauses: list[dict[str, Any]] = [
        {"$or": [{"resumed_at": None}, {"resumed_at": {"$lt": stale}}]}
    ]
    if confirmed:
        clauses.append({"$or": [{"deferred": True}, {"parked_at": {"$lt": stale}}]})
    return clauses


_NOT_WAITING: dict[str, Any] = {
    "$or": [{"reason": {"$ne": AWAITING_BATCH}}, {"resume_requested_at": {"$ne": None}}]
}
"""Not :attr:`ParkedMessage.waiting`, said to the server."""


class ParkedMixin(StoreBase):
    """Records of parked (deferred) messages."""

    async def ensure_indexes(self) -> None:
        await super().ensure_indexes()
        with _translated("ensure the indexes of parked"):
            await self._c(COLLECTION).create_indexes(
                [IndexModel([("llm_requests", ASCENDING)], sparse=True)]
            )

    async def park(self, parked: ParkedMessage) -> None:
        """Write ``parked``'s record, before its message is deferred (kept as it is if the
        message has one already: parking twice keeps the first reason — except a record of a
        resumed delivery, :meth:`mark_parked_resumed`, which this delivery's new park
        replaces).

        One upserting replace, grouped with the other deliveries' (:meth:`_parked_write`):
        it replaces a resumed record or inserts a new one; a record not resumed makes the
        insert fail on its ``_id`` (a duplicate key), which is what keeps it."""
        replace = ReplaceOne(
            {"_id": parked.id, "resumed_at": {"$ne": None}}, parked.model_dump(), upsert=True
        )
        # parked already and not resumed: the first record stays (the duplicate key)
        with _translated(f"park {parked.id}"), contextlib.suppress(DuplicateKeyError):
            await self._parked_write(replace)

    async def mark_parked_resumed(self, parked: Iterable[ParkedMessage]) -> None:
        """A worker has these messages back (fetched from deferral, about to run): their
        records stay (not fetched again meanwhile) until each delivery settles
        (:meth:`unpark` once done, :meth:`park` again once parked again). One update per
        :data:`IN_SLICE` records: a resumer marks a whole page it fetched at once."""
        ids = list(dict.fromkeys(p.id for p in parked))
        now = datetime.now(UTC)
        with _translated(f"mark {len(ids)} parked records resumed"):
            for part in in_slices(ids):
                await self._c(COLLECTION).update_many(
                    {"_id": {"$in": part}}, {"$set": {"resumed_at": now}}
                )

    async def mark_parked_deferred(self, parked: ParkedMessage) -> None:
        """Confirm that Service Bus has deferred ``parked``'s message: it may be fetched back."""
        with _translated(f"confirm the deferral of {parked.id}"):
            await self._parked_write(UpdateOne({"_id": parked.id}, {"$set": {"deferred": True}}))

    async def unpark(self, parked: ParkedMessage) -> None:
        """Drop ``parked``'s record (its message is back with a worker, or gone)."""
        with _translated(f"unpark {parked.id}"):
            await self._parked_write(DeleteOne({"_id": parked.id}))

    async def _parked_write(self, op: UpdateOne | ReplaceOne[Any] | DeleteOne) -> bool:
        """One record's write, sent with the other deliveries' waiting at the same moment as
        one durable bulk write (:mod:`docbus.store._group`): a batch round parks and resumes
        thousands of deliveries at once, and one command per record each was most of the
        server's work in a round (``bench/batch_mode.py``)."""
        return await self._writer(COLLECTION).write(op)

    async def parked(
        self,
        *,
        topic: str | None = None,
        subscription: str | None = None,
        reason: str | None = None,
        batch_id: str | None = None,
        handler: str | None = None,
        fetchable: bool = False,
        confirmed: bool = True,
        waiting: bool = True,
        after: int | None = None,
        limit: int = 0,
    ) -> list[ParkedMessage]:
        """Parked messages matching every filter given, by sequence number (``limit`` 0: all).

        ``fetchable``: only those that can be fetched back now — deferred, or unconfirmed for
        longer than :data:`UNCONFIRMED_AFTER` (:meth:`ParkedMessage.deferral_settled`;
        ``confirmed`` False: whatever their deferral) — and not in a worker's hands (resumed
        less than :data:`UNCONFIRMED_AFTER` ago). ``waiting`` False: without the
        ``AwaitingBatch`` records not marked for resumption (their requests are not all
        answered: a worker cannot resume them, and a page of them must not hide those it can).
        ``after``: only sequence numbers above it (the next page).
        """
        query = _query(
            topic=topic, subscription=subscription, reason=reason, batch_id=batch_id,
            handler=handler,
        )  # fmt: skip
        if fetchable:
            query["$and"] = _fetchable_clauses(datetime.now(UTC), confirmed=confirmed)
        if after is not None:
            query["sequence_number"] = {"$gt": after}
        if not waiting:
            query.setdefault("$and", []).append(_NOT_WAITING)
        with _translated("read parked messages"):
            cursor = self._c(COLLECTION).find(query).sort("sequence_number", 1)
            if limit:
                cursor = cursor.limit(limit)
            return [ParkedMessage.model_validate(raw) async for raw in cursor]

    async def fetchable_parked(self, ids: Collection[str]) -> list[ParkedMessage]:
        """The records of ``ids`` that a resumer may fetch back now — as ``parked(fetchable=True,
        waiting=False)`` would return them — by sequence number. Read by id alone and judged
        here: beside an ``_id $in``, the clauses of that query make SecantusDB read the whole
        collection (270 ms for 100 ids among 2,000 records; 12 ms by id alone)."""
        with _translated("read parked messages"):
            cursor = self._c(COLLECTION).find({"_id": {"$in": list(ids)}})
            found = [ParkedMessage.model_validate(raw) async for raw in cursor]
        now = datetime.now(UTC)
        return sorted(
            (p for p in found if p.deferral_settled(now) and not p.in_hands(now) and not p.waiting),
            key=lambda p: p.sequence_number,
        )

    async def count_parked(
        self,
        *,
        batch_id: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        handler: str | None = None,
    ) -> int:
        """How many messages are parked (of a batch, a subscription, a handler)."""
        query = _query(topic=topic, subscription=subscription, batch_id=batch_id, handler=handler)
        with _translated("count parked messages"):
            return int(await self._c(COLLECTION).count_documents(query))

    async def parked_groups(
        self,
        *,
        batch_id: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        handler: str | None = None,
        reason: str | None = None,
    ) -> list[ParkedGroup]:
        """Parked messages counted per subscription, handler and reason, largest first."""
        match = _query(
            topic=topic, subscription=subscription, batch_id=batch_id, handler=handler,
            reason=reason,
        )  # fmt: skip
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$sort": {"parked_at": 1}},
            {
                "$group": {
                    "_id": {
                        "t": "$topic",
                        "s": "$subscription",
                        "h": "$handler",
                        "r": "$reason",
                    },
                    "count": {"$sum": 1},
                    "description": {"$last": "$description"},
                }
            },
        ]
        groups = []
        with _translated("count parked messages by reason"):
            async for row in await self._c(COLLECTION).aggregate(pipeline):
                key = row["_id"]
                groups.append(
                    ParkedGroup(
                        topic=str(key.get("t")),
                        subscription=str(key.get("s")),
                        handler=key.get("h"),
                        reason=str(key.get("r")),
                        count=int(row["count"]),
                        description=str(row.get("description") or ""),
                    )
                )
        return sorted(groups, key=lambda g: (-g.count, g.topic, g.subscription, g.reason))

    async def request_resume(
        self,
        *,
        batch_id: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        handler: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Ask workers to fetch these parked messages back at their next look, whatever they
        think of the cause; returns how many records were marked."""
        query = _query(
            topic=topic, subscription=subscription, reason=reason, batch_id=batch_id,
            handler=handler,
        )  # fmt: skip
        query["resume_requested_at"] = None
        with _translated("request the resumption of parked messages"):
            outcome = await self._c(COLLECTION).update_many(
                query, {"$set": {"resume_requested_at": datetime.now(UTC)}}
            )
        return outcome.modified_count

    async def count_resuming_for_llm_requests(self) -> int:
        """Deliveries parked ``AwaitingBatch`` marked for resumption that have not parked again
        or settled yet: each is on its way to register its next requests (the submitter waits
        for them before it calls a round complete)."""
        query = {"reason": AWAITING_BATCH, "resume_requested_at": {"$ne": None}}
        with _translated("count deliveries resuming from a batch round"):
            return int(await self._c(COLLECTION).count_documents(query))

    async def resume_parked_if_answered(self, parked: ParkedMessage) -> bool:
        """Mark ``parked`` (a delivery that has just parked ``AwaitingBatch``) for resumption
        if every request it waits for is answered or failed already (the submitter settled
        them while it was parking, after it looked for deliveries to resume); returns whether
        it did. One read of the requests' states, grouped with the other deliveries' (a
        round parks thousands at once), and a write only in that rare case."""
        keys = list(dict.fromkeys(parked.llm_requests))
        if not keys:
            return False
        finder = request_finder(self)
        with _translated(f"read the requests {parked.id} waits for"):
            found = await asyncio.gather(*(finder.find(key, key) for key in keys))
        done = (LLMRequestState.ANSWERED.value, LLMRequestState.FAILED.value)
        if not all(raws and raws[0].get("state") in done for raws in found):
            return False
        with _translated(f"request the resumption of {parked.id}"):
            await self._parked_write(
                UpdateOne(
                    {"_id": parked.id, "reason": AWAITING_BATCH, "resume_requested_at": None},
                    {"$set": {"resume_requested_at": datetime.now(UTC)}},
                )
            )
        return True

    async def request_resume_for_llm_requests(self, keys: Iterable[str] | None = None) -> int:
        """Mark for resumption the deliveries parked ``AwaitingBatch`` on any of ``keys``
        (None: on any request) whose every request is answered or failed now; returns how
        many were marked. Called once requests are settled (a whole provider batch's keys),
        and by an idle worker (None).

        Keys go to the server in slices (:func:`docbus.store._base.in_slices`), not as one
        ``$in`` of a whole round's thousands."""
        query: dict[str, Any] = {"reason": AWAITING_BATCH, "resume_requested_at": None}
        slices: list[list[str] | None] = [None]
        if keys is not None:
            wanted = list(dict.fromkeys(keys))
            if not wanted:
                return 0
            slices = list(in_slices(wanted))
        waiting: dict[str, list[str]] = {}
        done: set[str] = set()
        done_states = [LLMRequestState.ANSWERED.value, LLMRequestState.FAILED.value]
        with _translated("find the deliveries parked on LLM requests"):
            for part in slices:
                if part is not None:
                    query["llm_requests"] = {"$in": part}
                async for raw in self._c(COLLECTION).find(query, {"llm_requests": 1}):
                    waiting[raw["_id"]] = list(raw.get("llm_requests") or [])
            needed = list({key for record_keys in waiting.values() for key in record_keys})
            for part in in_slices(needed):
                cursor = self._c(REQUESTS).find(
                    {"_id": {"$in": part}, "state": {"$in": done_states}}, {"_id": 1}
                )
                done.update([raw["_id"] async for raw in cursor])
        ready = [rid for rid, record_keys in waiting.items() if set(record_keys) <= done]
        marked = 0
        now = datetime.now(UTC)
        with _translated("request the resumption of deliveries parked on LLM requests"):
            for part in in_slices(ready):
                outcome = await self._c(COLLECTION).update_many(
                    {"_id": {"$in": part}, "resume_requested_at": None},
                    {"$set": {"resume_requested_at": now}},
                )
                marked += outcome.modified_count
        return marked
