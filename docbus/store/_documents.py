"""Documents and payloads: each published document's input, and its claim-checked content.

:class:`DocumentsMixin` keeps the ``documents`` collection (a batch's generation-0 envelopes,
so it can be replayed without its source files) and ``payloads`` (content too large for a
message, stored once per hash and checked on load). The claim-check reference itself is
:class:`docbus.envelope.ClaimCheck`; replays (:mod:`docbus.store._replays`) read documents back.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pymongo import ASCENDING, ReplaceOne
from pymongo.errors import BulkWriteError

from docbus.envelope import ClaimCheck, Envelope, claim_check_for
from docbus.store._base import StoreBase, _now
from docbus.store._errors import PayloadError, _translated

MAX_PAYLOAD_BYTES = 15 * 1024 * 1024
"""Largest claim-checked document: one Mongo document holds at most 16 MiB."""

_NOT_RECORDED = {"generation", "replay_of", "replayed_at", "target_subscription", "run_id"}
"""Envelope fields of a message, not of its document: ``documents`` holds generation 0."""


_DUPLICATE_KEY = 11000


def batch_documents(batch_id: str) -> dict[str, Any]:
    """The filter of a batch's records in ``documents``: a range of ``_id`` (``batch:doc``).

    Batch ids hold no ``:`` or ``;`` (:data:`~docbus.envelope.BATCH_ID_PATTERN`), so the ids
    from ``batch:`` up to ``batch;`` are exactly the batch's, and the ``_id`` index answers
    the query (in ``_id`` order) without a secondary index: ``documents`` keeps none, since
    each would cost every published document an index insert (on SecantusDB, more than the
    insert itself).
    """
    return {"_id": {"$gte": f"{batch_id}:", "$lt": f"{batch_id};"}}


def _already_recorded(error: BulkWriteError) -> set[str]:
    """The ids an insert refused only because they exist; re-raises any other refusal."""
    details = error.details
    refused = details.get("writeErrors", [])
    if details.get("writeConcernErrors") or any(e.get("code") != _DUPLICATE_KEY for e in refused):
        raise error
    return {e["op"]["_id"] for e in refused}


class DocumentsMixin(StoreBase):
    """Published documents' inputs and claim-checked payloads."""

    async def record_documents(self, envelopes: Iterable[Envelope]) -> int:
        """Record published documents' inputs (idempotent per batch and doc). Returns the count.

        One durable bulk insert (an upsert costs the server about twice as much); only the
        documents already recorded (a resumed or repeated publish) are then replaced.
        """
        now = _now()
        records = []
        for envelope in envelopes:
            fields = envelope.model_dump(
                mode="python",
                exclude_none=True,
                exclude=_NOT_RECORDED,
            )
            fields["recorded_at"] = now
            key = f"{envelope.batch_id}:{envelope.doc_id}"
            records.append({"_id": key, **fields})
        if not records:
            return 0
        with _translated("record documents"):
            try:
                await self._c("documents").insert_many(records, ordered=False)
            except BulkWriteError as exc:
                recorded = _already_recorded(exc)
                again = [ReplaceOne({"_id": r["_id"]}, r, upsert=True) for r in records
                         if r["_id"] in recorded]  # fmt: skip
                await self._c("documents").bulk_write(again, ordered=False)
        return len(records)

    async def get_document(self, batch_id: str, doc_id: str) -> Envelope | None:
        """The generation-0 envelope of a published document."""
        with _translated(f"read document {batch_id}:{doc_id}"):
            raw = await self._c("documents").find_one({"_id": f"{batch_id}:{doc_id}"})
        return Envelope.model_validate(raw) if raw else None

    async def iter_documents(self, batch_id: str) -> AsyncIterator[Envelope]:
        """Every recorded document of a batch, as generation-0 envelopes (for replays)."""
        with _translated(f"read documents of {batch_id}"):
            cursor = self._c("documents").find(batch_documents(batch_id)).sort("_id", ASCENDING)
            async for raw in cursor:
                yield Envelope.model_validate(raw)

    async def documents_with_outcome(self, batch_id: str) -> set[str]:
        """Ids of the batch's documents that have a result or a dead letter, in any handler.

        Such a document reached the topic (a topic send reaches every subscription at once);
        the publisher's ``--resume`` sends again only recorded documents outside this set.
        """
        with _translated(f"read outcomes of {batch_id}"):
            done = await self._c("results").distinct("doc_id", {"batch_id": batch_id})
            dead = await self._c("dead_letters").distinct("doc_id", {"batch_id": batch_id})
        return {str(doc_id) for doc_id in [*done, *dead] if doc_id is not None}

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
