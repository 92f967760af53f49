"""Batch mode of ``ctx.llm``: a call becomes a request for the next provider batch.

:func:`batch_exchange` is what :meth:`handlers.llm.client.LLMClient.exchange` does instead of
calling the live endpoint when the call's mode (:mod:`handlers.llm.mode`) is ``batch``. It
builds the exact body the live call would send and keys it (:class:`~docbus.llm_batch.
BatchRequest`) by the step that makes it (:func:`handlers.steps.current_step_id`: document,
handler, version, step and input), the document's replay generation and the call's ordinal
among identical calls of the step, so a redelivery finds the same request again and a replay
asks afresh. Then, by the request's state in the store:

    answered -> the stored answer, read, validated and audited as a live answer is (audit row
                ``llm_mode="batch"`` with its provider batch and custom id, priced at the
                batch price, written once per request); a schema failure re-asks, which is a
                new request in the next round
    failed   -> the dead letter the live taxonomy names (``BatchExpired``, ``LLMBadRequest``…)
    pending  -> registered (after the budget check) and waiting for the delivery's round
                (:mod:`handlers.batch_round`): the delivery parks with
                :class:`~handlers.errors.AwaitingBatch` once every running step waits

:class:`BatchBookkeeping` is the worker's side of the submitter
(:mod:`docbus.llm_batch.submitter`): the cost of every answered line at the batch price on its
docbus batch (once per provider batch, however often a crash repeats the collection) and, once
requests are answered or failed, the parked deliveries waiting for them marked for resumption.
:func:`submitter_options` maps ``llm.batch`` onto the submitter's options.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from docbus.backoff import BackoffPolicy
from docbus.llm_batch import BatchRequest as _BatchRequest
from docbus.llm_batch import (
    FileLimits,
    SettleLimits,
    Settlement,
    SubmitPolicy,
    canonical_json,
)
from docbus.llm_batch.submitter import SubmitterOptions
from docbus.settings import LLMBatchSettings
from docbus.store import LLMRequestRecord, LLMRequestState, ProviderBatchRecord, Store
from handlers.batch_round import round_of
from handlers.delivery import delivery_of
from handlers.errors import DeadLetter
from handlers.llm.audit import write_audit
from handlers.llm.pricing import PriceTable
from handlers.steps import current_step, current_step_id

if TYPE_CHECKING:
    from handlers.context import Context
    from handlers.llm.client import Answer, Ask, LLMClient

__all__ = ["AZURE_URLS", "BatchBookkeeping", "batch_exchange", "submitter_options"]

logger = logging.getLogger(__name__)

AZURE_URLS = {"/v1/chat/completions": "/chat/completions"}
"""Azure OpenAI's deployments take ``/chat/completions`` in batch lines and in ``create``."""
_DESCRIPTION_LIMIT = 500
_DONE = (LLMRequestState.ANSWERED, LLMRequestState.FAILED)
MARK_AT_ONCE = 200
"""Answered requests whose parked deliveries are marked for resumption at a time (the
worker starts on each part as it is marked)."""


def submitter_options(batch: LLMBatchSettings, *, azure: bool = False) -> SubmitterOptions:
    """The submitter's options from ``llm.batch`` (Azure: its line URL)."""
    return SubmitterOptions(
        limits=FileLimits(max_requests=batch.max_requests_per_file, max_bytes=batch.max_file_bytes),
        policy=SubmitPolicy(
            max_wait=batch.max_wait,
            min_requests=batch.min_requests,
            min_bytes=batch.min_bytes,
            quiet=batch.quiet,
        ),
        settle_limits=SettleLimits(
            max_attempts=batch.max_attempts, max_expiries=batch.max_expiries
        ),
        lease_ttl=batch.lease_ttl,
        renew_every=batch.renew_every,
        url_for=AZURE_URLS if azure else {},
        poll=BackoffPolicy(base=batch.poll_base, cap=batch.poll_max),
        refusal=BackoffPolicy(base=batch.refusal_base, cap=batch.refusal_max),
        delete_files=batch.delete_files,
        probe_every=batch.probe_every,
        queued_tokens=dict(batch.queued_tokens),
    )


