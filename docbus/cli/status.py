"""``docbus status``: how far each batch has got — per batch and per handler, as tables or JSON.

:func:`~docbus.ops.status.collect_status` reads a batch's progress from the store
(:mod:`docbus.store`): ``Store.batch_counts`` gives published / done / dead-lettered / pending per
handler, the batch record (:class:`~docbus.records.BatchRecord`) its topic, publishing status, LLM
cost and over-budget flag and its own budget (``docbus publish --budget``).

*Parked*: a document whose message the worker set aside (deferred) until a condition clears — the
LLM endpoint refusing the key, a circuit breaker, the budget — has a parked record
(``Store.parked``); it counts as parked for that handler until it has a result or a dead letter.
*Retrying*: a document counts as retrying for a handler when the worker has noted a retry of it
(``Store.retried``, noted before each backoff) or an LLM audit row of the batch shows ``attempt >=
2`` for that (handler, doc_id) (``Store.llm_retried``), and the handler has neither a result nor a
dead letter for it yet, nor a parked message. Parked and retrying documents are taken out of
*pending*, so published = done + retrying + parked + dead-lettered + pending.

*Complete*: publishing has ended and every document sent is done or dead-lettered — and, when
the broker can be asked (:class:`~docbus.ops.backlog.BacklogProbe` peeks the batch's
subscriptions), no message of the batch is left on a subscription; when it cannot, the batch is
shown "complete (broker not checked)".

:func:`render_status` draws the tables, :func:`~docbus.ops.status.status_json` the same figures as
JSON (``--json``); throughput is documents finished (done or dead-lettered) per second since the
batch was created — up to its last result once complete — or, with ``--watch``, over the last
refresh interval. ``--watch`` redraws with ``rich.live.Live`` until every batch shown is complete,
or Ctrl-C (with ``--json``: waits, then prints the final figures once)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.text import Text

from docbus.cli.arguments import positive_int, positive_seconds
from docbus.cli.llm_batches import progress_text
from docbus.cli.render import Table, make_console, untrusted
from docbus.ops import NotFound
from docbus.ops.backlog import BacklogProbe
from docbus.ops.status import (
    BatchStatus,
    Probe,
    collect_status,
    status_json,
    throughput,
)
from docbus.settings import Settings
from docbus.store import Store

__all__ = [
    "EXIT_CODES",
    "add_arguments",
    "batch_table",
    "batch_view",
    "render_status",
    "run",
    "watch",
]

ALL = "all handlers"

EXIT_CODES = {
    1: "a batch shown needs attention (dead letters, parked documents, over budget, documents "
    "the publisher skipped or failed to send), or a batch given with --batch is not in the store"
}


# -- pure decisions -----------------------------------------------------------------------------


# -- reading the store --------------------------------------------------------------------------


# -- JSON ---------------------------------------------------------------------------------------


# -- rendering ----------------------------------------------------------------------------------


_NARROW = 110
"""Below this many columns the table drops its bars and borders and shortens two headers, so
it fits an 80-column terminal without folding a header or a handler name."""


def _share(done: int, total: int) -> str:
    return f"{100 * done / total:3.0f}%" if total else "  -"


def _bar(done: int, total: int) -> RenderableType:
    share = _share(done, total)
    table = Table.grid(padding=(0, 1))
    table.add_row(ProgressBar(total=max(total, 1), completed=done, width=12), share)
    return table


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def batch_view(status: BatchStatus, previous: BatchStatus | None = None) -> RenderableType:
    """One batch: its table, then a line on publishing, cost and budget (and one on its
    batch-mode LLM requests)."""
    parts: list[RenderableType] = [_FittedTable(status, previous), _caption(status)]
    if status.llm is not None:
        parts.append(progress_text(status.llm))
    return Group(*parts, Text(""))


class _FittedTable:
    """:func:`batch_table`, narrow or not by the width it is drawn at (``--watch`` too)."""

    def __init__(self, status: BatchStatus, previous: BatchStatus | None) -> None:
        self.status, self.previous = status, previous

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield batch_table(self.status, self.previous, narrow=options.max_width < _NARROW)


def batch_table(
    status: BatchStatus, previous: BatchStatus | None = None, *, narrow: bool = False
) -> Table:
    """One batch: an overall row, then one row per handler (``narrow``: for 80 columns)."""
    record = status.record
    rates = throughput(status, previous)
    rate_title = "docs/s (last interval)" if previous is not None else "docs/s"
    title = Text.assemble(
        ("batch ", "bold"),
        untrusted(record.id, "bold cyan"),
        f" → {record.topic} · LLM mode {status.llm_mode}",
    )
    if narrow:
        rate_title = "docs/s"
        table = Table(
            title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0)
        )
    else:
        table = Table(title=title, title_justify="left")
    table.add_column("handler", no_wrap=True)
    rolled = bool(status.counts.rolled_back)  # (a column only where a rollback happened)
    columns = ("published", "done", "retrying", "parked", "dead" if narrow else "dead-lettered")
    for name in (*columns, *(("rolled back",) if rolled else ()), "pending"):
        table.add_column(name, justify="right")
    if narrow:
        table.add_column("done %", justify="right")
    else:
        table.add_column("progress", numeric=True, justify="left")  # the bar is kept whole
    table.add_column(rate_title, justify="right")
    bar = _share if narrow else _bar
    counts = status.counts
    table.add_row(
        Text(ALL, style="bold"),
        str(counts.published),
        str(counts.done),
        str(status.retrying),
        str(status.parked),
        str(counts.dead_lettered),
        *((str(counts.rolled_back),) if rolled else ()),
        str(status.pending()),
        bar(status.finished(), counts.published),
        _rate(rates[None]),
    )
    for name, handler in counts.handlers.items():
        table.add_row(
            name,
            str(counts.published),
            str(handler.done),
            str(status.handler_retrying.get(name, 0)),
            str(status.handler_parked.get(name, 0)),
            str(handler.dead_lettered),
            *((str(handler.rolled_back),) if rolled else ()),
            str(status.pending(name)),
            bar(status.finished(name), counts.published),
            _rate(rates[name]),
        )
    return table


def _caption(status: BatchStatus) -> Text:
    record = status.record
    parts: list[tuple[str, str] | str] = [
        status.state,
        f" · created {record.created_at:%Y-%m-%d %H:%M:%S %Z}",
    ]
    backlog = status.backlog
    if backlog is not None and backlog.total:
        where = ", ".join(f"{name} {count}" for name, count in sorted(backlog.left.items()))
        parts.append(
            (f" · {backlog.total} message(s) of the batch still on the broker ({where})", "yellow")
        )
    elif backlog is not None and not backlog.checked:
        why = "; ".join(
            reason if name == "*" else f"{name}: {reason}"
            for name, reason in sorted(backlog.unchecked.items())
        )
        parts.append(f" · broker: {why}")
    if status.parked_reasons:
        reasons = sorted(status.parked_reasons.items())
        why = ", ".join(f"{reason} {count}" for reason, count in reasons)
        parts.append((f" · parked: {why}", "yellow"))
    skipped = record.counts.get("skipped", 0)
    failed = record.counts.get("failed", 0)
    if skipped or failed:
        parts.append(f" · publisher skipped {skipped}, failed to send {failed}")
    cost = record.cost
    if cost.calls or cost.usd:
        tokens = cost.prompt_tokens + cost.completion_tokens
        extra = "".join(
            f"; {name} ${spend.usd:.4f}"
            for name, spend in (("re-asks", cost.reasks), ("retries", cost.retries))
            if spend.calls or spend.usd
        )
        parts.append(f" · cost ${cost.usd:.4f} ({cost.calls} LLM calls, {tokens} tokens{extra})")
    if record.budget_usd is not None:
        parts.append(f" · budget ${record.budget_usd:.2f}")
    if record.over_budget:
        parts.append((" · OVER BUDGET: its messages wait until the budget is raised", "bold red"))
    return Text.assemble(*parts)


def render_status(
    statuses: Sequence[BatchStatus], previous: Mapping[str, BatchStatus] | None = None
) -> RenderableType:
    """Every batch's table, with a note on how the figures are derived."""
    if not statuses:
        return Text("no batches recorded yet: publish one with `docbus publish`")
    previous = previous or {}
    tables: list[RenderableType] = [
        batch_view(status, previous.get(status.batch_id)) for status in statuses
    ]
    tables.append(
        Text(
            "published = done + retrying + parked + dead-lettered (+ rolled back) + pending; "
            "retrying: unfinished documents the worker is trying again; "
            "parked: set aside until their condition clears (docbus worker resumes them)",
            style="dim",
        )
    )
    return Group(*tables)


