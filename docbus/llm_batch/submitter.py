"""The submitter: pending LLM requests to provider batches and back, one holder at a time.

:class:`Submitter` is the one part of :mod:`docbus.llm_batch` that does I/O. Each
:meth:`~Submitter.run_once` pass takes (or renews) the submitter lease in Mongo
(:mod:`docbus.store`); without it, it does nothing, so however many workers run one, one acts.
As holder it first carries every open provider-batch record one step on from wherever it stands
(:func:`~docbus.llm_batch.recovery_step`: after a crash that is where the crash left it), then
submits the pending groups that :func:`~docbus.llm_batch.should_submit` says are ready::

    claim -> upload the JSONL -> record it -> renew the lease -> mark creating
          -> batches.create(metadata={docbus_provider_batch: record}) -> record it
    poll (with backoff) -> terminal: record it -> download output and error files
          -> settle -> on_settled hook -> apply -> back off the group if systemic
          -> delete the input, output and error files (``delete_files``)

through the ``openai`` SDK's Files and Batches APIs on the ``AsyncOpenAI`` or
``AsyncAzureOpenAI`` client it is given (key or Entra ID: the caller builds it). ``openai``
exceptions are translated here, once, onto :func:`~docbus.llm_batch.classify_status`: a
systemic refusal (bad key, no quota, queued-token limit) pauses the group and releases what was
claimed, uncounted; a transient one leaves the record where it is for the next pass.
``on_settled`` lets the worker write costs before the settlement is applied; it must be
idempotent (a crash after it and before the apply calls it again). ``on_done`` is told the keys
of requests answered or failed once they are stored so (the worker resumes the deliveries
parked on them), and ``None`` — all of them — when this submitter takes the lease over (its
predecessor may have died between an apply and its hook) or after the hook failed.
``on_refused`` is told when the provider refuses the key, the role or the endpoint (the worker
opens its circuit breaker on it, as on a live call's systemic failure), ``on_accepted`` when it
takes the credentials again (a probe passed, a batch was created: the worker closes it).
``checkpoint`` is called at named points for crash tests.

Files are deleted only after the outcome they carry is stored: a crash in between leaves them
at the provider, and the next holder's first pass (then a pass every ``files_sweep_every``
seconds) deletes what ended records still hold — an abandoned record's uploaded input too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import openai

from docbus.backoff import BackoffPolicy, backoff_delay
from docbus.llm_batch._lifecycle import (
    METADATA_KEY,
    PROVIDER_TERMINAL,
    ProviderBatchState,
    Step,
    find_adoptable,
    recovery_step,
)
from docbus.llm_batch._outcomes import (
    POLL_BACKOFF,
    SUBMISSION_BACKOFF,
    Failure,
    Kind,
    SettleLimits,
    Settlement,
    classify_status,
    settle,
)
from docbus.llm_batch._plan import (
    FileLimits,
    SubmitPolicy,
    due_in,
    learnt_quota,
    plan_files,
    poll_wait,
    should_submit,
    within_quota,
)
from docbus.llm_batch._requests import BatchRequest
from docbus.llm_batch._results import Line, read_lines
from docbus.store import (
    ProviderBatchRecord,
    StaleTransition,
    Store,
    SubmissionPause,
    SubmitterLease,
)
from docbus.store._base import _now

logger = logging.getLogger(__name__)

Client = openai.AsyncOpenAI  # AsyncAzureOpenAI is one too
RefusedHook = Callable[[Failure], None]
SettledHook = Callable[[ProviderBatchRecord, Settlement], Awaitable[None]]
DoneHook = Callable[[Sequence[str] | None], Awaitable[None]]
_SOONEST = 0.05  # seconds: the shortest wait between passes (something is due already)
_ADOPTION_SCAN = 1000  # provider batches looked through for one a crashed create made
_FILES_SWEEP_LIMIT = 100  # ended records whose files one sweep deletes
_PROBED = frozenset({"AuthenticationFailed", "PermissionDenied", "EndpointNotFound"})
"""Refusals a free call (one page of the file list) tells the end of: the key, the role, the
endpoint. A quota is not probed: only a real submission shows it back."""
_ABANDONABLE = frozenset(
    {ProviderBatchState.CLAIMING, ProviderBatchState.CLAIMED, ProviderBatchState.UPLOADED}
)
_BEFORE_OPEN = frozenset(
    {ProviderBatchState.CLAIMED, ProviderBatchState.UPLOADED, ProviderBatchState.CREATING}
)


@dataclass(frozen=True)
class SubmitterOptions:
    """How the submitter splits, waits, retries and holds its lease (seconds)."""

    limits: FileLimits = field(default_factory=FileLimits)
    policy: SubmitPolicy = field(default_factory=SubmitPolicy)
    settle_limits: SettleLimits = field(default_factory=SettleLimits)
    lease_ttl: float = 60.0
    renew_every: float = 15.0
    url_for: Mapping[str, str] = field(default_factory=dict)
    """Endpoint -> the path written in lines and given to ``batches.create`` (Azure:
    ``{"/v1/chat/completions": "/chat/completions"}``)."""
    poll: BackoffPolicy = POLL_BACKOFF
    """Waits between polls of an open provider batch."""
    refusal: BackoffPolicy = SUBMISSION_BACKOFF
    """Waits before submitting a group again after a systemic refusal."""
    delete_files: bool = True
    """Delete a provider batch's files once its outcome is stored."""
    probe_every: float = 5.0
    """While a group backs off after a refused key, role or endpoint: seconds between free
    calls (one page of the file list) that end the back-off as soon as the provider accepts
    the credentials again — the batch-mode twin of the live circuit breaker's probe."""
    queued_tokens: Mapping[str, int] = field(default_factory=dict)
    """Model (Azure: deployment) -> most estimated tokens its open provider batches may hold
    at once (Azure's enqueued-token quota); a model not named has no limit."""
    files_sweep_every: float = 600.0
    """Seconds between looks for files that ended records still hold (a crash between
    settling and deleting); a new holder looks at once."""

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.lease_ttl:
            raise ValueError("renew_every must be > 0 and well below lease_ttl")


