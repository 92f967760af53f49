"""``docbus parked``: the messages workers set aside, and why — ``list`` them, ``resume`` them.

A parked message is deferred on its subscription (Service Bus keeps it, and never delivers it on
its own) with a Mongo record that says why (:mod:`subscriber.parking`). ``docbus parked list``
shows them, counted per handler and reason, then one row each (``--json`` for scripts).
``docbus parked resume`` marks them for resumption: Service Bus gives a deferred message only to
a receiver that asks for it by sequence number, and running it needs the handler, so the command
does not fetch them itself — the next worker of their subscription does (a starting one at once,
a running one within its resume interval), whatever it thinks of the cause. Re-sending copies
instead would leave the deferred originals behind and collide with duplicate detection.
Neighbours: :mod:`docbus.store._parked` (the records), :mod:`subscriber.worker` (resumes).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from docbus.cli.arguments import count
from docbus.cli.render import Table, make_console
from docbus.ops.parked import ParkedSelection, parked_overview, request_resume
from docbus.settings import Settings
from docbus.store import ParkedGroup, ParkedMessage, Store
from docbus.text import one_line

__all__ = ["EXIT_CODES", "add_arguments", "groups_table", "parked_table", "run"]

EXIT_CODES = {
    0: "listed (also while messages are parked: a listing succeeded; `docbus status` and "
    "`docbus worker` are the commands whose exit code says messages are parked)",
}

CELL_LIMIT = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="parked_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="parked messages, per handler and reason, and why")
    resume = commands.add_parser(
        "resume", help="ask workers to fetch these parked messages back at their next look"
    )
    for sub in (listing, resume):
        sub.add_argument("--batch", metavar="BATCH", help="only this batch's messages")
        sub.add_argument("--handler", metavar="NAME", help="only this handler's messages")
        sub.add_argument(
            "--reason", metavar="REASON", help="only this reason (SystemicFailure, OverBudget, ...)"
        )
        sub.add_argument("--json", action="store_true", help="print JSON instead of tables")
    listing.add_argument(
        "--limit", type=count, default=50, metavar="N", help="rows shown (default 50; 0: all)"
    )


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    from docbus.cli import run_async  # failures: one line on stderr, by the CLI's runner

    console = console or make_console()
    command = {"list": _list, "resume": _resume}[args.parked_command]
    return run_async(lambda settings: command(settings, args, console))


def _selection(args: argparse.Namespace) -> ParkedSelection:
    return ParkedSelection(batch_id=args.batch, handler=args.handler, reason=args.reason)


async def _list(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    selection = _selection(args)
    async with Store.from_settings(settings) as store:
        overview = await parked_overview(store, selection)
    records = overview.records
    shown = records[: args.limit] if args.limit else records
    if args.json:
        from docbus.cli import print_json

        print_json(console, overview.to_json())
        return 0
    heading = selection.describe()
    if not records:
        console.print(f"nothing parked ({heading})", markup=False)
        return 0
    console.print(groups_table(overview.groups, heading=heading))
    console.print(parked_table(shown, total=len(records)))
    return 0


async def _resume(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with Store.from_settings(settings) as store:
        requested = await request_resume(store, _selection(args))
    if args.json:
        from docbus.cli import print_json

        print_json(console, {"requested": requested})
    elif requested:
        console.print(
            f"asked workers to resume {requested} parked message(s): a worker of their "
            "subscription fetches them back as it starts, a running one within its resume "
            "interval (30 s by default). Ones whose cause persists are parked again.",
            markup=False,
        )
    else:
        console.print("nothing to resume: no parked message matches", markup=False)
    return 0


def groups_table(groups: Sequence[ParkedGroup], *, heading: str = "all") -> Table:
    total = sum(group.count for group in groups)
    table = Table(title=f"{total} parked message(s) · {heading}", title_justify="left")
    for name in ("handler", "subscription", "reason"):
        table.add_column(name, no_wrap=True)
    table.add_column("messages", justify="right")
    table.add_column("why (latest)", ratio=1, min_width=20)
    for group in groups:
        table.add_row(
            group.handler or "?",
            f"{group.topic}/{group.subscription}",
            group.reason,
            str(group.count),
            one_line(group.description, 100),
        )
    return table


def parked_table(records: Sequence[ParkedMessage], *, total: int) -> Table:
    shown = f" (showing {len(records)})" if len(records) < total else ""
    table = Table(title=f"{total} parked message(s){shown}", title_justify="left")
    for name in ("batch/document", "handler", "reason", "parked at", "state"):
        table.add_column(name, no_wrap=True)
    for record in records:
        state = "deferred" if record.deferred else "deferring"
        if record.resume_requested_at is not None:
            state += ", resume asked"
        table.add_row(
            f"{record.batch_id or '?'}/{record.doc_id or '?'}",
            record.handler or "?",
            record.reason,
            f"{record.parked_at:%Y-%m-%d %H:%M:%S}",
            state,
        )
    return table
