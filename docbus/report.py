"""``docbus report``: what a batch produced and what its LLM calls cost, as rich tables or JSON.

:func:`collect_report` reads one batch from the store (:mod:`docbus.store`): documents by outcome
per handler (``Store.batch_counts``, with the dead-lettered ones split by the reason of their
latest dead letter, ``Store.dead_letter_reasons``) and the figures of every ``llm_calls`` audit
row (``Store.iter_llm_usage``, streamed: prompts and answers are never read). :class:`CallTally`
adds those rows up per handler and step — calls, failed calls, prompt and completion tokens,
cost, p50/p95 latency — and per spend category (:data:`~docbus.records.SPEND_CATEGORIES`), so
the calls, tokens and cost spent on re-asks and on retries (a repeat after a transient error, or
any call on a later delivery) are shown apart. Every figure is a sum of audit rows; the running
totals kept on the batch record (``BatchRecord.cost``) are shown next to them only when they
disagree. :func:`render_report` draws the tables, :func:`report_json` gives the same figures as
JSON (``--json``). Neighbours: :mod:`docbus.status` (progress while a batch runs),
:mod:`docbus.audit` (the prompt/response pairs themselves).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from docbus.records import SPEND_CATEGORIES, BatchCounts, BatchRecord, SpendCategory
from docbus.settings import Settings
from docbus.store import Store

__all__ = [
    "EXIT_CODES",
    "BatchReport",
    "CallTally",
    "StepFigures",
    "Usage",
    "add_arguments",
    "collect_report",
    "percentile",
    "render_report",
    "report_json",
    "run",
]

EXIT_CODES = {1: "the batch is not in the store"}

NO_STEP = "(no step)"
CATEGORY_LABELS: Mapping[str, str] = {"first": "first asks", "reask": "re-asks", "retry": "retries"}
_EXTRA_SPEND: tuple[SpendCategory, ...] = ("reask", "retry")


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

    @classmethod
    def build(
        cls,
        batch_id: str,
        record: BatchRecord | None,
        counts: BatchCounts,
        reasons: dict[str, dict[str, int]],
        tally: CallTally,
    ) -> BatchReport:
        steps = tally.steps()
        total = Usage()
        by_category = {category: Usage() for category in SPEND_CATEGORIES}
        for figures in steps:
            total.add(figures.usage)
            for category, usage in figures.by_category.items():
                by_category.setdefault(category, Usage()).add(usage)
        latencies = tally.latencies()
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


# -- reading the store --------------------------------------------------------------------------


async def collect_report(store: Store, batch_id: str) -> BatchReport:
    """One batch's report; raises ``LookupError`` when the store knows nothing of it."""
    record = await store.get_batch(batch_id)
    tally = CallTally()
    handlers: set[str] = set()
    async for row in store.iter_llm_usage(batch_id):
        tally.add(row)
        if isinstance(row.get("handler"), str):
            handlers.add(row["handler"])
    counts = await store.batch_counts(batch_id, handlers=sorted(handlers))
    if record is None and not counts.handlers and counts.published == 0:
        raise LookupError(batch_id)
    reasons = await store.dead_letter_reasons(batch_id)
    return BatchReport.build(batch_id, record, counts, reasons, tally)


# -- JSON ---------------------------------------------------------------------------------------


def report_json(report: BatchReport) -> dict[str, Any]:
    """The report's figures as JSON-ready data (what ``--json`` prints)."""
    record = report.record
    counts = report.counts
    return {
        "batch_id": report.batch_id,
        "topic": record.topic if record is not None else None,
        "status": record.status if record is not None else None,
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
            "steps": [
                {
                    "handler": figures.handler,
                    "step": figures.step,
                    **figures.usage.to_json(),
                    "latency_p50_s": figures.latency_p50,
                    "latency_p95_s": figures.latency_p95,
                    "reasks": figures.by_category.get("reask", Usage()).to_json(),
                    "retries": figures.by_category.get("retry", Usage()).to_json(),
                }
                for figures in report.steps
            ],
            "recorded_cost": record.cost.model_dump(mode="json") if record is not None else None,
        },
    }


# -- rendering ----------------------------------------------------------------------------------


def _usd(value: float) -> str:
    return f"{value:,.4f}" if value >= 0.01 or value == 0 else f"{value:.6f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole > 0 else "-"


