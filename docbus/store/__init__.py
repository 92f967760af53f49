"""The store: docbus's MongoDB collections behind one narrow async seam.

:class:`Store` owns a ``pymongo.AsyncMongoClient`` and the collections ``batches`` (one record per
published batch), ``documents`` (each published document's input, so a batch can be replayed
without its source files), ``payloads`` (claim-checked content), ``results`` (versioned handler
outputs), ``dead_letters`` (the Mongo copy of every dead letter), ``checkpoints`` (step outputs)
and ``llm_calls`` (audit rows, insert only), ``parked`` (deferred messages), ``retries`` (notes
of the deliveries a worker is retrying); ``llm_requests``, ``llm_provider_batches`` and
``llm_submitter`` hold batch mode's pending LLM requests, provider-batch records and the
submitter lease; ``workers`` (heartbeats); ``generations``
(each document's last replay generation), ``replays`` and ``rollbacks`` (one audit record per
run) serve the replay tooling.
The shapes it returns are in :mod:`docbus.records`; the message contract it stores is
:mod:`docbus.envelope`. Nothing outside this package touches pymongo or a collection: the
operator queries (:mod:`docbus.ops`) read through the methods here too. pymongo errors are
translated in one place (:func:`_translated`) into :class:`StoreError`.

Results are idempotent without transactions (so standalone MongoDB and Cosmos DB work too) and
insert-only: a result's ``_id`` is ``handler@message_id``, so a redelivered message's write is
refused as a duplicate and stores nothing, and a re-run of a document is one more version, one
insert, as cheap as a first run. Which version is current is never stored but worked out as the
versions are read: the highest-ranked one not rolled back (when its run was issued, then when it
was written: :func:`docbus.records.result_rank`) — exactly one per (document, handler) by
construction, whatever crashed or raced. Each version names the run that wrote it, so a rollback
withdraws exactly one run's versions and can be undone; the view ``current_results`` shows the
current versions to people querying Mongo themselves.

Every write the store makes is durable by the server's own definition — acknowledged once
journaled and, on a replica set, by a majority (``MongoSettings.write_concern`` and ``journal``)
— except the audit rows, checkpoints and cost increments a worker writes behind its handlers,
which the durable write of their delivery's result or dead letter makes durable with it (see
:mod:`docbus.store._base`).

The store is split by concept into private modules: the client and indexes
(:mod:`~docbus.store._base`), error translation (:mod:`~docbus.store._errors`), batches,
documents and payloads, results, dead letters, checkpoints, LLM audit and replays, combined
into :class:`Store` (:mod:`~docbus.store._store`). Import from here only.
"""

from __future__ import annotations

from docbus.store._checkpoints import Checkpoint, StoredStep
from docbus.store._dead_letters import DeadLetterFilter
from docbus.store._documents import MAX_PAYLOAD_BYTES
from docbus.store._errors import PayloadError, StoreError, StoreUnavailable
from docbus.store._errors import _translated as _translated
from docbus.store._group import LingerPermit, lingering, send_lingering_writes
from docbus.store._llm_requests import LLMRequestRecord, LLMRequestState, PendingGroup
from docbus.store._parked import ParkedGroup, ParkedMessage
from docbus.store._provider_batches import ProviderBatchRecord, StaleTransition
from docbus.store._store import Store
from docbus.store._submitter import SubmissionPause, SubmitterLease
from docbus.store._workers import SubscriptionClaim, WorkerHeartbeat

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Checkpoint",
    "DeadLetterFilter",
    "LLMRequestRecord",
    "LLMRequestState",
    "LingerPermit",
    "ParkedGroup",
    "ParkedMessage",
    "PayloadError",
    "PendingGroup",
    "ProviderBatchRecord",
    "StaleTransition",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredStep",
    "SubmissionPause",
    "SubmitterLease",
    "SubscriptionClaim",
    "WorkerHeartbeat",
    "lingering",
    "send_lingering_writes",
]

# Public names report the module they are imported from, as before the split (reprs, pickles).
Checkpoint.__module__ = __name__
DeadLetterFilter.__module__ = __name__
ParkedGroup.__module__ = __name__
ParkedMessage.__module__ = __name__
LLMRequestRecord.__module__ = __name__
PendingGroup.__module__ = __name__
ProviderBatchRecord.__module__ = __name__
StaleTransition.__module__ = __name__
SubmissionPause.__module__ = __name__
SubmitterLease.__module__ = __name__
PayloadError.__module__ = __name__
Store.__module__ = __name__
StoreError.__module__ = __name__
StoreUnavailable.__module__ = __name__
StoredStep.__module__ = __name__
SubscriptionClaim.__module__ = __name__
WorkerHeartbeat.__module__ = __name__
