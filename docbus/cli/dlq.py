"""``docbus dlq``: see why documents failed — ``list``, ``show`` and ``sync`` the dead letters.

``docbus dlq list`` reads Mongo ``dead_letters`` with the filters of
:mod:`docbus.cli.dead_letter_filter` and prints a table (or, with ``--group-by``, counts per reason,
handler, batch or error); ``docbus dlq show ID`` prints one dead letter in full, the document it
carried (from ``documents``) and the LLM calls made for it (``llm_calls``), trimmed to be read;
``docbus dlq sync`` drains the broker's dead-letter queues into Mongo first
(:func:`subscriber.dlq.sync_dead_letters`), for dead letters the broker made on its own.
Neighbours: :mod:`docbus.cli.replay` replays what these commands show.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.text import Text

from docbus.cli import print_json
from docbus.cli.arguments import count, positive_seconds
from docbus.cli.dead_letter_filter import add_filter_arguments, filter_from_args
from docbus.cli.render import Table, make_console, untrusted
from docbus.envelope import Envelope
from docbus.ops import NotFound
from docbus.ops.dead_letters import (
    GROUPS,
    DeadLetterDetail,
    body_summary,
    error_line,
    group_dead_letters,
    group_json,
    list_json,
    show_dead_letter,
)
from docbus.records import DeadLetterRecord, LLMCallRecord
from docbus.settings import Settings
from docbus.store import DeadLetterFilter, Store
from docbus.text import one_line
from docbus.topology import load_topology

__all__ = ["add_arguments", "dead_letter_view", "group_table", "list_table", "run"]

EXIT_CODES = {1: "show: no dead letter has that id"}

TEXT_LIMIT = 1200
TRACEBACK_LINES = 25
CELL_LIMIT = 60


def _when(value: datetime | None, *, minutes: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:%m-%d %H:%M}" if minutes else f"{value:%Y-%m-%d %H:%M:%S}"


def _heading(selection: DeadLetterFilter) -> str:
    filters = selection.describe()
    return ", ".join(f"{key}={value}" for key, value in filters.items()) or "all"


# -- rendering --------------------------------------------------------------------------------


def list_table(records: Sequence[DeadLetterRecord], *, total: int, heading: str = "all") -> Table:
    """One row per dead letter (its id names subscription, batch, document and generation);
    the title says how many match."""
    shown = f" (showing {len(records)})" if len(records) < total else ""
    table = Table(title=f"{total} dead letter(s){shown} · {heading}", title_justify="left")
    cells = [
        (
            record.id,
            record.reason,
            record.step or "",
            one_line(error_line(record), 60),
            _when(record.dead_lettered_at, minutes=True),
            "yes" if record.replayed_at is not None else "",
        )
        for record in records
    ]
    headers = ("id", "reason", "step", "error", "dead-lettered", "replayed")
    for name in headers:
        # Text columns fold (an id stays whole, on more lines, to give `dlq show`)
        table.add_column(name)
    for row in cells:
        table.add_row(*row)
    return table


def group_table(records: Sequence[DeadLetterRecord], by: str, *, heading: str = "all") -> Table:
    """Counts per ``by`` (a key of :data:`GROUPS`), largest first."""
    table = Table(title=f"{len(records)} dead letter(s) by {by} · {heading}", title_justify="left")
    table.add_column(by)
    for name in ("count", "replayed", "documents"):
        table.add_column(name, justify="right")
    table.add_column("first")
    table.add_column("last")
    for group in group_dead_letters(records, by):
        table.add_row(
            group.key,
            str(group.count),
            str(group.replayed),
            str(group.documents),
            _when(group.first),
            _when(group.last),
        )
    return table


def dead_letter_view(detail: DeadLetterDetail) -> RenderableType:
    """Everything about one dead letter: the record, its document and its LLM calls."""
    record, document, text, calls = detail.record, detail.document, detail.text, detail.calls
    facts = Table(title=f"dead letter {record.id}", show_header=False, title_justify="left")
    facts.add_column("field", style="bold")
    facts.add_column("value", overflow="fold")
    version = f" (version {record.handler_version})" if record.handler_version else ""
    rows: list[tuple[str, str]] = [
        ("reason", record.reason),
        ("description", record.description),
        ("error", f"{record.error_type or ''}: {record.error_message or ''}".strip(": ")),
        ("handler", f"{record.handler or '?'}{version}"),
        ("step", record.step or ""),
        ("topic / subscription", f"{record.topic or '?'} / {record.subscription}"),
        ("message id", record.message_id),
        ("batch / doc / generation", f"{record.batch_id} / {record.doc_id} / {record.generation}"),
        ("delivery count", "" if record.delivery_count is None else str(record.delivery_count)),
        ("enqueued", _when(record.enqueued_at)),
        ("dead-lettered", _when(record.dead_lettered_at)),
        ("replayed", _when(record.replayed_at) or "never"),
        ("properties", json.dumps(record.properties, default=str, sort_keys=True)),
        ("body", body_summary(record.body)),
    ]
    for name, value in rows:
        facts.add_row(name, value)
    parts: list[RenderableType] = [facts]
    if record.traceback:
        lines = record.traceback.rstrip().splitlines()
        if len(lines) > TRACEBACK_LINES:
            lines = [f"… {len(lines) - TRACEBACK_LINES} lines trimmed", *lines[-TRACEBACK_LINES:]]
        parts += [Text("traceback", style="bold"), untrusted("\n".join(lines))]
    parts.append(_document_view(record, document, text))
    if calls:
        parts.append(_calls_table(calls))
    return Group(*parts)


def _document_view(
    record: DeadLetterRecord, document: Envelope | None, text: str | None
) -> RenderableType:
    if document is None:
        return untrusted(f"document: {record.batch_id}/{record.doc_id} is not in the store", "dim")
    table = Table(title="document", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("doc / batch", f"{document.doc_id} / {document.batch_id}")
    table.add_row("source", str(document.source or ""))
    table.add_row("content type", document.content_type)
    table.add_row("metadata", json.dumps(document.metadata, default=str, sort_keys=True))
    if text is not None:
        shown = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"
        table.add_row("text", f"({len(text)} characters)\n{shown}")
    return table


def _calls_table(calls: Sequence[LLMCallRecord]) -> Table:
    table = Table(title=f"LLM calls ({len(calls)})", title_justify="left")
    for name in ("at", "handler", "step", "try", "model", "tokens", "cost $", "outcome"):
        table.add_column(name)
    table.add_column("prompt", overflow="fold")
    table.add_column("response", overflow="fold")
    for call in calls:
        prompt = str(call.messages[-1].get("content", "")) if call.messages else ""
        table.add_row(
            f"{call.created_at:%H:%M:%S}",
            f"{call.handler or ''} v{call.handler_version or '?'}",
            call.step or "",
            f"{call.attempt}.{call.reask}.{call.retry}",
            call.model,
            str(call.prompt_tokens + call.completion_tokens),
            f"{call.cost_usd:.5f}",
            "ok" if call.ok else f"{call.error_type}: {one_line(call.error_message, 40)}",
            one_line(prompt, 120),
            one_line(call.response_text, 120),
        )
    return table


# -- the command --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="dlq_command", required=True, metavar="list|show|sync")
    listing = commands.add_parser("list", help="dead letters as a table, or counted by group")
    add_filter_arguments(listing)
    listing.add_argument("--group-by", choices=sorted(GROUPS), help="counts per group")
    listing.add_argument(
        "--limit", type=count, default=100, metavar="N", help="rows shown (default 100; 0: all)"
    )
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    show = commands.add_parser("show", help="one dead letter, its document and LLM calls")
    show.add_argument("id", help="the dead letter's id, subscription@message_id (see list)")
    show.add_argument("--json", action="store_true", help="print it all as JSON")
    sync = commands.add_parser("sync", help="drain the broker's dead-letter queues into Mongo")
    sync.add_argument("--topic", help="only this topic's subscriptions")
    sync.add_argument("--subscription", help="only this subscription (with --topic)")
    sync.add_argument("--topology", type=Path, help="topology file (default infra/topology.toml)")
    sync.add_argument(
        "--handlers", metavar="MODULE", help="handler module, to name handlers in new records"
    )
    sync.add_argument(
        "--max-wait",
        type=positive_seconds,
        default=1.0,
        metavar="S",
        help="wait on an empty queue (1 s)",
    )


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    from docbus.cli import run_async  # failures: one line on stderr, by the CLI's runner

    console = console or make_console()
    command = {"list": _list, "show": _show, "sync": _sync}[args.dlq_command]
    return run_async(lambda settings: command(settings, args, console))


async def _list(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    selection = filter_from_args(args)
    async with Store.from_settings(settings) as store:
        records = await store.dead_letters(selection)
    heading = _heading(selection)
    if args.json:
        shown = records[: args.limit] if args.limit and not args.group_by else records
        print_json(
            console,
            group_json(records, args.group_by, selection=selection)
            if args.group_by
            else list_json(shown, total=len(records), selection=selection),
        )
        return 0
    if args.group_by:
        console.print(group_table(records, args.group_by, heading=heading))
    else:
        shown = records[: args.limit] if args.limit else records
        console.print(list_table(shown, total=len(records), heading=heading))
    return 0


async def _show(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    try:
        async with Store.from_settings(settings) as store:
            detail = await show_dead_letter(store, args.id)
    except NotFound as exc:
        from docbus.cli import say_error

        say_error("dlq show", str(exc))
        return 1
    if args.json:
        print_json(console, detail.to_json())
    else:
        console.print(dead_letter_view(detail))
    return 0


async def _sync(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    from docbus.servicebus import servicebus_client
    from subscriber.dlq import sync_dead_letters

    if args.subscription is not None and args.topic is None:
        from docbus.cli import say_error

        say_error("dlq sync", "--subscription needs --topic (the topic it belongs to)")
        return 2
    topology = load_topology(args.topology)
    handlers: dict[tuple[str, str], str] = {}
    if args.handlers is not None:
        from handlers.runtime import discover_handlers

        for item in discover_handlers(args.handlers):
            handlers[(item.spec.topic, item.spec.subscription)] = item.spec.name
    async with Store.from_settings(settings) as store, servicebus_client(settings) as client:
        await store.ensure_indexes()
        captures = await sync_dead_letters(
            client, store, topology, topic=args.topic, subscription=args.subscription,
            handlers=handlers, max_wait=args.max_wait,
        )  # fmt: skip
    table = Table(title="dead-letter queues drained into Mongo", title_justify="left")
    for name in ("topic", "subscription"):
        table.add_column(name)
    table.add_column("captured", justify="right")
    table.add_column("new records", justify="right")
    for capture in captures:
        table.add_row(
            capture.topic, capture.subscription, str(capture.drained), str(capture.recorded)
        )
    console.print(table)
    return 0