def documents_table(report: BatchReport) -> Table:
    """Documents by outcome per handler, dead letters split by reason."""
    counts = report.counts
    table = Table(
        title=f"documents: {counts.published} published", title_justify="left", show_lines=False
    )
    table.add_column("handler", no_wrap=True)
    table.add_column("outcome")
    table.add_column("documents", justify="right")
    for name, handler in counts.handlers.items():
        table.add_row(name, "done", str(handler.done))
        reasons = report.reasons.get(name, {})
        table.add_row("", "dead-lettered", str(handler.dead_lettered))
        for reason, count in reasons.items():
            table.add_row("", Text(f"  {reason}", style="red"), str(count))
        table.add_row("", "pending", str(handler.pending))
        table.add_section()
    table.add_row(Text("all handlers", style="bold"), "done", str(counts.done))
    table.add_row("", "dead-lettered", str(counts.dead_lettered))
    table.add_row("", "pending", str(counts.pending))
    return table


def llm_table(report: BatchReport) -> Table:
    """LLM calls, tokens, cost and latency per handler and step, with the batch's total."""
    table = Table(title="LLM calls per step", title_justify="left")
    table.add_column("handler", no_wrap=True)
    table.add_column("step", no_wrap=True)
    for name in ("calls", "failed", "prompt tokens", "completion tokens", "cost (USD)"):
        table.add_column(name, justify="right")
    table.add_column("p50 s", justify="right")
    table.add_column("p95 s", justify="right")
    for figures in report.steps:
        usage = figures.usage
        table.add_row(
            figures.handler or "-",
            figures.step or NO_STEP,
            f"{usage.calls:,}",
            f"{usage.failed:,}",
            f"{usage.prompt_tokens:,}",
            f"{usage.completion_tokens:,}",
            _usd(usage.cost_usd),
            _seconds(figures.latency_p50),
            _seconds(figures.latency_p95),
        )
    total = report.total
    table.add_section()
    table.add_row(
        Text("total", style="bold"),
        "",
        f"{total.calls:,}",
        f"{total.failed:,}",
        f"{total.prompt_tokens:,}",
        f"{total.completion_tokens:,}",
        _usd(total.cost_usd),
        _seconds(report.latency_p50),
        _seconds(report.latency_p95),
    )
    return table


def spend_table(report: BatchReport) -> Table:
    """The calls, tokens and cost spent on re-asks and on retries, per step, then in total."""
    table = Table(
        title="spent on re-asks and retries",
        title_justify="left",
        caption="re-asks: after an answer failed validation; retries: requests repeated after a "
        "transient error, and every call on a later delivery",
        caption_justify="left",
    )
    table.add_column("handler", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("spent on")
    for name in ("calls", "prompt tokens", "completion tokens", "cost (USD)", "share of cost"):
        table.add_column(name, justify="right")
    whole = report.total.cost_usd

    def row(handler: str, step: str, label: str, usage: Usage) -> None:
        table.add_row(
            handler,
            step,
            label,
            f"{usage.calls:,}",
            f"{usage.prompt_tokens:,}",
            f"{usage.completion_tokens:,}",
            _usd(usage.cost_usd),
            _share(usage.cost_usd, whole),
        )

    for figures in report.steps:
        for category in _EXTRA_SPEND:
            usage = figures.by_category.get(category)
            if usage is not None and usage.calls:
                label = CATEGORY_LABELS[category]
                row(figures.handler or "-", figures.step or NO_STEP, label, usage)
    table.add_section()
    for category in _EXTRA_SPEND:
        row("all", "", CATEGORY_LABELS[category], report.spent_on(category))
    return table


def render_report(report: BatchReport) -> RenderableType:
    """The whole report: a header line, then the documents, LLM and re-ask/retry tables."""
    record = report.record
    header = Text.assemble(("batch ", "bold"), (report.batch_id, "bold cyan"))
    if record is not None:
        header.append(f" → {record.topic} ({record.status})")
    parts: list[RenderableType] = [header, documents_table(report)]
    if report.total.calls:
        parts += [llm_table(report), spend_table(report)]
    else:
        parts.append(Text("no LLM calls recorded for this batch"))
    if report.recorded_cost_differs and record is not None:
        cost = record.cost
        parts.append(
            Text(
                f"note: the batch record's running totals ({cost.calls:,} calls, "
                f"{cost.prompt_tokens + cost.completion_tokens:,} tokens, {_usd(cost.usd)} USD) "
                "differ from the audit rows shown above, which are authoritative",
                style="yellow",
            )
        )
    return Group(*parts)


# -- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", required=True, metavar="ID", help="the batch to report on")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    """Print the report of ``--batch`` (tables, or JSON on stdout); errors go to stderr."""
    from docbus.cli import run_async

    return run_async(lambda settings: _report(settings, args, console or Console()))


async def _report(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from docbus.cli import print_json, say_error

    try:
        async with Store.from_settings(settings) as store:
            report = await collect_report(store, args.batch)
    except LookupError:
        say_error("report", f"no batch {args.batch!r} in the store")
        return 1
    if args.json:
        print_json(console, report_json(report))
    else:
        console.print(render_report(report))
    return 0
