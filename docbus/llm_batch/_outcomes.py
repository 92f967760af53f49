"""What a provider batch's outcome means for each of its requests: the batch-mode taxonomy.

The same vocabulary as live calls (:mod:`handlers.llm.errors`), decided here without the
``openai`` SDK so the submitter and its tests share it::

    per-line status / code                    kind        reason
    200                                       answered
    429, 5xx, 408, 409, request_timeout,
      a line missing from a completed batch   TRANSIENT   LLMRateLimited, LLMServerError<n>, …
    400 context_length_exceeded               PERMANENT   ContextLengthExceeded
    400 content_filter                        PERMANENT   ContentFiltered
    other 4xx                                 PERMANENT   LLMBadRequest
    401 / 403 / 404 model / 429 quota         SYSTEMIC    AuthenticationFailed, PermissionDenied,
                                                          ModelNotFound, QuotaExhausted
    batch_expired (or missing, expired)       EXPIRED     BatchExpired once over the limit
    batch_cancelled (or missing, cancelled)   CANCELLED

    whole-batch failure (status ``failed``)
    token_limit_exceeded                      SYSTEMIC    QueuedTokenQuotaExhausted
    insufficient_quota / auth / model         SYSTEMIC    as above
    file limits (too_many_tasks, …)           SYSTEMIC    BatchFileRejected
    a code naming a line                      that line PERMANENT (LLMBatchLineRejected),
                                              the others released uncounted
    anything else                             TRANSIENT   LLMBatchFailed

:func:`settle` applies it to one finished provider batch: answers are kept; transient failures
are resubmitted until ``max_attempts``, then dead-lettered with their reason; expired requests
are resubmitted until ``max_expiries``, then dead-lettered as ``BatchExpired``; permanent ones
are dead-lettered with the provider's reason; systemic ones release every request uncounted and
tell the submitter to back off (nothing is dead-lettered); cancelled ones are held. Pure.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from docbus.backoff import BackoffPolicy, backoff_delay
from docbus.llm_batch._results import (
    NOT_RUN_CANCELLED,
    NOT_RUN_EXPIRED,
    Line,
    LineAnswer,
    LineError,
    UnreadableLine,
)

_DESCRIPTION_LIMIT = 500
_SYSTEMIC_BATCH_CODES = {
    "token_limit_exceeded": "QueuedTokenQuotaExhausted",
    "insufficient_quota": "QuotaExhausted",
    "quota_exceeded": "QuotaExhausted",
    "invalid_api_key": "AuthenticationFailed",
    "authentication_error": "AuthenticationFailed",
    "permission_denied": "PermissionDenied",
    "model_not_found": "ModelNotFound",
    "deploymentnotfound": "ModelNotFound",
    "too_many_tasks": "BatchFileRejected",
    "file_too_large": "BatchFileRejected",
    "empty_file": "BatchFileRejected",
}

SUBMISSION_BACKOFF = BackoffPolicy(base=30.0, cap=1800.0)
"""Waits between submissions of a group the provider refused systemically."""
POLL_BACKOFF = BackoffPolicy(base=5.0, cap=300.0)
"""Waits between polls of an open provider batch."""


class Kind(enum.StrEnum):
    """What a failed request needs."""

    TRANSIENT = "transient"  # resubmit, counted against max_attempts
    PERMANENT = "permanent"  # dead-letter now, with the provider's reason
    SYSTEMIC = "systemic"  # nothing wrong with the request: back off the submission
    EXPIRED = "expired"  # not run in the completion window: resubmit, up to max_expiries
    CANCELLED = "cancelled"  # the batch was cancelled: hold until resumed


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request (or a whole provider batch) did not get an answer."""

    kind: Kind
    reason: str
    description: str = ""


