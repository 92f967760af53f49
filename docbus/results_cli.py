"""``docbus results``: the versions of a document's results — ``docbus results history DOC``.

Every time a handler finishes a document (a first delivery, a replay, a batch replay under a new
handler version) :meth:`docbus.store.Store.write_result` keeps a new version; exactly one that is
not rolled back is current. ``history`` shows them all, per handler, oldest first, with the
replay generation, handler version and batch that wrote each, and which are current or rolled
back (:mod:`docbus.rollback`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from docbus.errors import DocbusError
from docbus.records import ResultRecord
from docbus.settings import Settings
from docbus.settings_cli import load_settings
from docbus.store import Store

__all__ = ["add_arguments", "history_table", "run"]


def history_table(doc_id: str, versions: Sequence[ResultRecord]) -> Table:
    """One row per result version, grouped by handler, oldest first.

    ``state`` is ``current``, ``rolled back``, or empty for a version a later one superseded.
    """
    table = Table(title=f"results of {doc_id}: {len(versions)} version(s)", title_justify="left")
    headers = ("handler", "version", "generation", "handler ver", "batch", "written at", "state")
    for name in headers:
        table.add_column(
            name, justify="right" if name in ("version", "generation") else "left", no_wrap=True
        )
    for record in versions:
        state = "current" if record.current else "rolled back" if record.rolled_back else ""
        table.add_row(
            record.handler,
            str(record.version),
            str(record.generation),
            record.handler_version,
            record.batch_id,
            f"{record.written_at:%Y-%m-%d %H:%M:%S}",
            state,
        )
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="results_command", required=True, metavar="history")
    history = commands.add_parser("history", help="every result version of a document")
    history.add_argument("doc", metavar="DOC", help="the document id")
    history.add_argument("--handler", metavar="NAME", help="only this handler's versions")
    history.add_argument("--batch", metavar="ID", help="only versions written for this batch")


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    console = console or Console()
    settings = load_settings(console)
    if settings is None:
        return 2
    try:
        return asyncio.run(_history(settings, args, console))
    except DocbusError as exc:
        console.print(f"docbus results: error: {exc}", markup=False, highlight=False)
        return 1


async def _history(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with Store.from_settings(settings) as store:
        versions = await store.result_versions(
            doc_id=args.doc, handler=args.handler, batch_id=args.batch
        )
    if not versions:
        console.print(f"no results for document {args.doc!r}", markup=False, highlight=False)
        return 1
    console.print(history_table(args.doc, versions))
    return 0
