"""Parking: messages set aside without spending delivery attempts, and their resumption.

When a failure is not the message's fault — the LLM endpoint refuses our key, the quota is
gone (circuit breaker), or the batch has spent its budget — the worker defers the message
(Service Bus keeps it, never redelivers it on its own) and writes a ``parked`` record in Mongo
with the sequence number needed to fetch it back. Once the condition clears, any worker
resumes the parked messages of its subscriptions with ``receive_deferred_messages`` and runs
them as ordinary deliveries. The Mongo record is written before the deferral, so a crash in
between leaves at worst a record for a message that is still active (harmless: resuming it
finds nothing and drops the record). Neighbours: :mod:`subscriber.processing` parks,
:mod:`subscriber.worker` resumes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from docbus.store import Store

COLLECTION = "parked"


class ParkedMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    subscription: str
    sequence_number: int
    reason: str
    description: str = ""
    batch_id: str | None = None
    doc_id: str | None = None
    message_id: str | None = None
    parked_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    deferred: bool = False
    """Set once Service Bus has deferred the message; only then can it be fetched back."""

    @property
    def id(self) -> str:
        return f"{self.topic}/{self.subscription}#{self.sequence_number}"


async def park(store: Store, parked: ParkedMessage) -> None:
    document: dict[str, Any] = parked.model_dump()
    await store.database[COLLECTION].update_one(
        {"_id": parked.id}, {"$setOnInsert": document}, upsert=True
    )


async def mark_deferred(store: Store, parked: ParkedMessage) -> None:
    await store.database[COLLECTION].update_one({"_id": parked.id}, {"$set": {"deferred": True}})


# A record whose deferral was never confirmed (the worker died in between) is looked at
# after this long; by then the deferral either happened or never will.
UNCONFIRMED_AFTER = timedelta(minutes=5)


async def parked_messages(
    store: Store, topic: str, subscription: str, *, reason: str | None = None, limit: int = 100
) -> list[ParkedMessage]:
    """Parked messages that can be fetched back: deferred, or unconfirmed for a while."""
    stale = datetime.now(UTC) - UNCONFIRMED_AFTER
    query: dict[str, Any] = {
        "topic": topic,
        "subscription": subscription,
        "$or": [{"deferred": True}, {"parked_at": {"$lt": stale}}],
    }
    if reason is not None:
        query["reason"] = reason
    cursor = store.database[COLLECTION].find(query).sort("sequence_number", 1).limit(limit)
    return [ParkedMessage.model_validate(doc) async for doc in cursor]


async def unpark(store: Store, parked: ParkedMessage) -> None:
    await store.database[COLLECTION].delete_one({"_id": parked.id})


async def count_parked(store: Store, *, batch_id: str | None = None) -> int:
    query: dict[str, Any] = {} if batch_id is None else {"batch_id": batch_id}
    return int(await store.database[COLLECTION].count_documents(query))