def request_of(ctx: Context, params: dict[str, Any], estimate: int) -> tuple[_BatchRequest, str]:
    """The request a call with ``params`` (the live body) is, in this step of this delivery,
    and the step identity it is keyed by."""
    step = current_step_id() or ctx.checkpoint_key("<handler>", None).id
    body_key = hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()
    ordinal = round_of(ctx).ordinal(step, body_key)
    step_id = f"{step}:g{ctx.envelope.generation}:n{ordinal}"
    return _BatchRequest.of(step_id, params, estimated_tokens=estimate), step_id


async def batch_exchange(client: LLMClient, ctx: Context, ask: Ask) -> Answer:
    """:meth:`LLMClient.exchange` in batch mode (see the module docstring)."""
    from handlers.llm.client import _messages_for

    store = client.store
    assert store is not None  # (batch mode needs the store: the client checks)
    model = ask.model or client.options.model
    features = client._features_for(model)
    mode = client._mode(ask, features)
    messages = _messages_for(ask, mode)
    params = client._params(model, ask, mode, messages, features)
    params.pop("extra_headers", None)  # a batch line carries no HTTP headers
    request, step_id = request_of(ctx, params, client._estimate(model, ask, mode, messages))
    record = (await store.llm_requests([request.key])).get(request.key)
    if record is None or record.state not in _DONE:
        # before it can be submitted, as before a live call, counting what the batch's open
        # requests will cost: a round cannot overshoot the budget by more than one call
        reservations = client.reservations
        await client._check_budget(
            ctx, functools.partial(reservations.reserved, store, ctx.batch_id)
        )
        if record is None:
            expected = max(0, request.estimated_tokens - client.tokens.count_messages(messages))
            usd = client.pricing.cost(
                model,
                request.estimated_tokens - expected,
                expected,
                llm_mode="batch",
            )
            record = await store.register_llm_request(
                request,
                step_id=step_id,
                batch_id=ctx.batch_id,
                doc_id=ctx.doc_id,
                handler=ctx.handler_name,
                estimated_usd=usd,
            )
            reservations.add(ctx.batch_id, usd)
    if record.state is LLMRequestState.ANSWERED:
        return await _answered(client, ctx, ask, model, mode, messages, record)
    if record.state is LLMRequestState.FAILED:
        failure = record.failure or {}
        where = current_step() or ctx.handler_name
        raise DeadLetter(
            str(failure.get("reason") or "LLMBatchFailed"),
            f"{where}: {failure.get('description') or 'the provider batch failed it'}"[
                :_DESCRIPTION_LIMIT
            ],
        )
    await round_of(ctx).wait(record.key)  # raises AwaitingBatch once the round closes


async def _answered(
    client: LLMClient,
    ctx: Context,
    ask: Ask,
    model: str,
    mode: Any,
    messages: list[dict[str, Any]],
    record: LLMRequestRecord,
) -> Answer:
    """A stored batch answer, used exactly as a live answer is (parse, audit, filter)."""
    from handlers.llm.client import Answer, _Reply

    answer = record.answer or {}
    try:
        reply = _Reply.of(answer.get("body") or {})
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DeadLetter("LLMBadResponse", f"batch answer is not a chat completion: {exc}") from exc
    prompt_tokens = int(answer.get("prompt_tokens") or reply.prompt_tokens)
    completion_tokens = int(answer.get("completion_tokens") or reply.completion_tokens)
    client._learn(model, {}, completion_tokens)
    text, finish = reply.text, reply.finish_reason
    parsed, error, filtered = reply.judged(ask)
    cost = client.pricing.cost(
        reply.model or model, prompt_tokens, completion_tokens, fallback=model, llm_mode="batch"
    )
    row = client._row(
        ctx,
        ask,
        0,
        model,
        mode,
        messages,
        0.0,
        response_model=reply.model,
        text=text,
        parsed=parsed,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=cost,
        request_id=answer.get("request_id"),
        error=error,
    ).model_copy(
        update={
            "llm_mode": "batch",
            "provider_batch_id": answer.get("provider_batch_id"),
            "custom_id": record.key,
        }
    )
    # One row per request however often a redelivery reads its answer; its cost reached the
    # batch's totals when the submitter collected it (BatchBookkeeping), not here.
    await delivery_of(ctx).writes.write(
        write_audit(client.store, row, row_id=f"batch-{record.key}", usage=False)
    )
    if filtered:
        where = current_step() or ctx.handler_name
        raise DeadLetter("ContentFiltered", f"{where}: {error}"[:_DESCRIPTION_LIMIT])
    return Answer(text, finish, parsed, error, row)


