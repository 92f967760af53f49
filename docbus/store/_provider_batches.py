"""Provider batches: the ``llm_provider_batches`` records that make batch mode crash-safe.

One record per provider batch docbus makes, written *before* each step with an effect at the
provider, so that after a crash the record says what may exist there (the states and the step
each calls for after a crash: :mod:`docbus.llm_batch._lifecycle`)::

    claim_llm_requests      -> claiming -> claimed   (or abandoned if nothing could be claimed)
    record_upload           -> uploaded              (input file id)
    mark_creating           -> creating              (batches.create may now happen)
    record_created          -> open                  (provider batch id)
    record_poll             -> open                  (status, request counts, next poll)
    begin_collecting        -> collecting            (terminal status, file ids, errors)
    apply_llm_outcomes      -> collecting            (requests moved on; repeatable)
    apply_llm_settlement    -> settled               (the same, then the record closed)
    abandon_provider_batch  -> abandoned             (requests released; only before creating)

A request joins a record only by a conditional update from ``pending`` (with no
``provider_batch``), so it is never in two open records; applying a settlement changes only
the requests still ``submitted`` to this record, so repeating it after a crash mid-download
changes nothing twice. Each transition carries the submitter lease's fencing ``token``
(:mod:`docbus.store._submitter`) and is refused (:class:`StaleTransition`) when the record has
moved on or a newer lease holder has touched it, so a submitter that lost its lease cannot
overwrite its successor. Every write is durable (``w: majority, j: true``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, UpdateOne

from docbus.llm_batch import OPEN_STATES, History, Kind, ProviderBatchState, Settlement
from docbus.store._base import StoreBase, _now, in_slices
from docbus.store._errors import StoreError, _translated
from docbus.store._llm_requests import (
    REQUESTS,
    LLMRequestRecord,
    LLMRequestState,
    request_record,
)

PROVIDER_BATCHES = "llm_provider_batches"


class StaleTransition(StoreError):
    """The provider-batch record is not in a state this step may leave, or a newer submitter
    lease has touched it: this submitter must stop acting on it (and re-read it)."""


class ProviderBatchRecord(BaseModel):
    """docbus's record of one provider batch."""

    model_config = ConfigDict(frozen=True)

    id: str
    endpoint: str
    model: str
    keys: list[str]
    """Its requests' keys (= custom ids) in input-file line order."""
    batch_ids: list[str] = Field(default_factory=list)
    """The docbus batches its requests belong to."""
    state: ProviderBatchState
    token: int = 0
    """The fencing token of the last submitter lease that moved it."""
    file_id: str | None = None
    provider_batch_id: str | None = None
    provider_status: str | None = None
    request_counts: dict[str, int] = Field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list)
    polls: int = 0
    next_poll_at: datetime | None = None
    outcome: dict[str, int] = Field(default_factory=dict)
    """Once settled: requests answered, resubmitted, dead-lettered, released, held."""
    files_deleted_at: datetime | None = None
    """When its files (input, output, error) were deleted at the provider, once it ended."""
    created_at: datetime
    updated_at: datetime

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


def _record(raw: Mapping[str, Any]) -> ProviderBatchRecord:
    return ProviderBatchRecord.model_validate({**raw, "id": raw["_id"]})


