"""The life of one provider batch on docbus's side, and what to do after a crash at any point.

docbus writes a provider-batch record (:mod:`docbus.store`) *before* each step that has an effect
at the provider, so the record always says how far it got::

    claiming   record written; its requests being claimed       crash -> abandon (release them)
    claimed    requests claimed, keys final                     crash -> upload (or abandon)
    uploaded   input file at the provider (file id kept)        crash -> create
    creating   about to call batches.create                     crash -> look up, then create
    open       provider batch id kept; polling                  crash -> poll
    collecting provider finished; applying its lines            crash -> collect again
    settled    every request moved on                           (terminal)
    abandoned  released before any provider batch existed       (terminal)

A crash after the upload, before its file id is kept, leaves a file named after the record: the
next holder finds it by that name and uses it (one of another size is deleted). A crash after
``batches.create`` but before its id is kept is the one that could pay twice: every batch is
created with ``metadata[docbus_provider_batch] = record id``, and a ``creating`` record is first
looked for among the provider's batches (:func:`find_adoptable`) and adopted if found. A crash
mid-download repeats the download: applying a line is idempotent (only requests still
``submitted`` to this record change). :func:`recovery_step` is that table; :data:`OPEN_STATES`
are those whose requests are unavailable to other batches. Pure.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

METADATA_KEY = "docbus_provider_batch"
"""The provider batch's metadata key holding docbus's record id (for adoption after a crash)."""
PROVIDER_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
"""Provider statuses after which the batch's files no longer change."""


class ProviderBatchState(enum.StrEnum):
    """How far docbus got with one provider batch (see the module docstring)."""

    CLAIMING = "claiming"
    CLAIMED = "claimed"
    UPLOADED = "uploaded"
    CREATING = "creating"
    OPEN = "open"
    COLLECTING = "collecting"
    SETTLED = "settled"
    ABANDONED = "abandoned"


OPEN_STATES = frozenset(
    state
    for state in ProviderBatchState
    if state not in (ProviderBatchState.SETTLED, ProviderBatchState.ABANDONED)
)


class Step(enum.StrEnum):
    """What a submitter that finds a record in some state does next."""

    ABANDON = "abandon"  # release the requests claimed so far; nothing exists at the provider
    UPLOAD = "upload"
    CREATE = "create"
    LOOK_UP_THEN_CREATE = "look_up_then_create"  # a create may have happened: adopt it if so
    POLL = "poll"
    COLLECT = "collect"
    NOTHING = "nothing"


_RECOVERY = {
    ProviderBatchState.CLAIMING: Step.ABANDON,
    ProviderBatchState.CLAIMED: Step.UPLOAD,
    ProviderBatchState.UPLOADED: Step.CREATE,
    ProviderBatchState.CREATING: Step.LOOK_UP_THEN_CREATE,
    ProviderBatchState.OPEN: Step.POLL,
    ProviderBatchState.COLLECTING: Step.COLLECT,
    ProviderBatchState.SETTLED: Step.NOTHING,
    ProviderBatchState.ABANDONED: Step.NOTHING,
}


def recovery_step(state: ProviderBatchState | str) -> Step:
    """The next step for a record found in ``state`` (after a crash, or on any pass)."""
    return _RECOVERY[ProviderBatchState(state)]


def find_adoptable(
    provider_batches: Iterable[Mapping[str, Any]], record_id: str, input_file_id: str | None
) -> str | None:
    """The id of the provider batch a crashed create made for ``record_id``, if any.

    ``provider_batches`` are batch objects as the provider lists them (newest first); a batch
    is ours if its metadata names the record, or (metadata lost, as some gateways drop it) its
    input file is the record's file.
    """
    for batch in provider_batches:
        metadata = batch.get("metadata") or {}
        if isinstance(metadata, Mapping) and metadata.get(METADATA_KEY) == record_id:
            return str(batch["id"])
        if input_file_id is not None and batch.get("input_file_id") == input_file_id:
            return str(batch["id"])
    return None