@dataclass
class PassReport:
    """What one pass did."""

    holder: bool = False
    created: int = 0
    settled: int = 0
    abandoned: int = 0
    files_deleted: int = 0
    paused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _LeaseLost(Exception):
    """The lease lapsed during the pass: stop acting at once."""


class Submitter:
    """Turns pending requests into provider batches and their answers back into requests."""

    def __init__(
        self,
        store: Store,
        client: Client,
        *,
        holder: str,
        options: SubmitterOptions | None = None,
        on_settled: SettledHook | None = None,
        on_done: DoneHook | None = None,
        on_refused: RefusedHook | None = None,
        on_accepted: Callable[[], None] | None = None,
        checkpoint: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.store = store
        self.client = client
        self.holder = holder
        self.options = options or SubmitterOptions()
        self._on_settled = on_settled
        self._on_done = on_done
        self._sweep = False
        """``on_done`` must be told again about every settled request (``None``): this
        holder is new (its predecessor may have died between a settlement and its hook) or
        the hook failed."""
        self._on_refused = on_refused
        self._on_accepted = on_accepted
        self._told_refused = False
        """``on_refused`` was told and ``on_accepted`` not yet."""
        self._checkpoint = checkpoint or (lambda point: None)
        self._clock = clock
        self._learnt: dict[tuple[str, str], int] = {}
        """Queued-token quotas learnt from refusals, per group (see :func:`learnt_quota`)."""
        self._lease: SubmitterLease | None = None
        self._files_swept_at: datetime | None = None
        self._probed_at: dict[tuple[str, str], datetime] = {}
        self._wake_at: datetime | None = None
        """When the pass just made saw something fall due (a poll, a group's ``max_wait`` or
        quiet period, a pause's end): the next pass comes then, not ``renew_every`` later."""

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until ``stop`` is set; then give the lease up."""
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                except Exception:  # one bad pass must not end the loop
                    logger.exception("batch submitter pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.next_pass_in())
        finally:
            await self.release()

    def next_pass_in(self) -> float:
        """Seconds to the next pass: ``renew_every`` (the lease), or sooner when something
        falls due before (polling a batch about to finish, submitting a round gone quiet)."""
        wait = self.options.renew_every
        if self._wake_at is not None:
            wait = min(wait, (self._wake_at - self._clock()).total_seconds())
        return max(_SOONEST, wait)

    def _due(self, at: datetime | None) -> None:
        """Something falls due ``at``: the next pass should come by then."""
        if at is not None and (self._wake_at is None or at < self._wake_at):
            self._wake_at = at

    async def release(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await self.store.release_submitter_lease(lease)

    async def run_once(self) -> PassReport:
        """One pass: take the lease, move open records on, submit ready groups."""
        report = PassReport()
        self._wake_at = None
        previous = self._lease
        self._lease = await self.store.acquire_submitter_lease(
            self.holder, self.options.lease_ttl, now=self._clock()
        )
        if self._lease is None:
            return report
        report.holder = True
        if previous is None or previous.token != self._lease.token:
            self._sweep = True  # a new holder: what a crashed one left unsaid is said now
        if self._sweep:
            await self._done(None)
            self._files_swept_at = None  # and what it left at the provider is deleted now
        try:
            now = self._clock()
            pauses = await self._probe(now, await self.store.llm_submission_pauses())
            paused = {(p.endpoint, p.model) for p in pauses if p.until > now}
            for record in await self.store.open_provider_batches():
                if (record.endpoint, record.model) in paused and record.state in _BEFORE_OPEN:
                    continue  # its group backs off: no upload or create until the pause ends
                await self._guarded(record, report, self._advance(record, report))
            if report.paused:  # a step above was refused: its group backs off from now
                pauses = await self.store.llm_submission_pauses()
            await self._submit(report, pauses)
            await self._sweep_files(report)
        except _LeaseLost:
            logger.warning("batch submitter %s lost its lease mid-pass", self.holder)
            self._lease = None
        return report

    @property
    def _token(self) -> int:
        if self._lease is None:
            raise _LeaseLost
        return self._lease.token

    async def _renew(self) -> None:
        if self._lease is None:
            raise _LeaseLost
        renewed = await self.store.renew_submitter_lease(
            self._lease, self.options.lease_ttl, now=self._clock()
        )
        if renewed is None:
            raise _LeaseLost
        self._lease = renewed

    # -- submitting ---------------------------------------------------------------------------

    async def _submit(self, report: PassReport, pauses: Sequence[SubmissionPause]) -> None:
        now = self._clock()
        policy = self.options.policy
        pause_of = {(p.endpoint, p.model): p for p in pauses}
        resuming: int | None = None  # asked once a group is otherwise quiet
        for group in await self.store.pending_llm_groups():
            pause = pause_of.get((group.endpoint, group.model))
            if pause is not None and pause.until > now:
                self._due(pause.until)
                continue
            # (another worker's clock may run ahead of ours: a request is never "younger than
            # new")
            age = max(0.0, (now - group.oldest).total_seconds())
            idle = None if group.newest is None else max(0.0, (now - group.newest).total_seconds())
            if resuming is None and idle is not None and idle >= policy.quiet:
                # deliveries marked for resumption still register this round's requests
                resuming = await self.store.count_resuming_for_llm_requests()
            if not should_submit(
                age, group.requests, group.size, policy, idle=idle, resuming=resuming or 0
            ):
                wait = due_in(age, policy, idle=idle, resuming=resuming or 0)
                self._due(now + timedelta(seconds=wait))
                continue
            pending = [
                r.as_request()
                for r in await self.store.pending_llm_requests(group.endpoint, group.model)
            ]
            pending = await self._quota_hook(group.endpoint, group.model, pending)
            plan = plan_files(
                pending,
                self.options.limits,
                url_for=dict(self.options.url_for),
            )
            if plan.oversized:
                await self._never_submittable(
                    plan.oversized,
                    f"one request is larger than a whole input file "
                    f"({self.options.limits.max_bytes} bytes)",
                )
            for planned in plan.files:
                record = await self.store.claim_llm_requests(
                    f"pb-{uuid.uuid4().hex[:16]}",
                    planned.endpoint,
                    planned.model,
                    planned.keys,
                    token=self._token,
                )
                if record.is_open:
                    content = planned.content
                    if tuple(record.keys) != planned.keys:
                        content = await self._content(record)
                    before = report.created
                    await self._guarded(record, report, self._upload(record, content, report))
                    if report.created == before:
                        break  # refused: the rest of this group waits for the next pass

    async def _quota_hook(
        self, endpoint: str, model: str, pending: list[BatchRequest]
    ) -> list[BatchRequest]:
        """The pending requests a new batch of the group may take under its queued-token
        quota: the configured one, or what refusals taught (never dead-letters a request)."""
        quota = self.options.queued_tokens.get(model)
        learnt = self._learnt.get((endpoint, model))
        if learnt is not None and (quota is None or learnt < quota):
            queued = await self.store.submitted_llm_tokens(endpoint, model)
            fit, _ = within_quota(pending, learnt, queued)
            # the oldest request above what was learnt goes alone once nothing else is open
            # (the provider may count fewer tokens than docbus estimates)
            return fit or (pending[:1] if queued == 0 else [])
        if quota is not None:
            pending = await self._within_quota(endpoint, model, pending, quota)
        return pending

    async def _learn_quota(self, record: ProviderBatchRecord) -> None:
        """The provider refused ``record`` over its queued-token quota: what it held teaches
        a smaller limit for the group's next batches."""
        group = (record.endpoint, record.model)
        requests = await self.store.llm_requests(record.keys)
        tokens = sum(r.estimated_tokens for r in requests.values())
        self._learnt[group] = learnt_quota(tokens, self._learnt.get(group))
        logger.info(
            "batch submitter: %s refused %d estimated tokens over its queued-token quota; "
            "its next batches hold at most %d (set llm.batch.queued_tokens to the quota)",
            record.model,
            tokens,
            self._learnt[group],
        )

    async def _within_quota(
        self, endpoint: str, model: str, pending: list[BatchRequest], quota: int
    ) -> list[BatchRequest]:
        """The pending requests that fit beside what open batches of ``model`` hold of its
        queued-token quota; one that alone exceeds the quota is dead-lettered."""
        queued = await self.store.submitted_llm_tokens(endpoint, model)
        fit, never = within_quota(pending, quota, queued)
        if never:
            await self._never_submittable(
                [request.key for request in never],
                f"estimated at more tokens than the whole queued-token quota of {model} "
                f"({quota}): raise llm.batch.queued_tokens or shorten the document",
            )
        if len(fit) + len(never) < len(pending):
            logger.info(
                "batch submitter: %d request(s) of %s wait for open batches to free "
                "queued-token quota (%d of %d in use)",
                len(pending) - len(fit) - len(never),
                model,
                queued,
                quota,
            )
        return fit

    async def _never_submittable(self, keys: Sequence[str], description: str) -> None:
        """Dead-letter requests no provider batch can ever take (``LLMRequestTooLarge``) and
        tell ``on_done``, so their documents get the dead letter."""
        await self.store.fail_llm_requests(keys, "LLMRequestTooLarge", description)
        await self._done(keys)

    async def _content(self, record: ProviderBatchRecord) -> bytes:
        """The input file of ``record``, rebuilt from its stored requests (same bytes)."""
        requests = await self.store.submitted_llm_requests(record.id)
        plan = plan_files(
            (requests[key].as_request() for key in record.keys if key in requests),
            FileLimits(max_requests=len(record.keys) + 1, max_bytes=1 << 62),
            url_for=dict(self.options.url_for),
        )
        return b"".join(planned.content for planned in plan.files)

    async def _upload(
        self, record: ProviderBatchRecord, content: bytes, report: PassReport
    ) -> None:
        uploaded = await self.client.files.create(
            file=(f"{record.id}.jsonl", content), purpose="batch"
        )
        self._checkpoint("uploaded")
        record = await self.store.record_upload(record.id, uploaded.id, token=self._token)
        await self._create(record, report)

    async def _create(self, record: ProviderBatchRecord, report: PassReport) -> None:
        await self._renew()  # the one step that costs money: only as the current holder
        record = await self.store.mark_creating(record.id, token=self._token)
        assert record.file_id is not None
        batch = await self.client.batches.create(
            input_file_id=record.file_id,
            endpoint=self._url(record.endpoint),  # type: ignore[arg-type]
            completion_window="24h",
            metadata={METADATA_KEY: record.id},
        )
        self._checkpoint("created")
        await self._adopt(record, batch.id, batch.status, report)

    async def _adopt(
        self, record: ProviderBatchRecord, batch_id: str, status: str, report: PassReport
    ) -> None:
        try:
            record = await self.store.record_created(record.id, batch_id, status, token=self._token)
        except StaleTransition:
            # A newer holder took this record over and made (or adopted) its own batch:
            # this one would be paid twice, so it is cancelled before it runs.
            logger.warning("cancelling provider batch %s made by a lapsed lease", batch_id)
            await self.client.batches.cancel(batch_id)
            raise
        report.created += 1
        # accepted: whatever refusal paused this group is over
        await self.store.clear_llm_submission_pause(record.endpoint, record.model)
        self._accepted()
        await self._poll(record, report)

    def _url(self, endpoint: str) -> str:
        return self.options.url_for.get(endpoint, endpoint)

    # -- open records -------------------------------------------------------------------------

    async def _advance(self, record: ProviderBatchRecord, report: PassReport) -> None:
        step = recovery_step(record.state)
        if step is Step.ABANDON:
            await self.store.abandon_provider_batch(record.id, token=self._token)
            report.abandoned += 1
        elif step is Step.UPLOAD:
            content = await self._content(record)
            uploaded = await self._uploaded_before(record, len(content))
            if uploaded is None:
                await self._upload(record, content, report)
            else:  # a holder died between its upload and recording it: use that file
                record = await self.store.record_upload(record.id, uploaded, token=self._token)
                await self._create(record, report)
        elif step is Step.CREATE:
            await self._create(record, report)
        elif step is Step.LOOK_UP_THEN_CREATE:
            found = await self._find_created(record)
            if found is None:
                await self._create(record, report)
            else:
                await self._adopt(record, found[0], found[1], report)
        elif step is Step.POLL:
            if record.next_poll_at is None or record.next_poll_at <= self._clock():
                await self._poll(record, report)
            else:
                self._due(record.next_poll_at)
        elif step is Step.COLLECT:
            await self._collect(record, report)

    async def _uploaded_before(self, record: ProviderBatchRecord, size: int) -> str | None:
        """The id of an input file a crashed holder uploaded for ``record`` (named after it)
        and did not record; one of another size is deleted (it is not this content)."""
        name = f"{record.id}.jsonl"
        found: str | None = None
        seen = 0
        async for stored in self.client.files.list(purpose="batch"):
            seen += 1
            if stored.filename == name:
                if found is None and stored.bytes == size:
                    found = stored.id
                else:
                    await self.client.files.delete(stored.id)
            if seen >= _ADOPTION_SCAN:
                break
        return found

    async def _find_created(self, record: ProviderBatchRecord) -> tuple[str, str] | None:
        seen: list[dict[str, Any]] = []
        async for batch in self.client.batches.list(limit=100):
            seen.append(batch.model_dump())
            found = find_adoptable(seen[-1:], record.id, record.file_id)
            if found is not None:
                return found, batch.status
            older = batch.created_at < record.created_at.timestamp() - 3600
            if older or len(seen) >= _ADOPTION_SCAN:
                break
        return None

    async def _poll(self, record: ProviderBatchRecord, report: PassReport) -> None:
        assert record.provider_batch_id is not None
        batch = await self.client.batches.retrieve(record.provider_batch_id)
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        if batch.status not in PROVIDER_TERMINAL:
            now = self._clock()
            delay = poll_wait(
                backoff_delay(max(1, record.polls + 1), self.options.poll),
                self.options.poll.base,
                status=batch.status,
                counts=counts,
                running=(now - record.created_at).total_seconds(),
            )
            next_poll = now + timedelta(seconds=delay)
            await self.store.record_poll(
                record.id, batch.status, counts, next_poll, token=self._token
            )
            self._due(next_poll)
            return
        errors = [e.model_dump() for e in (batch.errors.data or [])] if batch.errors else []
        record = await self.store.begin_collecting(
            record.id,
            batch.status,
            token=self._token,
            request_counts=counts,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            errors=errors,
        )
        await self._collect(record, report)

    async def _collect(self, record: ProviderBatchRecord, report: PassReport) -> None:
        lines: list[Line] = []
        for file_id in (record.output_file_id, record.error_file_id):
            if file_id:
                content = await self.client.files.content(file_id)
                lines.extend(read_lines(content.content))
                self._checkpoint("downloaded")
        settlement = settle(
            record.provider_status or "failed",
            record.keys,
            lines,
            batch_errors=record.errors,
            history=await self.store.llm_request_history(record.id),
            limits=self.options.settle_limits,
        )
        if self._on_settled is not None:
            await self._on_settled(record, settlement)
        record = await self.store.apply_llm_settlement(record.id, settlement, token=self._token)
        report.settled += 1
        await self._done([*settlement.answers, *settlement.dead])
        if settlement.systemic is not None:
            await self._pause(record, settlement.systemic, report)
        self._checkpoint("settled")
        await self._delete_files(record, report)

    # -- files --------------------------------------------------------------------------------

    async def _sweep_files(self, report: PassReport) -> None:
        """Delete the files ended records still hold, if a sweep is due."""
        now = self._clock()
        due = self._files_swept_at is None or (
            (now - self._files_swept_at).total_seconds() >= self.options.files_sweep_every
        )
        if not self.options.delete_files or not due:
            return
        self._files_swept_at = now
        for record in await self.store.provider_batches_with_files(limit=_FILES_SWEEP_LIMIT):
            await self._delete_files(record, report)

    async def _delete_files(self, record: ProviderBatchRecord, report: PassReport) -> None:
        """Delete an ended record's files at the provider (one already gone counts as
        deleted); a failure leaves them for the next sweep."""
        if not self.options.delete_files:
            return
        for file_id in (record.file_id, record.output_file_id, record.error_file_id):
            if not file_id:
                continue
            try:
                await self.client.files.delete(file_id)
            except openai.NotFoundError:
                pass  # deleted before (a crash after the delete, before the mark)
            except openai.OpenAIError as exc:
                logger.warning(
                    "provider batch %s: could not delete file %s (%s); the next sweep tries again",
                    record.id,
                    file_id,
                    failure_of(exc).reason,
                )
                return
            report.files_deleted += 1
        await self.store.mark_provider_batch_files_deleted(record.id)

    async def _done(self, keys: Sequence[str] | None) -> None:
        """Tell the ``on_done`` hook which requests are answered or failed now (after they
        are stored so; ``None``: all there are). A failing hook is logged and the next pass
        tells it about all of them: the requests are settled either way."""
        if self._on_done is None or (keys is not None and not keys):
            return
        try:
            await self._on_done(keys)
        except Exception:
            logger.exception("batch submitter: the on_done hook failed")
            self._sweep = True
        else:
            if keys is None:
                self._sweep = False

    # -- failures -----------------------------------------------------------------------------

    async def _guarded(
        self, record: ProviderBatchRecord, report: PassReport, work: Awaitable[None]
    ) -> None:
        """Run one record's step; translate what the provider or the store says about it."""
        try:
            await work
        except StaleTransition as exc:
            logger.info("provider batch %s moved on elsewhere: %s", record.id, exc)
        except openai.OpenAIError as exc:
            failure = failure_of(exc)
            report.errors.append(f"{record.id}: {failure.reason}")
            current = await self.store.get_provider_batch(record.id)
            if failure.kind is Kind.SYSTEMIC:
                await self._pause(record, failure, report)
                if current is not None and current.state in _ABANDONABLE:
                    await self.store.abandon_provider_batch(record.id, token=self._token)
                    report.abandoned += 1
            else:
                logger.warning("provider batch %s: %s (next pass retries)", record.id, failure)

    async def _probe(
        self, now: datetime, pauses: Sequence[SubmissionPause]
    ) -> list[SubmissionPause]:
        """End the back-offs that a refused key, role or endpoint caused once a free call goes
        through again (a new holder asks at once: it may run with a fixed key); returns the
        ``pauses`` still in place."""
        kept: list[SubmissionPause] = []
        for pause in pauses:
            kept.append(pause)
            group = (pause.endpoint, pause.model)
            last = self._probed_at.get(group)
            if pause.until <= now or pause.reason not in _PROBED:
                continue
            every = timedelta(seconds=self.options.probe_every)
            if last is not None and now - last < every:
                self._due(last + every)  # the next pass comes in time for the next probe
                continue
            self._probed_at[group] = now
            try:
                await self.client.files.list(limit=1)
            except openai.OpenAIError as exc:
                failure = failure_of(exc)
                logger.info("batch submitter: %s still refused (%s)", pause.model, failure.reason)
                self._refused(failure)
                self._due(now + every)
                continue
            logger.info(
                "batch submitter: the provider accepts the credentials again; %s submits now",
                pause.model,
            )
            await self.store.clear_llm_submission_pause(pause.endpoint, pause.model)
            kept.pop()
            self._accepted()
        return kept

    async def _pause(
        self, record: ProviderBatchRecord, failure: Failure, report: PassReport
    ) -> None:
        pauses = {(p.endpoint, p.model): p for p in await self.store.llm_submission_pauses()}
        refusals = pauses[(record.endpoint, record.model)].refusals + 1 if (
            (record.endpoint, record.model) in pauses
        ) else 1  # fmt: skip
        until = self._clock() + timedelta(seconds=backoff_delay(refusals, self.options.refusal))
        await self.store.pause_llm_submission(
            record.endpoint,
            record.model,
            until=until,
            reason=failure.reason,
            description=failure.description,
        )
        report.paused.append(f"{record.model}: {failure.reason}")
        logger.warning(
            "batch submissions of %s paused until %s: %s",
            record.model,
            until.isoformat(timespec="seconds"),
            failure.reason,
        )
        self._refused(failure)
        if failure.reason == "QueuedTokenQuotaExhausted":
            await self._learn_quota(record)

    def _refused(self, failure: Failure) -> None:
        """Tell ``on_refused`` of a refused key, role or endpoint (the worker opens its
        circuit breaker, as a live call's systemic failure does); a quota is not told: it
        frees itself as open batches end, and live calls may still go."""
        if self._on_refused is not None and failure.reason in _PROBED:
            self._told_refused = True
            self._on_refused(failure)

    def _accepted(self) -> None:
        """Tell ``on_accepted`` that the credentials ``on_refused`` heard of work again (only
        then: a live failure's breaker is not this submitter's to close)."""
        if self._told_refused and self._on_accepted is not None:
            self._told_refused = False
            self._on_accepted()


def failure_of(exc: openai.OpenAIError) -> Failure:
    """The one place an ``openai`` exception of a Files or Batches call is translated."""
    if isinstance(exc, openai.APIStatusError):
        return classify_status(exc.status_code, exc.code, exc.type, exc.message)
    if isinstance(exc, openai.APITimeoutError):
        return Failure(Kind.TRANSIENT, "LLMTimeout", str(exc))
    if isinstance(exc, openai.APIConnectionError):
        return Failure(Kind.TRANSIENT, "LLMConnectionError", str(exc))
    return Failure(Kind.TRANSIENT, f"LLM{type(exc).__name__}", str(exc))
