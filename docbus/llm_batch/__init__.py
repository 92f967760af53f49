"""Batch-mode LLM calls, planned and read back: the pure half of docbus's Batch-API mode.

In batch mode a handler's ``ctx.llm`` call becomes a :class:`BatchRequest` (keyed by the step
that makes it and what it asks, :func:`request_key`) stored as pending; a submitter groups the
pending requests into provider input files (:func:`plan_files`, to :class:`FileLimits`; when to
submit: :func:`should_submit`), uploads them and creates provider batches through the ``openai``
SDK, polls them (:func:`poll_delay`), reads their output and error files back
(:func:`read_lines`) and sorts every request of a finished batch by what happens next
(:func:`settle`: answered, resubmitted, dead-lettered with the live taxonomy's reason, released
for a systemic back-off, held after a cancel). :func:`recovery_step` says what to do with a
provider-batch record found in any :class:`ProviderBatchState` after a crash. Everything here
is a plain function or frozen value without I/O and imports neither ``handlers`` nor
``subscriber`` — both of those build on it. The records live in :mod:`docbus.store`. The one
module with I/O, :mod:`docbus.llm_batch.submitter` (the lease holder's loop over the store and
the ``openai`` SDK), is imported by its own path: it needs the store, which needs this package.
"""

from __future__ import annotations

from docbus.llm_batch._lifecycle import (
    METADATA_KEY,
    OPEN_STATES,
    PROVIDER_TERMINAL,
    ProviderBatchState,
    Step,
    find_adoptable,
    recovery_step,
)
from docbus.llm_batch._outcomes import (
    POLL_BACKOFF,
    SUBMISSION_BACKOFF,
    BatchFailure,
    Failure,
    History,
    Kind,
    SettleLimits,
    Settlement,
    classify_batch_errors,
    classify_line,
    classify_status,
    poll_delay,
    settle,
    submission_delay,
)
from docbus.llm_batch._plan import (
    FileLimits,
    Plan,
    PlannedFile,
    SubmitPolicy,
    learnt_quota,
    plan_files,
    should_submit,
    within_quota,
)
from docbus.llm_batch._requests import (
    CHAT_COMPLETIONS,
    BatchRequest,
    canonical_json,
    input_line,
    request_key,
)
from docbus.llm_batch._results import (
    NOT_RUN_CANCELLED,
    NOT_RUN_EXPIRED,
    Line,
    LineAnswer,
    LineError,
    UnreadableLine,
    read_line,
    read_lines,
)

__all__ = [
    "CHAT_COMPLETIONS",
    "METADATA_KEY",
    "NOT_RUN_CANCELLED",
    "NOT_RUN_EXPIRED",
    "OPEN_STATES",
    "POLL_BACKOFF",
    "PROVIDER_TERMINAL",
    "SUBMISSION_BACKOFF",
    "BatchFailure",
    "BatchRequest",
    "Failure",
    "FileLimits",
    "History",
    "Kind",
    "Line",
    "LineAnswer",
    "LineError",
    "Plan",
    "PlannedFile",
    "ProviderBatchState",
    "SettleLimits",
    "Settlement",
    "Step",
    "SubmitPolicy",
    "UnreadableLine",
    "canonical_json",
    "classify_batch_errors",
    "classify_line",
    "classify_status",
    "find_adoptable",
    "input_line",
    "learnt_quota",
    "plan_files",
    "poll_delay",
    "read_line",
    "read_lines",
    "recovery_step",
    "request_key",
    "settle",
    "should_submit",
    "submission_delay",
    "within_quota",
]