# -- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch", action="append", metavar="ID", help="show this batch (repeatable)"
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=10,
        help="without --batch: how many recent batches (10)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="refresh until every batch shown is complete (or Ctrl-C); "
        "with --json, print the figures once it is",
    )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=2.0,
        metavar="S",
        help="seconds between refreshes with --watch (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--topology",
        type=Path,
        metavar="PATH",
        help="topology file naming each topic's subscriptions, peeked before a batch is called "
        "complete (default: infra/topology.toml)",
    )
    parser.add_argument(
        "--broker-timeout",
        type=positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds the broker gets to answer per batch (default 5)",
    )
    parser.add_argument(
        "--no-broker",
        action="store_true",
        help="do not ask the broker: complete batches show 'complete (broker not checked)'",
    )


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    """``docbus status``: tables (or JSON) on ``console``/stdout; errors reach the CLI's runner."""
    from docbus.cli import run_async

    console = console or make_console()
    try:
        return run_async(lambda settings: _status(settings, args, console))
    except KeyboardInterrupt:
        if args.watch and not args.json:
            return 0  # Ctrl-C is how a watch ends early
        raise


async def _status(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from docbus.cli import print_json, say_error
    from docbus.topology import Topology, TopologyError, load_topology

    topology: Topology | None = None
    if args.topology is not None:
        topology = load_topology(args.topology)  # asked for: a bad file is an error
    elif not args.no_broker:
        with contextlib.suppress(TopologyError):  # none shipped: the broker is not asked
            topology = load_topology()
    async with Store.from_settings(settings) as store:
        probe: BacklogProbe | None = None
        if not args.no_broker:
            probe = BacklogProbe(settings, topology, timeout=args.broker_timeout)
        async with _maybe(probe):
            try:
                if args.watch and not args.json:
                    statuses = await watch(store, console, args.batch, limit=args.limit,
                                           interval=args.interval, probe=probe)  # fmt: skip
                    return 1 if any(status.attention for status in statuses) else 0
                while True:
                    statuses = await collect_status(store, args.batch, limit=args.limit,
                                                    probe=probe)  # fmt: skip
                    if not args.watch or all(status.complete for status in statuses):
                        break
                    await asyncio.sleep(args.interval)
            except NotFound as exc:
                say_error("status", str(exc))
                return 1
    if args.json:
        print_json(console, status_json(statuses))
    else:
        console.print(render_status(statuses))
    return 1 if any(status.attention for status in statuses) else 0


def _maybe(probe: BacklogProbe | None) -> Any:
    return probe if probe is not None else contextlib.nullcontext()


async def watch(
    store: Store,
    console: Console,
    batch_ids: Sequence[str] | None = None,
    *,
    limit: int = 10,
    interval: float = 2.0,
    probe: Probe | None = None,
) -> list[BatchStatus]:
    """Redraw until every batch shown is complete; returns the last observation."""
    previous: dict[str, BatchStatus] = {}
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            statuses = await collect_status(store, batch_ids, limit=limit, probe=probe)
            live.update(render_status(statuses, previous), refresh=True)
            if all(status.complete for status in statuses):
                return statuses
            previous = {status.batch_id: status for status in statuses}
            await asyncio.sleep(interval)