def classify_status(
    status: int, code: str | None = None, type: str | None = None, message: str = ""
) -> Failure:
    """The failure an HTTP error stands for — a line's, or a Files/Batches call's own."""
    code_ = (code or "").lower()
    kind_ = (type or "").lower()
    text = _trim(message)
    if status == 401:
        return Failure(Kind.SYSTEMIC, "AuthenticationFailed", text)
    if status == 403:
        return Failure(Kind.SYSTEMIC, "PermissionDenied", text)
    if status == 404:
        if code_ in ("model_not_found", "deploymentnotfound") or "model" in text.lower():
            return Failure(Kind.SYSTEMIC, "ModelNotFound", text)
        return Failure(Kind.SYSTEMIC, "EndpointNotFound", text)
    if status == 429:
        if "insufficient_quota" in (code_, kind_):
            return Failure(Kind.SYSTEMIC, "QuotaExhausted", text)
        if code_ == "token_limit_exceeded":
            return Failure(Kind.SYSTEMIC, "QueuedTokenQuotaExhausted", text)
        return Failure(Kind.TRANSIENT, "LLMRateLimited", text)
    if status >= 500 or status in (408, 409):
        return Failure(Kind.TRANSIENT, f"LLMServerError{status}", text)
    lowered = text.lower()
    if code_ == "context_length_exceeded" or "maximum context length" in lowered:
        return Failure(Kind.PERMANENT, "ContextLengthExceeded", text)
    if code_ in ("content_filter", "content_policy_violation") or "content management" in lowered:
        return Failure(Kind.PERMANENT, "ContentFiltered", text)
    return Failure(Kind.PERMANENT, "LLMBadRequest", f"HTTP {status}: {text}")


def classify_line(error: LineError) -> Failure:
    """The failure one error-file line stands for."""
    if error.status_code is not None:
        return classify_status(error.status_code, error.code, error.type, error.message)
    if error.code == NOT_RUN_EXPIRED:
        return Failure(Kind.EXPIRED, "BatchExpired", _trim(error.message))
    if error.code == NOT_RUN_CANCELLED:
        return Failure(Kind.CANCELLED, "BatchCancelled", _trim(error.message))
    if error.code == "request_timeout":
        return Failure(Kind.TRANSIENT, "LLMTimeout", _trim(error.message))
    return Failure(Kind.TRANSIENT, "LLMBatchLineNotRun", f"{error.code}: {_trim(error.message)}")


@dataclass(frozen=True, slots=True)
class BatchFailure:
    """A whole provider batch that failed: what it means for the batch and for named lines."""

    failure: Failure
    lines: Mapping[int, Failure] = field(default_factory=dict)
    """1-based line numbers the provider blamed, each a permanent failure of its request."""


def classify_batch_errors(errors: Iterable[Mapping[str, Any]]) -> BatchFailure:
    """The meaning of a failed batch's ``errors.data`` (see the module docstring)."""
    lines: dict[int, Failure] = {}
    systemic: Failure | None = None
    messages: list[str] = []
    for error in errors:
        code = str(error.get("code") or "").lower()
        message = _trim(str(error.get("message") or code or "the batch failed"))
        messages.append(f"{code}: {message}" if code else message)
        line = error.get("line")
        if code in _SYSTEMIC_BATCH_CODES and systemic is None:
            systemic = Failure(Kind.SYSTEMIC, _SYSTEMIC_BATCH_CODES[code], message)
        elif isinstance(line, int) and line >= 1:
            lines[line] = Failure(Kind.PERMANENT, "LLMBatchLineRejected", f"{code}: {message}")
    if systemic is not None:
        return BatchFailure(systemic, lines)
    if lines:
        return BatchFailure(
            Failure(Kind.TRANSIENT, "LLMBatchLineRejected", _trim("; ".join(messages))), lines
        )
    return BatchFailure(
        Failure(Kind.TRANSIENT, "LLMBatchFailed", _trim("; ".join(messages)) or "no reason given")
    )


@dataclass(frozen=True, slots=True)
class SettleLimits:
    """How many times one request is resubmitted before it is dead-lettered."""

    max_attempts: int = 3
    """Provider batches a request may fail transiently in (then its last reason)."""
    max_expiries: int = 2
    """Times a request that went unanswered in an expired batch is resubmitted; expiring once
    more dead-letters it as ``BatchExpired``."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_expiries < 1:
            raise ValueError("max_attempts and max_expiries must be >= 1")


@dataclass(frozen=True, slots=True)
class History:
    """What earlier provider batches did to one request."""

    attempts: int = 0  # transient failures so far
    expiries: int = 0  # times it went unanswered in an expired batch


@dataclass(slots=True)
class Settlement:
    """Every request of one finished provider batch, sorted by what happens to it next."""

    answers: dict[str, LineAnswer] = field(default_factory=dict)
    dead: dict[str, Failure] = field(default_factory=dict)
    """Dead-letter these documents' calls: permanent, or out of attempts or expiries."""
    resubmit: dict[str, Failure] = field(default_factory=dict)
    """Back to pending, counted: TRANSIENT adds an attempt, EXPIRED an expiry."""
    released: list[str] = field(default_factory=list)
    """Back to pending uncounted (a systemic or a neighbour's failure, not theirs)."""
    cancelled: list[str] = field(default_factory=list)
    """Held: their provider batch was cancelled (their docbus batch is parked)."""
    systemic: Failure | None = None
    """Set when the submitter must back off this group (nothing is dead-lettered for it)."""
    strangers: list[str] = field(default_factory=list)
    """Custom ids that are not requests of this batch (ignored)."""
    unreadable: int = 0


