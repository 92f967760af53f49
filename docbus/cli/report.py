"""``docbus report``: what a batch produced and what its LLM calls cost, as rich tables or JSON.

:func:`~docbus.ops.report.collect_report` reads one batch from the store (:mod:`docbus.store`):
documents by outcome per handler (``Store.batch_counts``, with the dead-lettered ones split by the
reason of their latest dead letter, ``Store.dead_letter_reasons``) and the figures of every
``llm_calls`` audit row (``Store.iter_llm_usage``, streamed: prompts and answers are never read).
:class:`CallTally` adds those rows up per handler and step — calls, failed calls, prompt and
completion tokens, cost, p50/p95 latency — and per spend category
(:data:`~docbus.records.SPEND_CATEGORIES`), so the calls, tokens and cost spent on re-asks and on
retries (a repeat after a transient error, or any call on a later delivery) are shown apart. Every
figure is a sum of audit rows; the running totals kept on the batch record (``BatchRecord.cost``)
are shown next to them only when they disagree; the spend is also split by LLM mode (live and
batch columns, :func:`mode_table`). :func:`render_report` draws the tables,
:func:`~docbus.ops.report.report_json` gives the same figures as JSON (``--json``). Neighbours:
:mod:`docbus.cli.status` (progress while a batch runs), :mod:`docbus.cli.audit` (the prompt/response
pairs themselves)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from rich.console import Console, Group, RenderableType
from rich.text import Text

from docbus.cli.render import Table, make_console, untrusted
from docbus.ops import NotFound
from docbus.ops.report import (
    BatchReport,
    Usage,
    collect_report,
    report_json,
)
from docbus.records import SpendCategory
from docbus.settings import Settings
from docbus.store import Store

__all__ = [
    "EXIT_CODES",
    "add_arguments",
    "mode_table",
    "render_report",
    "run",
]

EXIT_CODES = {1: "the batch is not in the store"}

NO_STEP = "(no step)"
CATEGORY_LABELS: Mapping[str, str] = {"first": "first asks", "reask": "re-asks", "retry": "retries"}
_EXTRA_SPEND: tuple[SpendCategory, ...] = ("reask", "retry")


# -- figures (pure) -----------------------------------------------------------------------------


# -- reading the store --------------------------------------------------------------------------


# -- JSON ---------------------------------------------------------------------------------------


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
            table.add_row("", untrusted(f"  {reason}", style="red"), str(count))
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


def mode_table(report: BatchReport) -> Table:
    """The spend per LLM mode (live, batch), per step and in total."""
    modes = list(report.by_mode)
    table = Table(title="cost by LLM mode", title_justify="left")
    table.add_column("handler", no_wrap=True)
    table.add_column("step", no_wrap=True)
    for mode in modes:
        table.add_column(f"{mode} calls", justify="right")
        table.add_column(f"{mode} cost (USD)", justify="right")

    def cells(per_mode: Mapping[str, Usage]) -> list[str]:
        found: list[str] = []
        for mode in modes:
            usage = per_mode.get(mode, Usage())
            found += [f"{usage.calls:,}", _usd(usage.cost_usd)]
        return found

    for (handler, step), per_mode in sorted(
        report.step_modes.items(), key=lambda item: (item[0][0] or "", item[0][1] or "")
    ):
        table.add_row(handler or "-", step or NO_STEP, *cells(per_mode))
    table.add_section()
    table.add_row(Text("total", style="bold"), "", *cells(report.by_mode))
    return table


def render_report(report: BatchReport) -> RenderableType:
    """The whole report: a header line, then the documents, LLM and re-ask/retry tables."""
    record = report.record
    header = Text.assemble(("batch ", "bold"), untrusted(report.batch_id, "bold cyan"))
    if record is not None:
        header.append(f" → {record.topic} ({record.status})")
    header.append(f" · LLM mode {report.llm_mode}")
    parts: list[RenderableType] = [header, documents_table(report)]
    if report.total.calls:
        parts += [llm_table(report), mode_table(report), spend_table(report)]
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

    return run_async(lambda settings: _report(settings, args, console or make_console()))


async def _report(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from docbus.cli import print_json, say_error

    try:
        async with Store.from_settings(settings) as store:
            report = await collect_report(store, args.batch)
    except NotFound as exc:
        say_error("report", str(exc))
        return 1
    if args.json:
        print_json(console, report_json(report))
    else:
        console.print(render_report(report))
    return 0
