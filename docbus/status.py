"""``docbus status``: how far each batch has got — per batch and per handler, as rich tables.

:func:`collect_status` reads a batch's progress from the store (:mod:`docbus.store`):
``Store.batch_counts`` gives published / done / dead-lettered / pending per handler, the batch
record (:class:`~docbus.records.BatchRecord`) its topic, publishing status, LLM cost and
over-budget flag and its own budget (``docbus publish --budget``).

*Retrying*: a document counts as retrying for a handler when the worker has noted a retry of it
(the ``retries`` collection, written before each backoff) or an ``llm_calls`` row of the batch
shows ``attempt >= 2`` for that (handler, doc_id), and the handler has neither a result nor a
dead letter for it yet. Retrying documents are taken out of *pending*, so published = done +
retrying + dead-lettered + pending.

:func:`render_status` draws the tables; throughput is documents finished (done or dead-lettered)
per second since the batch was created — up to its last result once complete — or, with
``--watch``, over the last refresh interval. ``--watch`` redraws with ``rich.live.Live`` until
every batch shown is complete, or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import ConnectionFailure, PyMongoError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from docbus.records import BatchCounts, BatchRecord, HandlerCounts
from docbus.settings import Settings
from docbus.settings_cli import load_settings
from docbus.store import Store, StoreError, StoreUnavailable

__all__ = [
    "BatchStatus",
    "add_arguments",
    "batch_table",
    "batch_view",
    "collect_status",
    "render_status",
    "retrying_counts",
    "run",
    "throughput",
    "watch",
]

ALL = "all handlers"


@dataclass(frozen=True)
class BatchStatus:
    """One batch's progress at one moment."""

    record: BatchRecord
    counts: BatchCounts
    retrying: int = 0
    """Documents retrying in some handler and neither done nor dead-lettered overall."""
    handler_retrying: dict[str, int] = field(default_factory=dict)
    observed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_activity: datetime | None = None
    """When the latest result or dead letter was written (looked up once complete)."""

    @property
    def batch_id(self) -> str:
        return self.record.id

    @property
    def complete(self) -> bool:
        """Publishing has ended and every document sent is done or dead-lettered.

        Documents the publisher recorded but failed to send (``counts["failed"]``) will not
        arrive until they are replayed, so they do not hold a batch open.
        """
        unsent = self.record.counts.get("failed", 0)
        return self.record.status != "publishing" and self.counts.pending <= unsent

    def finished(self, handler: str | None = None) -> int:
        """Documents done or dead-lettered, overall or for one handler."""
        counts: BatchCounts | HandlerCounts = (
            self.counts if handler is None else self.counts.handlers[handler]
        )
        return counts.done + counts.dead_lettered

    def pending(self, handler: str | None = None) -> int:
        """Pending documents that are not retrying."""
        if handler is None:
            return max(0, self.counts.pending - self.retrying)
        return max(0, self.counts.handlers[handler].pending - self.handler_retrying.get(handler, 0))


# -- pure decisions -----------------------------------------------------------------------------


def retrying_counts(
    attempted_again: Mapping[str, set[str]],
    done: Mapping[str, set[str]],
    dead: Mapping[str, set[str]],
    handlers: Iterable[str],
) -> tuple[int, dict[str, int]]:
    """Retrying documents, overall and per handler, by ``Store.batch_counts``'s rules.

    ``attempted_again`` maps a handler to the documents seen on a second or later attempt;
    ``done`` and ``dead`` to the documents it has a result / a dead letter for (only the
    documents of interest need be present). Per handler, retrying = attempted again and neither
    done nor dead. Overall, a document retrying somewhere counts unless it is dead-lettered by
    some handler (without a later result) or done by every handler.
    """
    names = sorted(set(handlers) | set(attempted_again))
    per_handler: dict[str, set[str]] = {}
    for name in names:
        settled = done.get(name, set()) | dead.get(name, set())
        per_handler[name] = attempted_again.get(name, set()) - settled
    candidates = set().union(*per_handler.values()) if per_handler else set()
    dead_anywhere = set().union(*(dead.get(name, set()) - done.get(name, set()) for name in names))
    done_everywhere = (
        set.intersection(*(done.get(name, set()) for name in names)) if names else set()
    )
    overall = candidates - dead_anywhere - done_everywhere
    return len(overall), {name: len(docs) for name, docs in per_handler.items() if docs}


