"""Report: what a batch produced and what its LLM calls cost, as plain data.

:func:`collect_report` reads one batch from the store (:mod:`docbus.store`): documents by outcome
per handler (``Store.batch_counts``, with the dead-lettered ones split by the reason of their
latest dead letter, ``Store.dead_letter_reasons``) and the figures of every LLM audit row
(``Store.iter_llm_usage``, streamed: prompts and answers are never read). :class:`CallTally`
adds those rows up per handler and step — calls, failed calls, prompt and completion tokens,
cost, p50/p95 latency — and per spend category (:data:`~docbus.records.SPEND_CATEGORIES`), so
the calls, tokens and cost spent on re-asks and on retries (a repeat after a transient error, or
any call on a later delivery) are shown apart. Every figure is a sum of audit rows; the running
totals kept on the batch record (``BatchRecord.cost``) are shown next to them only when they
disagree. The same spend is split by LLM mode (``live`` or ``batch``, the audit rows' ``llm_mode``;
``Store.llm_usage_by_mode``), overall and per step, with the batch's mode from its record.
:func:`report_json` is the figures as JSON-ready data. Neighbours:
:mod:`docbus.ops.status` (progress while a batch runs), :mod:`docbus.ops.audit` (the
prompt/response pairs themselves), :mod:`docbus.cli.report` (the tables).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from docbus.ops.batches import no_batch
from docbus.records import LLM_MODES, SPEND_CATEGORIES, BatchCounts, BatchRecord, SpendCategory
from docbus.store import Store

__all__ = [
    "BatchReport",
    "CallTally",
    "StepFigures",
    "Usage",
    "collect_report",
    "mode_split",
    "percentile",
    "report_json",
]


# -- figures (pure) -----------------------------------------------------------------------------


@dataclass
class Usage:
    """Calls, tokens and money of some LLM audit rows."""

    calls: int = 0
    failed: int = 0
    """Rows with an ``error_type``: refused or failed requests, and answers that did not
    validate (which still cost tokens)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add_row(self, row: Mapping[str, Any]) -> None:
        self.calls += 1
        self.failed += 1 if row.get("error_type") else 0
        self.prompt_tokens += int(row.get("prompt_tokens") or 0)
        self.completion_tokens += int(row.get("completion_tokens") or 0)
        self.cost_usd += float(row.get("cost_usd") or 0.0)

    def add(self, other: Usage) -> None:
        self.calls += other.calls
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly; None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class StepFigures:
    """One handler's step (or calls made outside any step): its usage and latency."""

    handler: str | None
    step: str | None
    usage: Usage
    by_category: dict[str, Usage]
    latency_p50: float | None
    latency_p95: float | None


class CallTally:
    """Adds up audit rows (as ``Store.iter_llm_usage`` yields them) per step and category.

    Latency percentiles are over every request of a step, failed ones included: each row is
    one HTTP request and its ``latency_s`` what the caller waited.
    """

    def __init__(self) -> None:
        self._usage: dict[tuple[str | None, str | None], dict[str, Usage]] = {}
        self._latencies: dict[tuple[str | None, str | None], list[float]] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        key = (_name(row.get("handler")), _name(row.get("step")))
        category = str(row.get("category") or "first")
        per_category = self._usage.setdefault(key, {})
        per_category.setdefault(category, Usage()).add_row(row)
        self._latencies.setdefault(key, []).append(float(row.get("latency_s") or 0.0))

    def steps(self) -> list[StepFigures]:
        """Per (handler, step), sorted by handler then step (calls outside steps last)."""
        figures = []
        for key in sorted(self._usage, key=_step_order):
            total = Usage()
            for usage in self._usage[key].values():
                total.add(usage)
            latencies = self._latencies[key]
            figures.append(
                StepFigures(
                    handler=key[0],
                    step=key[1],
                    usage=total,
                    by_category=dict(self._usage[key]),
                    latency_p50=percentile(latencies, 50),
                    latency_p95=percentile(latencies, 95),
                )
            )
        return figures

    def latencies(self) -> list[float]:
        return [value for values in self._latencies.values() for value in values]


def _name(value: Any) -> str | None:
    return None if value is None else str(value)


def _step_order(key: tuple[str | None, str | None]) -> tuple[bool, str, bool, str]:
    handler, step = key
    return (handler is None, handler or "", step is None, step or "")


