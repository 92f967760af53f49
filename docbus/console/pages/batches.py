"""The batches page (every batch, live) and the batch page (one batch in depth).

Batches: :func:`docbus.ops.collect_status` per batch — per handler done, retrying,
dead-lettered, parked and pending as a progress bar — with documents per second between two
refreshes (:func:`docbus.ops.throughput`), an ETA from that rate, tokens and cost (first tries,
re-asks and retries apart) and the budget; a small script reloads the table while a batch is
unfinished. Batch: :func:`docbus.ops.collect_report` (failures by reason, cost split, step
latency p50/p95), :func:`docbus.ops.timeline.batch_timeline` (throughput over time), the
batch's replay runs and the rollbacks of its runs.

Each batch shows its LLM mode; one with batch-mode LLM requests also their counts per state, its
open provider batches and any submission back-off, and — for a session holding the action
token, as a POST with the CSRF token like every action — a button that cancels its LLM requests
(:func:`docbus.ops.llm_batches.cancel_llm_batch`: pending ones held, its own open provider
batches cancelled, documents left parked) or resumes a cancelled batch
(:func:`docbus.ops.llm_batches.resume_llm_batch`), then says what it did.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from docbus.console.app import ConsoleState, guard_action, message, render
from docbus.console.charts import Segment, line_chart, progress_segments
from docbus.ops.backlog import Backlog, BacklogProbe
from docbus.ops.llm_batches import cancel_llm_batch, resume_llm_batch
from docbus.ops.report import collect_report
from docbus.ops.status import BatchStatus, collect_status, throughput
from docbus.ops.timeline import batch_timeline

__all__ = ["routes"]

PARTS = ("done", "retrying", "dead-lettered", "parked", "pending")

BACKLOG_TTL = 30.0
"""Seconds a settled batch's backlog, as the broker told it, is shown before asking again."""
BACKLOG_TIMEOUT = 10.0


@dataclass(frozen=True)
class Progress:
    """One row of the batches table: a handler's (or the batch's) counts and its bar."""

    name: str
    counts: dict[str, int]
    segments: list[Segment]
    rate: float


def _parts(status: BatchStatus, handler: str | None) -> dict[str, int]:
    if handler is None:
        counts: Any = status.counts
        retrying, parked = status.retrying, status.parked
    else:
        counts = status.counts.handlers[handler]
        retrying = status.handler_retrying.get(handler, 0)
        parked = status.handler_parked.get(handler, 0)
    return {
        "done": counts.done,
        "retrying": retrying,
        "dead-lettered": counts.dead_lettered,
        "parked": parked,
        "pending": status.pending(handler),
    }


def _row(status: BatchStatus, handler: str | None, rates: dict[str | None, float]) -> Progress:
    counts = _parts(status, handler)
    segments = progress_segments([(name, counts[name]) for name in PARTS], status.counts.published)
    return Progress(handler or "all handlers", counts, segments, rates.get(handler, 0.0))


def eta_seconds(status: BatchStatus, rate: float) -> float | None:
    """Seconds until the batch's unfinished documents are done at ``rate`` (None: finished,
    or no rate to go by)."""
    left = status.counts.published - status.finished()
    if status.settled or left <= 0 or rate <= 0:
        return None
    return left / rate


class CachedProbe:
    """Asks the broker what is left of a settled batch at most every :data:`BACKLOG_TTL`
    seconds (peeking every subscription takes about a second each on the emulator), through
    one :class:`~docbus.ops.backlog.BacklogProbe` opened on first need."""

    def __init__(self, state: ConsoleState, stack: contextlib.AsyncExitStack) -> None:
        self._state = state
        self._stack = stack
        self._probe: Any = None

    async def __call__(self, topic: str, batch_id: str) -> Backlog:
        cache = self._state.backlogs
        now = time.monotonic()
        known = cache.get(batch_id)
        if known is not None and now - known[0] < BACKLOG_TTL:
            return known[1]
        if self._probe is None:
            config = self._state.config
            self._probe = await self._stack.enter_async_context(
                BacklogProbe(config.settings, config.topology, timeout=BACKLOG_TIMEOUT)
            )
        backlog: Backlog = await self._probe(topic, batch_id)
        cache[batch_id] = (now, backlog)
        return backlog


async def _statuses(state: ConsoleState, batch_ids: list[str] | None, limit: int) -> list[Any]:
    async with contextlib.AsyncExitStack() as stack:
        probe = CachedProbe(state, stack) if state.config.topology is not None else None
        return await collect_status(state.store, batch_ids, limit=limit, probe=probe)


async def batches_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    limit = int(request.query_params.get("limit", "20"))
    statuses = await _statuses(state, None, limit)
    rows = []
    for status in statuses:
        previous = state.previous.get(status.batch_id)
        live = previous is not None and not status.settled
        rates = throughput(status, previous) if live else throughput(status)
        state.previous[status.batch_id] = status
        rows.append(
            {
                "status": status,
                "overall": _row(status, None, rates),
                "handlers": [_row(status, name, rates) for name in status.counts.handlers],
                "eta": eta_seconds(status, rates.get(None, 0.0)),
            }
        )
    unfinished = any(not status.complete for status in statuses)
    template = "batches_table.html" if request.query_params.get("fragment") else "batches.html"
    refresh = state.config.refresh_seconds if unfinished else 0
    response = render(request, template, rows=rows, refresh=refresh, parts=PARTS)
    response.headers["X-Refresh"] = f"{refresh:g}"
    return response


async def batch_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    batch_id = request.path_params["batch_id"]
    report = await collect_report(state.store, batch_id)
    statuses = await _statuses(state, [batch_id], 1)
    series = await batch_timeline(state.store, batch_id)
    chart = line_chart([interval.per_second for interval in series])
    replays = await state.store.replays_of_batch(batch_id)
    rollbacks = await state.store.rollbacks_touching(batch_id, [r.id for r in replays])
    return render(
        request,
        "batch.html",
        report=report,
        status=statuses[0] if statuses else None,
        series=series,
        chart=chart,
        replays=replays,
        rollbacks=rollbacks,
    )


async def llm_batch_action(request: Request) -> Response:
    """Cancel or resume a batch's batch-mode LLM requests (token and CSRF checked first)."""
    from docbus.cli.llm_batches import cancel_text, provider_canceller, resume_text

    state: ConsoleState = request.app.state.console
    fields, refused = await guard_action(request)
    if refused is not None:
        return refused
    batch_id = fields.get("batch", "")
    action = request.path_params["action"]
    if action not in ("cancel", "resume"):
        return message(request, "Not found", f"no action {action!r}: cancel or resume", 404)
    if action == "cancel":
        async with provider_canceller(state.config.settings) as cancel:
            outcome = await cancel_llm_batch(state.store, batch_id, cancel)
        title, text, cancelled = "LLM requests cancelled", cancel_text(outcome), outcome.cancelled
    else:
        resumed = await resume_llm_batch(state.store, batch_id)
        title, text, cancelled = "LLM requests resumed", resume_text(resumed), []
    return render(request, "llm_batch_done.html", title=title, text=text, cancelled=cancelled)


def routes() -> list[Route]:
    return [
        Route("/llm-batches/{action:str}", llm_batch_action, methods=["POST"]),
        Route("/batches", batches_page),
        Route("/batches/{batch_id:path}", batch_page),
    ]