def throughput(
    current: BatchStatus, previous: BatchStatus | None = None
) -> dict[str | None, float]:
    """Documents finished per second, overall (key ``None``) and per handler.

    With ``previous`` (an earlier observation of the same batch): over the interval between
    the two. Without: since the batch was created, up to its last activity once complete.
    """
    keys: list[str | None] = [None, *current.counts.handlers]
    if previous is not None:
        seconds = (current.observed_at - previous.observed_at).total_seconds()
        rates: dict[str | None, float] = {}
        for key in keys:
            before = previous.finished(key) if key is None or key in previous.counts.handlers else 0
            rates[key] = max(0, current.finished(key) - before) / seconds if seconds > 0 else 0.0
        return rates
    end = current.observed_at
    if current.complete and current.last_activity is not None:
        end = current.last_activity
    seconds = (end - current.record.created_at).total_seconds()
    return {key: current.finished(key) / seconds if seconds > 0 else 0.0 for key in keys}


# -- reading the store --------------------------------------------------------------------------


async def collect_status(
    store: Store, batch_ids: Sequence[str] | None = None, *, limit: int = 10
) -> list[BatchStatus]:
    """The status of the given batches, or of the ``limit`` most recent ones.

    Raises ``LookupError`` naming a batch id that has no record.
    """
    if batch_ids:
        records = []
        for batch_id in batch_ids:
            record = await store.get_batch(batch_id)
            if record is None:
                raise LookupError(batch_id)
            records.append(record)
    else:
        records = await store.list_batches(limit=limit)
    return [await _one(store, record) for record in records]


async def _one(store: Store, record: BatchRecord) -> BatchStatus:
    db = store.database
    batch_id = record.id
    try:
        calls = db["llm_calls"]
        handlers = [
            row["_id"]
            async for row in await calls.aggregate(
                [{"$match": {"batch_id": batch_id}}, {"$group": {"_id": "$handler"}}]
            )
            if isinstance(row["_id"], str)
        ]
        attempted_again: dict[str, set[str]] = {}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"batch_id": batch_id, "attempt": {"$gte": 2}}},
            {"$group": {"_id": {"h": "$handler", "d": "$doc_id"}}},
        ]
        async for row in await calls.aggregate(pipeline):
            name, doc = row["_id"].get("h"), row["_id"].get("d")
            if isinstance(name, str) and doc is not None:
                attempted_again.setdefault(name, set()).add(str(doc))
        # The worker notes every delivery it retries, LLM calls or not.
        async for row in db["retries"].find({"batch_id": batch_id}, {"handler": 1, "doc_id": 1}):
            if isinstance(row.get("handler"), str) and row.get("doc_id") is not None:
                attempted_again.setdefault(row["handler"], set()).add(str(row["doc_id"]))
                if row["handler"] not in handlers:
                    handlers.append(row["handler"])
        counts = await store.batch_counts(batch_id, handlers=handlers)
        retrying, per_handler = 0, dict[str, int]()
        if attempted_again:
            candidates = sorted(set().union(*attempted_again.values()))
            done = await _doc_sets(
                db["results"], {"batch_id": batch_id, "rolled_back": False}, candidates
            )
            dead = await _doc_sets(db["dead_letters"], {"batch_id": batch_id}, candidates)
            retrying, per_handler = retrying_counts(attempted_again, done, dead, counts.handlers)
        status = BatchStatus(
            record=record,
            counts=counts,
            retrying=retrying,
            handler_retrying=per_handler,
        )
        if status.complete:
            status = replace(status, last_activity=await _last_activity(store, batch_id))
    except ConnectionFailure as exc:  # raw queries: the store's exception vocabulary too
        raise StoreUnavailable(f"read status of batch {batch_id}: {exc}") from exc
    except PyMongoError as exc:
        raise StoreError(f"read status of batch {batch_id}: {exc}") from exc
    return status