class Reservations:
    """What each batch's open requests are expected to cost, read from the store at most once
    per ``refresh`` seconds and counted up locally between reads (every registration checks
    the budget: one aggregate per registration would make a round quadratic)."""

    def __init__(self, refresh: float) -> None:
        self.refresh = refresh
        self._by_batch: dict[str, tuple[float, float]] = {}  # batch -> (usd, read until)

    async def reserved(self, store: Store, batch_id: str) -> float:
        now = time.monotonic()
        known = self._by_batch.get(batch_id)
        if known is None or known[1] <= now:
            known = (await store.reserved_llm_usd(batch_id), now + self.refresh)
            self._by_batch[batch_id] = known
        return known[0]

    def add(self, batch_id: str, usd: float) -> None:
        known = self._by_batch.get(batch_id)
        if known is not None:
            self._by_batch[batch_id] = (known[0] + usd, known[1])


class BatchBookkeeping:
    """The worker's hooks on the submitter: batch-price costs and resumption requests."""

    def __init__(
        self, store: Store, pricing: PriceTable, resumable: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.pricing = pricing
        self.resumable = resumable
        """Called when parked deliveries were marked for resumption (the worker looks now)."""

    async def on_settled(self, record: ProviderBatchRecord, settlement: Settlement) -> None:
        """Add the answered lines' cost at the batch price to their docbus batches, once per
        provider batch record (called again after a crash before the apply: no effect)."""
        if not settlement.answers:
            return
        batches = await self.store.submitted_llm_batches(record.id)
        totals: dict[str, list[float]] = {}
        for key, line in settlement.answers.items():
            batch_id = batches.get(key)
            if batch_id is None:
                continue
            answered_by = line.body.get("model")
            usd = self.pricing.cost(
                answered_by if isinstance(answered_by, str) and answered_by else record.model,
                line.prompt_tokens,
                line.completion_tokens,
                fallback=record.model,
                llm_mode="batch",
            )
            sums = totals.setdefault(batch_id, [0.0, 0, 0, 0])
            sums[0] += usd
            sums[1] += line.prompt_tokens
            sums[2] += line.completion_tokens
            sums[3] += 1
        for batch_id, (usd, prompt, completion, calls) in totals.items():
            await self.store.add_provider_batch_cost(
                record.id,
                batch_id,
                usd=usd,
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
                calls=int(calls),
            )

    async def on_done(self, keys: Sequence[str] | None) -> None:
        """Requests answered or failed (None: any): resume the parked deliveries that waited
        only on such requests — a provider batch's keys :data:`MARK_AT_ONCE` at a time, the
        worker told after each part, so the round's first deliveries run while the rest are
        marked."""
        parts: list[Sequence[str] | None] = [None]
        if keys is not None:
            parts = [keys[i : i + MARK_AT_ONCE] for i in range(0, len(keys), MARK_AT_ONCE)]
        resumed = 0
        for part in parts:
            marked = await self.store.request_resume_for_llm_requests(part)
            if marked and self.resumable is not None:
                self.resumable()
            resumed += marked
        if resumed:
            logger.info("%d parked deliveries have their batch answers: resuming", resumed)
