"""The store class: :class:`Store` combines the base and every concept mixin into one seam.

The client and lifecycle come from :mod:`docbus.store._base`; batches, documents and payloads,
results, dead letters, checkpoints, LLM audit rows, replays, parked messages, retry notes and
worker heartbeats each come from their own private module, as do batch mode's pending LLM
requests, provider-batch records and the submitter lease. The public surface is :mod:`docbus.store`.
"""

from __future__ import annotations

from docbus.settings import MongoSettings, Settings
from docbus.store._batches import BatchesMixin
from docbus.store._checkpoints import CheckpointsMixin
from docbus.store._dead_letters import DeadLettersMixin
from docbus.store._documents import DocumentsMixin
from docbus.store._llm import LLMAuditMixin
from docbus.store._llm_requests import LLMRequestsMixin
from docbus.store._parked import ParkedMixin
from docbus.store._provider_batches import ProviderBatchesMixin
from docbus.store._replays import ReplaysMixin
from docbus.store._results import ResultsMixin
from docbus.store._retries import RetriesMixin
from docbus.store._submitter import SubmitterMixin
from docbus.store._workers import WorkersMixin


class Store(
    BatchesMixin,
    DocumentsMixin,
    ResultsMixin,
    DeadLettersMixin,
    ReplaysMixin,
    CheckpointsMixin,
    LLMAuditMixin,
    ParkedMixin,
    RetriesMixin,
    LLMRequestsMixin,
    ProviderBatchesMixin,
    SubmitterMixin,
    WorkersMixin,
):
    """docbus's MongoDB collections. Construct freely; ``await connect()`` (or ``async with``)."""

    @classmethod
    def from_settings(cls, settings: Settings | MongoSettings) -> Store:
        mongo = settings.mongodb if isinstance(settings, Settings) else settings
        return cls(
            mongo.uri,
            mongo.database,
            timeout=mongo.timeout,
            write_linger=mongo.write_linger,
            write_concern=mongo.write_concern,
            journal=mongo.journal,
        )