class ProviderBatchesMixin(StoreBase):
    """Provider-batch records and the claim and settlement of their requests."""

    async def ensure_indexes(self) -> None:
        await super().ensure_indexes()
        with _translated("ensure the indexes of llm_provider_batches"):
            await self._c(PROVIDER_BATCHES).create_indexes(
                [
                    IndexModel([("state", ASCENDING)]),
                    IndexModel([("created_at", DESCENDING)]),
                    IndexModel([("batch_ids", ASCENDING)]),
                ]
            )

    # -- claim --------------------------------------------------------------------------------

    async def claim_llm_requests(
        self, record_id: str, endpoint: str, model: str, keys: Sequence[str], *, token: int
    ) -> ProviderBatchRecord:
        """Write record ``record_id`` for ``keys`` and claim those still pending.

        Returns the record: ``claimed`` with the keys actually claimed (in the given order),
        or ``abandoned`` when none could be (another record got them first). Safe to call
        again with the same arguments after a crash while the record is still ``claiming``: it
        picks up where it stopped; past that it claims nothing (:class:`StaleTransition`).
        """
        now = _now()
        wanted = list(dict.fromkeys(keys))
        with _translated(f"claim LLM requests for {record_id}"):
            await self._c(PROVIDER_BATCHES).update_one(
                {"_id": record_id},
                {
                    "$setOnInsert": {
                        "endpoint": endpoint,
                        "model": model,
                        "keys": wanted,
                        "batch_ids": [],
                        "state": ProviderBatchState.CLAIMING.value,
                        "token": token,
                        "created_at": now,
                        "updated_at": now,
                    }
                },
                upsert=True,
            )
            current = await self._c(PROVIDER_BATCHES).find_one({"_id": record_id})
            if current is None or current.get("state") != ProviderBatchState.CLAIMING.value:
                # past claiming, its file may exist: claiming more would strand them there
                state = None if current is None else current.get("state")
                raise StaleTransition(f"provider batch {record_id} is {state}, not claiming")
            if int(current.get("token", 0)) > token:
                raise StaleTransition(f"provider batch {record_id} belongs to a newer lease")
            # One conditional update_many per slice of keys (IN_SLICE): each request is
            # claimed only if it is still pending with no provider batch, as one bulk of
            # per-key updates did, at half its cost on SecantusDB (a whole round's keys in
            # one $in would be quadratic on some servers).
            claim = {
                "$set": {
                    "state": LLMRequestState.SUBMITTED.value,
                    "provider_batch": record_id,
                    "updated_at": now,
                }
            }
            pending = {
                "state": LLMRequestState.PENDING.value,
                "provider_batch": None,
                "endpoint": endpoint,
                "model": model,
            }
            for part in in_slices(wanted):
                await self._c(REQUESTS).update_many({"_id": {"$in": part}, **pending}, claim)
            claimed: dict[str, str | None] = {}
            async for raw in self._c(REQUESTS).find(
                {"provider_batch": record_id, "state": LLMRequestState.SUBMITTED.value},
                {"_id": 1, "batch_id": 1},
            ):
                claimed[raw["_id"]] = raw.get("batch_id")
        ordered = [key for key in wanted if key in claimed]
        if not ordered:
            return await self._move(
                record_id, ProviderBatchState.ABANDONED, (ProviderBatchState.CLAIMING,), token
            )
        batch_ids = sorted({b for b in claimed.values() if b is not None})
        return await self._move(
            record_id,
            ProviderBatchState.CLAIMED,
            (ProviderBatchState.CLAIMING,),
            token,
            keys=ordered,
            batch_ids=batch_ids,
        )

    # -- the steps at the provider ------------------------------------------------------------

    async def record_upload(
        self, record_id: str, file_id: str, *, token: int
    ) -> ProviderBatchRecord:
        """The input file is uploaded: keep its id (``claimed`` -> ``uploaded``)."""
        return await self._move(
            record_id,
            ProviderBatchState.UPLOADED,
            (ProviderBatchState.CLAIMED,),
            token,
            file_id=file_id,
        )

    async def mark_creating(self, record_id: str, *, token: int) -> ProviderBatchRecord:
        """Say, before calling ``batches.create``, that a provider batch may now exist."""
        return await self._move(
            record_id,
            ProviderBatchState.CREATING,
            (ProviderBatchState.UPLOADED, ProviderBatchState.CREATING),
            token,
        )

    async def record_created(
        self, record_id: str, provider_batch_id: str, status: str, *, token: int
    ) -> ProviderBatchRecord:
        """The provider batch exists (created, or found after a crash): keep its id."""
        return await self._move(
            record_id,
            ProviderBatchState.OPEN,
            (ProviderBatchState.CREATING,),
            token,
            provider_batch_id=provider_batch_id,
            provider_status=status,
        )

    async def record_poll(
        self,
        record_id: str,
        status: str,
        request_counts: Mapping[str, int],
        next_poll_at: datetime,
        *,
        token: int,
    ) -> ProviderBatchRecord:
        """What the last poll of an open provider batch said, and when to poll next."""
        return await self._move(
            record_id,
            ProviderBatchState.OPEN,
            (ProviderBatchState.OPEN,),
            token,
            provider_status=status,
            request_counts=dict(request_counts),
            next_poll_at=next_poll_at,
            inc={"polls": 1},
        )

    async def begin_collecting(
        self,
        record_id: str,
        status: str,
        *,
        token: int,
        request_counts: Mapping[str, int] | None = None,
        output_file_id: str | None = None,
        error_file_id: str | None = None,
        errors: Iterable[Mapping[str, Any]] = (),
    ) -> ProviderBatchRecord:
        """The provider batch ended in ``status``: keep what its files and errors are, before
        reading them (``open`` -> ``collecting``; repeating it is harmless)."""
        return await self._move(
            record_id,
            ProviderBatchState.COLLECTING,
            (ProviderBatchState.OPEN, ProviderBatchState.COLLECTING),
            token,
            provider_status=status,
            request_counts=dict(request_counts or {}),
            output_file_id=output_file_id,
            error_file_id=error_file_id,
            errors=[dict(e) for e in errors],
        )

    async def submitted_llm_requests(self, record_id: str) -> dict[str, LLMRequestRecord]:
        """The requests still submitted to record ``record_id``, by key (to rebuild its input
        file after a crash: same bodies, same bytes)."""
        with _translated(f"read the requests of {record_id}"):
            cursor = self._c(REQUESTS).find(
                {"provider_batch": record_id, "state": LLMRequestState.SUBMITTED.value}
            )
            return {raw["_id"]: request_record(raw) async for raw in cursor}

    async def submitted_llm_batches(self, record_id: str) -> dict[str, str | None]:
        """The docbus batch of each request still submitted to record ``record_id``, by key
        (what its answers are charged to), without their bodies."""
        with _translated(f"read the batches of the requests of {record_id}"):
            cursor = self._c(REQUESTS).find(
                {"provider_batch": record_id, "state": LLMRequestState.SUBMITTED.value},
                {"batch_id": 1},
            )
            return {raw["_id"]: raw.get("batch_id") async for raw in cursor}

    async def llm_request_history(self, record_id: str) -> dict[str, History]:
        """What earlier provider batches did to the requests still submitted to this one
        (the ``history`` :func:`docbus.llm_batch.settle` needs)."""
        with _translated(f"read the history of {record_id}'s requests"):
            cursor = self._c(REQUESTS).find(
                {"provider_batch": record_id, "state": LLMRequestState.SUBMITTED.value},
                {"attempts": 1, "expiries": 1},
            )
            return {
                raw["_id"]: History(
                    attempts=int(raw.get("attempts", 0)), expiries=int(raw.get("expiries", 0))
                )
                async for raw in cursor
            }

    async def apply_llm_settlement(
        self, record_id: str, settlement: Settlement, *, token: int
    ) -> ProviderBatchRecord:
        """Move every request of a ``collecting`` record on as ``settlement`` says
        (:meth:`apply_llm_outcomes`), then mark the record ``settled``."""
        await self.apply_llm_outcomes(record_id, settlement, token=token)
        return await self._move(
            record_id,
            ProviderBatchState.SETTLED,
            (ProviderBatchState.COLLECTING,),
            token,
            outcome={
                "answered": len(settlement.answers),
                "resubmitted": len(settlement.resubmit),
                "dead": len(settlement.dead),
                "released": len(settlement.released),
                "held": len(settlement.cancelled),
            },
        )

    async def apply_llm_outcomes(
        self, record_id: str, settlement: Settlement, *, token: int
    ) -> None:
        """Move the requests of a ``collecting`` record on as ``settlement`` says: answers
        kept, dead letters failed, resubmissions back to pending (counted), released ones back
        uncounted, cancelled ones held. Only requests still submitted to this record change,
        so applying it again — or a fuller settlement after a crash mid-download — changes
        nothing twice."""
        now = _now()
        record = await self.get_provider_batch(record_id)
        if record is None or record.state is not ProviderBatchState.COLLECTING:
            raise StaleTransition(f"provider batch {record_id} is not collecting")
        if record.token > token:
            raise StaleTransition(f"provider batch {record_id} belongs to a newer lease")
        mine = {"provider_batch": record_id, "state": LLMRequestState.SUBMITTED.value}
        ops: list[UpdateOne] = []
        for key, answer in settlement.answers.items():
            ops.append(
                UpdateOne(
                    {"_id": key, **mine},
                    {
                        "$set": {
                            "state": LLMRequestState.ANSWERED.value,
                            "answer": {
                                "body": dict(answer.body),
                                "request_id": answer.request_id,
                                "prompt_tokens": answer.prompt_tokens,
                                "completion_tokens": answer.completion_tokens,
                                "provider_batch_id": record.provider_batch_id,
                                "record_id": record_id,
                            },
                            "updated_at": now,
                        }
                    },
                )
            )
        for key, failure in settlement.dead.items():
            ops.append(
                UpdateOne(
                    {"_id": key, **mine},
                    {
                        "$set": {
                            "state": LLMRequestState.FAILED.value,
                            "failure": _failure(failure.reason, failure.description),
                            "updated_at": now,
                        }
                    },
                )
            )
        for key, failure in settlement.resubmit.items():
            counter = "expiries" if failure.kind is Kind.EXPIRED else "attempts"
            ops.append(
                UpdateOne(
                    {"_id": key, **mine},
                    {
                        "$set": _back_to(
                            LLMRequestState.PENDING, failure.reason, failure.description, now
                        ),
                        "$inc": {counter: 1},
                    },
                )
            )
        systemic = settlement.systemic
        for key in settlement.released:
            reason = systemic.reason if systemic else "ReleasedWithItsBatch"
            description = systemic.description if systemic else ""
            ops.append(
                UpdateOne(
                    {"_id": key, **mine},
                    {"$set": _back_to(LLMRequestState.PENDING, reason, description, now)},
                )
            )
        for key in settlement.cancelled:
            ops.append(
                UpdateOne(
                    {"_id": key, **mine},
                    {"$set": _back_to(LLMRequestState.HELD, "BatchCancelled", "", now)},
                )
            )
        with _translated(f"settle the requests of {record_id}"):
            if ops:
                await self._c(REQUESTS).bulk_write(ops, ordered=False)

    async def add_provider_batch_cost(
        self,
        record_id: str,
        batch_id: str,
        *,
        usd: float,
        prompt_tokens: int,
        completion_tokens: int,
        calls: int,
    ) -> bool:
        """Add what provider batch ``record_id`` answered for docbus batch ``batch_id`` (at the
        batch price) to that batch's totals, once: the record's id is kept on the batch in
        the same update, so collecting it again after a crash adds nothing. Returns whether
        it was added now."""
        increments = {
            "cost.usd": usd,
            "cost.prompt_tokens": prompt_tokens,
            "cost.completion_tokens": completion_tokens,
            "cost.calls": calls,
        }
        with _translated(f"add the cost of {record_id} to batch {batch_id}"):
            outcome = await self._c("batches").update_one(
                {"_id": batch_id, "llm_provider_batches_costed": {"$ne": record_id}},
                {"$inc": increments, "$push": {"llm_provider_batches_costed": record_id}},
            )
        return outcome.modified_count == 1

    async def abandon_provider_batch(self, record_id: str, *, token: int) -> ProviderBatchRecord:
        """Release the requests of a record no provider batch was created for (``claiming``,
        ``claimed`` or ``uploaded``) and mark it ``abandoned``; they are pending again,
        uncounted."""
        record = await self.get_provider_batch(record_id)
        early = (
            ProviderBatchState.CLAIMING,
            ProviderBatchState.CLAIMED,
            ProviderBatchState.UPLOADED,
        )
        if record is None or record.state not in early:
            raise StaleTransition(f"provider batch {record_id} cannot be abandoned now")
        with _translated(f"release the requests of {record_id}"):
            await self._c(REQUESTS).update_many(
                {"provider_batch": record_id, "state": LLMRequestState.SUBMITTED.value},
                {
                    "$set": {
                        "state": LLMRequestState.PENDING.value,
                        "provider_batch": None,
                        "updated_at": _now(),
                    }
                },
            )
        return await self._move(record_id, ProviderBatchState.ABANDONED, early, token)

    # -- reading ------------------------------------------------------------------------------

    async def has_open_llm_requests(self) -> bool:
        """Whether any request waits for a provider batch (pending or submitted): a worker
        with batch-mode work outstanding is not idle.

        A submitted request's provider batch record is open — it is claimed before its
        requests and settled or abandoned after them — so the few open records answer for a
        round's thousands of submitted requests, which a query of their own would read (an
        idle worker asks every fraction of a second while the provider works)."""
        open_states = [state.value for state in OPEN_STATES]
        with _translated("look for open LLM requests"):
            if await self._c(PROVIDER_BATCHES).find_one(
                {"state": {"$in": open_states}}, {"_id": 1}
            ):
                return True
            pending = {"state": LLMRequestState.PENDING.value}
            return await self._c(REQUESTS).find_one(pending, {"_id": 1}) is not None

    async def get_provider_batch(self, record_id: str) -> ProviderBatchRecord | None:
        with _translated(f"read provider batch {record_id}"):
            raw = await self._c(PROVIDER_BATCHES).find_one({"_id": record_id})
        return _record(raw) if raw else None

    async def open_provider_batches(self) -> list[ProviderBatchRecord]:
        """Records not yet settled or abandoned, oldest first (a submitter resumes these)."""
        states = [state.value for state in OPEN_STATES]
        with _translated("read open provider batches"):
            cursor = (
                self._c(PROVIDER_BATCHES)
                .find({"state": {"$in": states}})
                .sort("created_at", ASCENDING)
            )
            return [_record(raw) async for raw in cursor]

    async def provider_batches_with_files(self, *, limit: int = 100) -> list[ProviderBatchRecord]:
        """Ended records (settled, or abandoned after an upload) whose files are still at the
        provider, oldest first: the submitter deletes them."""
        ended = [ProviderBatchState.SETTLED.value, ProviderBatchState.ABANDONED.value]
        query = {
            "state": {"$in": ended},
            "files_deleted_at": None,
            "$or": [{field: {"$ne": None}} for field in _FILE_FIELDS],
        }
        with _translated("read provider batches with files"):
            cursor = self._c(PROVIDER_BATCHES).find(query).sort("created_at", ASCENDING)
            return [_record(raw) async for raw in cursor.limit(limit)]

    async def mark_provider_batch_files_deleted(self, record_id: str) -> None:
        """Note that an ended record's files are gone from the provider."""
        with _translated(f"mark the files of provider batch {record_id} deleted"):
            await self._c(PROVIDER_BATCHES).update_one(
                {"_id": record_id}, {"$set": {"files_deleted_at": _now()}}
            )

    async def provider_batches(
        self, *, batch_id: str | None = None, limit: int = 50
    ) -> list[ProviderBatchRecord]:
        """Records newest first (of one docbus batch), for ``docbus batches list``."""
        query: dict[str, Any] = {} if batch_id is None else {"batch_ids": batch_id}
        with _translated("list provider batches"):
            cursor = (
                self._c(PROVIDER_BATCHES).find(query).sort("created_at", DESCENDING).limit(limit)
            )
            return [_record(raw) async for raw in cursor]

    # -- the one conditional transition -------------------------------------------------------

    async def _move(
        self,
        record_id: str,
        to: ProviderBatchState,
        allowed: Sequence[ProviderBatchState],
        token: int,
        *,
        inc: Mapping[str, int] | None = None,
        **fields: Any,
    ) -> ProviderBatchRecord:
        update: dict[str, Any] = {
            "$set": {"state": to.value, "token": token, "updated_at": _now(), **fields}
        }
        if inc:
            update["$inc"] = dict(inc)
        with _translated(f"move provider batch {record_id} to {to.value}"):
            raw = await self._c(PROVIDER_BATCHES).find_one_and_update(
                {
                    "_id": record_id,
                    "state": {"$in": [state.value for state in allowed]},
                    "token": {"$lte": token},
                },
                update,
                return_document=ReturnDocument.AFTER,
            )
        if raw is None:
            current = await self.get_provider_batch(record_id)
            where = "missing" if current is None else f"{current.state}, token {current.token}"
            raise StaleTransition(
                f"provider batch {record_id} cannot move to {to.value} with token {token} "
                f"(it is {where})"
            )
        return _record(raw)


_FILE_FIELDS = ("file_id", "output_file_id", "error_file_id")


def _failure(reason: str, description: str) -> dict[str, str]:
    return {"reason": reason, "description": description}


def _back_to(
    state: LLMRequestState, reason: str, description: str, now: datetime
) -> dict[str, Any]:
    return {
        "state": state.value,
        "provider_batch": None,
        "failure": _failure(reason, description),
        "updated_at": now,
    }