async def _doc_sets(collection: Any, match: dict[str, Any], docs: list[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    cursor = collection.find({**match, "doc_id": {"$in": docs}}, {"doc_id": 1, "handler": 1})
    async for raw in cursor:
        if isinstance(raw.get("handler"), str):
            found.setdefault(raw["handler"], set()).add(str(raw["doc_id"]))
    return found


async def _last_activity(store: Store, batch_id: str) -> datetime | None:
    latest: list[datetime] = []
    for collection, stamp in (("results", "written_at"), ("dead_letters", "dead_lettered_at")):
        raw = await store.database[collection].find_one(
            {"batch_id": batch_id}, {stamp: 1}, sort=[(stamp, -1)]
        )
        if raw is not None and isinstance(raw.get(stamp), datetime):
            latest.append(raw[stamp])
    return max(latest) if latest else None


# -- rendering ----------------------------------------------------------------------------------


def _bar(done: int, total: int) -> RenderableType:
    share = f"{100 * done / total:3.0f}%" if total else "  -"
    table = Table.grid(padding=(0, 1))
    table.add_row(ProgressBar(total=max(total, 1), completed=done, width=20), share)
    return table


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def batch_view(status: BatchStatus, previous: BatchStatus | None = None) -> RenderableType:
    """One batch: its table, then a line on publishing, cost and budget."""
    return Group(batch_table(status, previous), _caption(status), Text(""))


def batch_table(status: BatchStatus, previous: BatchStatus | None = None) -> Table:
    """One batch: an overall row, then one row per handler."""
    record = status.record
    rates = throughput(status, previous)
    rate_title = "docs/s (last interval)" if previous is not None else "docs/s"
    title = Text.assemble(("batch ", "bold"), (record.id, "bold cyan"), f" → {record.topic}")
    table = Table(title=title, title_justify="left")
    table.add_column("handler", no_wrap=True)
    for name in ("published", "done", "retrying", "dead-lettered", "pending"):
        table.add_column(name, justify="right")
    table.add_column("progress", no_wrap=True)
    table.add_column(rate_title, justify="right")
    counts = status.counts
    table.add_row(
        Text(ALL, style="bold"),
        str(counts.published),
        str(counts.done),
        str(status.retrying),
        str(counts.dead_lettered),
        str(status.pending()),
        _bar(status.finished(), counts.published),
        _rate(rates[None]),
    )
    for name, handler in counts.handlers.items():
        table.add_row(
            name,
            str(counts.published),
            str(handler.done),
            str(status.handler_retrying.get(name, 0)),
            str(handler.dead_lettered),
            str(status.pending(name)),
            _bar(status.finished(name), counts.published),
            _rate(rates[name]),
        )
    return table


def _caption(status: BatchStatus) -> Text:
    record = status.record
    parts: list[tuple[str, str] | str] = [
        f"{'complete' if status.complete else record.status}",
        f" · created {record.created_at:%Y-%m-%d %H:%M:%S %Z}",
    ]
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
            "published = done + retrying + dead-lettered + pending; "
            "retrying: unfinished documents the worker is trying again",
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
        "--limit", type=int, default=10, help="without --batch: how many recent batches (10)"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="refresh until every batch shown is complete (or Ctrl-C)",
    )
    parser.add_argument(
        "--interval",
        type=_positive,
        default=2.0,
        metavar="S",
        help="seconds between refreshes with --watch (default 2)",
    )


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return number


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    console = console or Console()
    settings = load_settings(console)
    if settings is None:
        return 2
    try:
        return asyncio.run(_status(settings, args, console))
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch ends early


async def _status(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    try:
        async with Store.from_settings(settings) as store:
            if not args.watch:
                console.print(
                    render_status(await collect_status(store, args.batch, limit=args.limit))
                )
                return 0
            await watch(store, console, args.batch, limit=args.limit, interval=args.interval)
            return 0
    except LookupError as exc:
        console.print(Text(f"no batch {exc.args[0]!r} in the store", style="bold red"))
        return 1
    except StoreUnavailable as exc:
        console.print(Text.assemble(("cannot reach MongoDB: ", "bold red"), str(exc)))
        console.print(
            "set DOCBUS_MONGODB__URI (or MONGODB_URI) and DOCBUS_MONGODB__DATABASE, "
            "or start the local stack with `docbus up` and export what it prints",
            markup=False,
        )
        return 1
    except StoreError as exc:
        console.print(Text.assemble(("reading the store failed: ", "bold red"), str(exc)))
        return 1


async def watch(
    store: Store,
    console: Console,
    batch_ids: Sequence[str] | None = None,
    *,
    limit: int = 10,
    interval: float = 2.0,
) -> list[BatchStatus]:
    """Redraw until every batch shown is complete; returns the last observation."""
    previous: dict[str, BatchStatus] = {}
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            statuses = await collect_status(store, batch_ids, limit=limit)
            live.update(render_status(statuses, previous), refresh=True)
            if all(status.complete for status in statuses):
                return statuses
            previous = {status.batch_id: status for status in statuses}
            await asyncio.sleep(interval)
