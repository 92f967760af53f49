"""The batch submitter's lease and back-offs: the ``llm_submitter`` collection.

However many workers run, one submitter at a time turns pending LLM requests into provider
batches. :meth:`~SubmitterMixin.acquire_submitter_lease` gives the lease to one holder for
``ttl`` seconds; the holder renews it well within that
(:meth:`~SubmitterMixin.renew_submitter_lease`) and a killed process simply stops renewing, so
the lease expires and the next worker to ask gets it. Each new holder gets a larger fencing
``token``: provider-batch transitions (:mod:`docbus.store._provider_batches`) carry it and
refuse a holder older than the last one that touched the record. Expiry is judged on the asking
process's clock, so workers' clocks must agree to well under ``ttl`` (NTP does; ``ttl`` defaults
to a minute).

:meth:`~SubmitterMixin.pause_llm_submission` records a systemic refusal of one endpoint and
model (bad key, exhausted queued-token quota): the submitter skips that group until the pause
ends, and the pause is visible to status. Every write is durable.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from docbus.store._base import StoreBase, _now
from docbus.store._errors import _translated

SUBMITTER = "llm_submitter"
_LEASE_ID = "lease"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SubmitterLease(BaseModel):
    """The submitter lease as one holder holds it."""

    model_config = ConfigDict(frozen=True)

    holder: str
    token: int
    expires_at: datetime


class SubmissionPause(BaseModel):
    """A group of requests whose submission backs off after a systemic refusal."""

    model_config = ConfigDict(frozen=True)

    endpoint: str
    model: str
    until: datetime
    reason: str
    description: str = ""
    refusals: int = 1
    """Refusals in a row (for the next back-off)."""


def _lease(raw: dict[str, Any]) -> SubmitterLease:
    return SubmitterLease(
        holder=str(raw["holder"]), token=int(raw["token"]), expires_at=raw["expires_at"]
    )


class SubmitterMixin(StoreBase):
    """The one-holder submitter lease and the submission back-offs."""

    async def acquire_submitter_lease(
        self, holder: str, ttl: float, *, now: datetime | None = None
    ) -> SubmitterLease | None:
        """Take (or, for its holder, renew) the submitter lease for ``ttl`` seconds; None while
        another holder's lease runs. ``now`` is for tests (default: this process's clock)."""
        now = now or _now()
        expires = now + timedelta(seconds=ttl)
        leases = self._c(SUBMITTER)
        with _translated("acquire the submitter lease"):
            raw = await leases.find_one_and_update(
                {"_id": _LEASE_ID, "holder": holder, "expires_at": {"$gt": now}},
                {"$set": {"expires_at": expires}},
                return_document=ReturnDocument.AFTER,
            )
            if raw is None:  # free, expired, or someone else's
                raw = await leases.find_one_and_update(
                    {"_id": _LEASE_ID, "expires_at": {"$lte": now}},
                    {"$set": {"holder": holder, "expires_at": expires, "acquired_at": now},
                     "$inc": {"token": 1}},
                    return_document=ReturnDocument.AFTER,
                )  # fmt: skip
            if raw is None:
                try:
                    await leases.insert_one(
                        {
                            "_id": _LEASE_ID,
                            "holder": holder,
                            "token": 1,
                            "expires_at": expires,
                            "acquired_at": now,
                        }
                    )
                except DuplicateKeyError:
                    return None  # it exists and is someone else's, still running
                raw = {"holder": holder, "token": 1, "expires_at": expires}
        return _lease(raw)

    async def renew_submitter_lease(
        self, lease: SubmitterLease, ttl: float, *, now: datetime | None = None
    ) -> SubmitterLease | None:
        """Extend ``lease`` by ``ttl`` from now; None if it was lost (expired and taken, or
        expired: a lapsed lease is not renewed, it is acquired again with a new token)."""
        now = now or _now()
        with _translated("renew the submitter lease"):
            raw = await self._c(SUBMITTER).find_one_and_update(
                {
                    "_id": _LEASE_ID,
                    "holder": lease.holder,
                    "token": lease.token,
                    "expires_at": {"$gt": now},
                },
                {"$set": {"expires_at": now + timedelta(seconds=ttl)}},
                return_document=ReturnDocument.AFTER,
            )
        return _lease(raw) if raw else None

    async def release_submitter_lease(self, lease: SubmitterLease) -> None:
        """Give the lease up now (on a clean shutdown), so the next worker need not wait."""
        with _translated("release the submitter lease"):
            await self._c(SUBMITTER).update_one(
                {"_id": _LEASE_ID, "holder": lease.holder, "token": lease.token},
                {"$set": {"expires_at": _EPOCH}},
            )

    async def submitter_lease(self) -> SubmitterLease | None:
        """The lease as it stands (expired or not), for status."""
        with _translated("read the submitter lease"):
            raw = await self._c(SUBMITTER).find_one({"_id": _LEASE_ID})
        return _lease(raw) if raw else None

    # -- back-offs ----------------------------------------------------------------------------

    async def pause_llm_submission(
        self, endpoint: str, model: str, *, until: datetime, reason: str, description: str = ""
    ) -> SubmissionPause:
        """Back off submitting ``endpoint``/``model`` until ``until``; counts the refusals."""
        with _translated(f"pause LLM submission of {model}"):
            raw = await self._c(SUBMITTER).find_one_and_update(
                {"_id": f"pause:{endpoint}:{model}"},
                {
                    "$set": {
                        "kind": "pause",
                        "endpoint": endpoint,
                        "model": model,
                        "until": until,
                        "reason": reason,
                        "description": description,
                    },
                    "$inc": {"refusals": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        return SubmissionPause.model_validate(raw)

    async def llm_submission_pauses(self) -> list[SubmissionPause]:
        """Every recorded back-off (ended ones too, until cleared)."""
        with _translated("read LLM submission pauses"):
            cursor = self._c(SUBMITTER).find({"kind": "pause"})
            return [SubmissionPause.model_validate(raw) async for raw in cursor]

    async def clear_llm_submission_pause(self, endpoint: str, model: str) -> None:
        """Forget the back-off of a group the provider accepted again."""
        with _translated(f"clear the LLM submission pause of {model}"):
            await self._c(SUBMITTER).delete_one({"_id": f"pause:{endpoint}:{model}"})
