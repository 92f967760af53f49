"""Planning a round: pending requests into provider input files, and when to submit them.

:func:`plan_files` groups pending :class:`~docbus.llm_batch._requests.BatchRequest` s by endpoint
and model (a provider batch has one endpoint, and OpenAI and Azure want one model per file), keeps
their order (oldest first, so nobody starves), and splits each group to the :class:`FileLimits` —
requests and bytes per file, OpenAI's 50,000 / 200 MB by default, Azure's 100,000 / 200 MB when
configured so — into :class:`PlannedFile` s whose ``content`` is the JSONL to upload. A request too
big for any file on its own is returned apart (it can never be submitted: a dead letter, not a
retry). :func:`should_submit` decides whether a group has waited long enough, grown big enough, or
gone quiet (its round has registered), to be worth a provider batch (one file per round, not one
per document); :func:`poll_wait` says when to look at an open provider batch again (sooner when its
progress says it is about to finish). :func:`within_quota` keeps a submission under a queued-token
quota (Azure's enqueued-token limit per deployment). Pure functions; the submitter does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from docbus.llm_batch._requests import BatchRequest, input_line


@dataclass(frozen=True, slots=True)
class FileLimits:
    """Most requests and bytes one provider input file may hold."""

    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_bytes < 1:
            raise ValueError("file limits must be >= 1")


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One provider input file: its group, its requests' keys in line order, its bytes."""

    endpoint: str
    model: str
    keys: tuple[str, ...]
    content: bytes

    @property
    def requests(self) -> int:
        return len(self.keys)


@dataclass(frozen=True, slots=True)
class Plan:
    """The files of one round, and the requests no file can hold."""

    files: tuple[PlannedFile, ...]
    oversized: tuple[str, ...] = ()


def plan_files(
    requests: Iterable[BatchRequest],
    limits: FileLimits = FileLimits(),
    *,
    url_for: dict[str, str] | None = None,
) -> Plan:
    """Group ``requests`` by (endpoint, model) and split each group to ``limits``.

    Groups come out in the order of their first request; within a group requests keep their
    order. ``url_for`` maps an endpoint to the path written in its lines (Azure's
    ``/chat/completions``). A key that appears twice is planned once.
    """
    groups: dict[tuple[str, str], list[BatchRequest]] = {}
    seen: set[str] = set()
    for request in requests:
        if request.key in seen:
            continue
        seen.add(request.key)
        groups.setdefault((request.endpoint, request.model), []).append(request)
    files: list[PlannedFile] = []
    oversized: list[str] = []
    for (endpoint, model), members in groups.items():
        url = (url_for or {}).get(endpoint)
        keys: list[str] = []
        chunks: list[bytes] = []
        size = 0
        for request in members:
            line = input_line(request, url=url)
            if len(line) > limits.max_bytes:
                oversized.append(request.key)
                continue
            if keys and (len(keys) >= limits.max_requests or size + len(line) > limits.max_bytes):
                files.append(PlannedFile(endpoint, model, tuple(keys), b"".join(chunks)))
                keys, chunks, size = [], [], 0
            keys.append(request.key)
            chunks.append(line)
            size += len(line)
        if keys:
            files.append(PlannedFile(endpoint, model, tuple(keys), b"".join(chunks)))
    return Plan(tuple(files), tuple(oversized))


def within_quota(
    requests: Sequence[BatchRequest], quota: int, queued: int
) -> tuple[list[BatchRequest], list[BatchRequest]]:
    """(the oldest ``requests`` whose estimated tokens fit under ``quota`` beside the ``queued``
    tokens already enqueued, those that can never fit: one alone above the whole quota).

    Oldest first, stopping at the first that does not fit, so a big request is not starved by
    smaller younger ones; the rest wait for open batches to finish and free their tokens.
    """
    fit: list[BatchRequest] = []
    never: list[BatchRequest] = []
    room = quota - queued
    for request in requests:
        if request.estimated_tokens > quota:
            never.append(request)
        elif request.estimated_tokens <= room:
            fit.append(request)
            room -= request.estimated_tokens
        else:
            room = -1  # the oldest that does not fit: nothing younger jumps it
    return fit, never


def learnt_quota(refused_tokens: int, known: int | None) -> int:
    """What a group may enqueue after the provider refused a batch of ``refused_tokens``
    estimated tokens over a queued-token quota docbus was not told of (or told too high):
    half of it, never more than was ``known`` — a round that can never fit whole is split
    until it does instead of being refused forever."""
    half = max(1, refused_tokens // 2)
    return half if known is None else min(known, half)


@dataclass(frozen=True, slots=True)
class SubmitPolicy:
    """When a group of pending requests becomes a provider batch.

    A group is submitted once its oldest request has waited ``max_wait`` seconds, or it holds
    ``min_requests`` requests (or ``min_bytes`` bytes), or it has gone ``quiet``: no request
    has joined it for ``quiet`` seconds and no delivery marked for resumption is still on its
    way back (each would register its next request) — whichever comes first — so a round's
    requests travel together instead of one file per document, and a round that has
    registered everything is not held until ``max_wait``.
    """

    max_wait: float = 60.0
    min_requests: int = 10_000
    min_bytes: int = 50 * 1024 * 1024
    quiet: float = 5.0

    def __post_init__(self) -> None:
        if self.max_wait < 0 or self.quiet < 0 or self.min_requests < 1 or self.min_bytes < 1:
            raise ValueError("max_wait and quiet must be >= 0, min_requests and min_bytes >= 1")


def should_submit(
    oldest_age: float,
    requests: int,
    size: int,
    policy: SubmitPolicy = SubmitPolicy(),
    *,
    idle: float | None = None,
    resuming: int = 0,
) -> bool:
    """Whether a group whose oldest request is ``oldest_age`` seconds old, holding ``requests``
    requests of ``size`` bytes in all, should be submitted now. ``idle``: seconds since its
    newest request joined (None: not known, the quiet rule does not apply); ``resuming``:
    deliveries marked for resumption that have not registered or settled yet."""
    if requests <= 0:
        return False
    if oldest_age >= policy.max_wait or requests >= policy.min_requests or size >= policy.min_bytes:
        return True
    return idle is not None and resuming == 0 and idle >= policy.quiet


def due_in(
    oldest_age: float, policy: SubmitPolicy, *, idle: float | None = None, resuming: int = 0
) -> float:
    """Seconds until a pending group not due now may become due by time alone (the
    submitter looks again then): ``max_wait`` from its oldest request, or ``quiet`` from its
    newest — ``quiet`` from now while deliveries are still resuming."""
    wait = policy.max_wait - oldest_age
    if idle is not None:
        wait = min(wait, policy.quiet - (0.0 if resuming else idle))
    return max(0.0, wait)


def poll_wait(
    backoff: float,
    floor: float,
    *,
    status: str,
    counts: Mapping[str, int] | None = None,
    running: float = 0.0,
) -> float:
    """Seconds before polling an open provider batch again: ``backoff`` (the polling
    backoff's next delay), but sooner once it is about to finish — ``floor`` while it is
    ``finalizing``, and while ``in_progress`` the time its progress so far predicts is left
    (``counts``: the provider's ``request_counts``; ``running``: seconds since it was
    created), never under ``floor``. A prediction only ever brings a poll forward."""
    if status == "finalizing":
        return min(backoff, floor)
    if status != "in_progress" or not counts or running <= 0:
        return backoff
    total = int(counts.get("total") or 0)
    done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
    if total <= 0 or done <= 0:
        return backoff
    left = running * (total - done) / done  # progress as even since creation: an upper guess
    return min(backoff, max(floor, left))