@dataclass(frozen=True)
class BatchReport:
    """Everything ``docbus report`` shows about one batch."""

    batch_id: str
    record: BatchRecord | None
    counts: BatchCounts
    reasons: dict[str, dict[str, int]]
    """Handler → dead-letter reason → documents (the latest reason of each document)."""
    steps: list[StepFigures]
    latency_p50: float | None = None
    latency_p95: float | None = None
    total: Usage = field(default_factory=Usage)
    by_category: dict[str, Usage] = field(default_factory=dict)
    by_mode: dict[str, Usage] = field(default_factory=dict)
    """LLM mode (``live``, ``batch``: both always present) → the spend made in it."""
    step_modes: dict[tuple[str | None, str | None], dict[str, Usage]] = field(default_factory=dict)
    """(handler, step) → LLM mode → the spend of that step made in it."""

    @property
    def llm_mode(self) -> str:
        """The batch's LLM mode as recorded (``default``: each handler's, else the worker's)."""
        return (self.record.llm_mode if self.record is not None else None) or "default"

    @classmethod
    def build(
        cls,
        batch_id: str,
        record: BatchRecord | None,
        counts: BatchCounts,
        reasons: dict[str, dict[str, int]],
        tally: CallTally,
        modes: Sequence[Mapping[str, Any]] = (),
    ) -> BatchReport:
        """The report of ``tally``'s rows; ``modes`` are their sums per handler, step and
        LLM mode (``Store.llm_usage_by_mode``)."""
        steps = tally.steps()
        total = Usage()
        by_category = {category: Usage() for category in SPEND_CATEGORIES}
        for figures in steps:
            total.add(figures.usage)
            for category, usage in figures.by_category.items():
                by_category.setdefault(category, Usage()).add(usage)
        latencies = tally.latencies()
        by_mode, step_modes = mode_split(modes)
        return cls(
            batch_id=batch_id,
            record=record,
            counts=counts,
            reasons=reasons,
            steps=steps,
            latency_p50=percentile(latencies, 50),
            latency_p95=percentile(latencies, 95),
            total=total,
            by_category=by_category,
            by_mode=by_mode,
            step_modes=step_modes,
        )

    def spent_on(self, category: SpendCategory) -> Usage:
        return self.by_category.get(category, Usage())

    @property
    def recorded_cost_differs(self) -> bool:
        """The batch record's running totals disagree with the audit rows (a lost update)."""
        if self.record is None:
            return False
        cost = self.record.cost
        return (cost.calls, cost.prompt_tokens, cost.completion_tokens) != (
            self.total.calls,
            self.total.prompt_tokens,
            self.total.completion_tokens,
        ) or not math.isclose(cost.usd, self.total.cost_usd, rel_tol=1e-9, abs_tol=1e-12)


def mode_split(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Usage], dict[tuple[str | None, str | None], dict[str, Usage]]]:
    """Spend per LLM mode, overall and per (handler, step), from sums per handler, step and
    mode; every mode of :data:`~docbus.records.LLM_MODES` is present overall."""
    overall: dict[str, Usage] = {mode: Usage() for mode in LLM_MODES}
    per_step: dict[tuple[str | None, str | None], dict[str, Usage]] = {}
    for row in rows:
        mode = str(row.get("llm_mode") or "live")
        usage = Usage(
            calls=int(row.get("calls") or 0),
            prompt_tokens=int(row.get("prompt_tokens") or 0),
            completion_tokens=int(row.get("completion_tokens") or 0),
            cost_usd=float(row.get("cost_usd") or 0.0),
        )
        overall.setdefault(mode, Usage()).add(usage)
        key = (_name(row.get("handler")), _name(row.get("step")))
        per_step.setdefault(key, {}).setdefault(mode, Usage()).add(usage)
    return overall, per_step


# -- reading the store --------------------------------------------------------------------------


async def collect_report(store: Store, batch_id: str) -> BatchReport:
    """One batch's report; raises :class:`~docbus.ops.NotFound` when the store knows nothing
    of it."""
    record = await store.get_batch(batch_id)
    tally = CallTally()
    handlers: set[str] = set()
    async for row in store.iter_llm_usage(batch_id):
        tally.add(row)
        if isinstance(row.get("handler"), str):
            handlers.add(row["handler"])
    counts = await store.batch_counts(batch_id, handlers=sorted(handlers))
    if record is None and not counts.handlers and counts.published == 0:
        raise no_batch(batch_id)
    reasons = await store.dead_letter_reasons(batch_id)
    modes = await store.llm_usage_by_mode(batch_id)
    return BatchReport.build(batch_id, record, counts, reasons, tally, modes)


# -- JSON ---------------------------------------------------------------------------------------


def report_json(report: BatchReport) -> dict[str, Any]:
    """The report's figures as JSON-ready data (what ``--json`` prints)."""
    record = report.record
    counts = report.counts
    return {
        "batch_id": report.batch_id,
        "topic": record.topic if record is not None else None,
        "status": record.status if record is not None else None,
        "llm_mode": report.llm_mode,
        "documents": {
            "published": counts.published,
            "done": counts.done,
            "dead_lettered": counts.dead_lettered,
            "pending": counts.pending,
            "handlers": {
                name: {
                    "done": handler.done,
                    "dead_lettered": handler.dead_lettered,
                    "dead_letter_reasons": report.reasons.get(name, {}),
                    "pending": handler.pending,
                }
                for name, handler in counts.handlers.items()
            },
        },
        "llm": {
            "total": {
                **report.total.to_json(),
                "latency_p50_s": report.latency_p50,
                "latency_p95_s": report.latency_p95,
            },
            "first": report.spent_on("first").to_json(),
            "reasks": report.spent_on("reask").to_json(),
            "retries": report.spent_on("retry").to_json(),
            "by_mode": {mode: usage.to_json() for mode, usage in report.by_mode.items()},
            "steps": [
                {
                    "handler": figures.handler,
                    "step": figures.step,
                    **figures.usage.to_json(),
                    "latency_p50_s": figures.latency_p50,
                    "latency_p95_s": figures.latency_p95,
                    "reasks": figures.by_category.get("reask", Usage()).to_json(),
                    "retries": figures.by_category.get("retry", Usage()).to_json(),
                    "by_mode": {
                        mode: usage.to_json()
                        for mode, usage in report.step_modes.get(
                            (figures.handler, figures.step), {}
                        ).items()
                    },
                }
                for figures in report.steps
            ],
            "recorded_cost": record.cost.model_dump(mode="json") if record is not None else None,
        },
    }