def settle(  # noqa: C901 - one branch per provider outcome, read as the taxonomy's table
    status: str,
    keys: Sequence[str],
    lines: Iterable[Line] = (),
    *,
    batch_errors: Iterable[Mapping[str, Any]] = (),
    history: Mapping[str, History] | None = None,
    limits: SettleLimits = SettleLimits(),
    complete: bool = True,
) -> Settlement:
    """Sort the requests ``keys`` (in input-file line order) of a provider batch that ended in
    ``status`` (``completed``, ``expired``, ``cancelled`` or ``failed``), given its output and
    error ``lines`` and, for a failed one, its ``errors.data``.

    ``complete`` False: ``lines`` are only those read so far (a download that may yet break),
    so a request without a line is left out rather than taken as missing — what was read can
    be applied at once, and the full read settles the rest.
    """
    history = history or {}
    out = Settlement()
    members = set(keys)
    failures: dict[str, Failure] = {}
    for line in lines:
        if isinstance(line, UnreadableLine):
            out.unreadable += 1
        elif line.custom_id not in members:
            out.strangers.append(line.custom_id)
        elif isinstance(line, LineAnswer):
            out.answers[line.custom_id] = line
            failures.pop(line.custom_id, None)
        elif line.custom_id not in out.answers:
            failures[line.custom_id] = classify_line(line)
    if status == "failed":
        verdict = classify_batch_errors(batch_errors)
        blamed = {keys[n - 1]: f for n, f in verdict.lines.items() if n <= len(keys)}
        for key in keys:
            if key in out.answers:
                continue
            if key in blamed:
                out.dead[key] = blamed[key]
            elif verdict.failure.kind is Kind.TRANSIENT and not blamed:
                _retry(out, key, verdict.failure, history.get(key, History()), limits)
            else:
                out.released.append(key)
        if verdict.failure.kind is Kind.SYSTEMIC:
            out.systemic = verdict.failure
        return out
    missing = _missing(status)
    for key in keys:
        if key in out.answers or (not complete and key not in failures):
            continue
        failure = failures.get(key, missing)
        past = history.get(key, History())
        if failure.kind is Kind.PERMANENT:
            out.dead[key] = failure
        elif failure.kind is Kind.SYSTEMIC:
            out.released.append(key)
            out.systemic = out.systemic or failure
        elif failure.kind is Kind.CANCELLED:
            out.cancelled.append(key)
        else:
            _retry(out, key, failure, past, limits)
    return out


def _missing(status: str) -> Failure:
    """What a request with no line at all means, by its batch's status."""
    if status == "expired":
        return Failure(Kind.EXPIRED, "BatchExpired", "not answered before the batch expired")
    if status in ("cancelled", "cancelling"):
        return Failure(Kind.CANCELLED, "BatchCancelled", "the batch was cancelled")
    return Failure(Kind.TRANSIENT, "LLMBatchLineMissing", f"no line for it in a {status} batch")


def _retry(
    out: Settlement, key: str, failure: Failure, past: History, limits: SettleLimits
) -> None:
    if failure.kind is Kind.EXPIRED:
        if past.expiries >= limits.max_expiries:
            out.dead[key] = Failure(
                Kind.PERMANENT,
                "BatchExpired",
                f"not answered in {past.expiries + 1} provider batches before their completion "
                "window ended",
            )
        else:
            out.resubmit[key] = failure
        return
    if past.attempts + 1 >= limits.max_attempts:
        out.dead[key] = Failure(
            Kind.PERMANENT,
            failure.reason,
            f"{failure.description} (failed in {past.attempts + 1} provider batches)".strip(),
        )
    else:
        out.resubmit[key] = failure


def submission_delay(
    refusals: int, *, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds before submitting a group again after its ``refusals``-th systemic refusal."""
    return backoff_delay(refusals, SUBMISSION_BACKOFF, retry_after=retry_after, rng=rng)


def poll_delay(polls: int, *, rng: random.Random | None = None) -> float:
    """Seconds before the next poll of a provider batch polled ``polls`` times already."""
    return backoff_delay(max(1, polls), POLL_BACKOFF, rng=rng)


def _trim(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DESCRIPTION_LIMIT else text[: _DESCRIPTION_LIMIT - 1] + "…"
