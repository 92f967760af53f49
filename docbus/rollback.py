"""``docbus rollback``: withdraw the results a batch (or one of its replays) wrote.

:func:`roll_back` marks the result versions of a batch — all of them, or those of replay
generation ``G`` and later, optionally of one handler — as rolled back, and each affected
document's previous version becomes current again (:meth:`docbus.store.Store.rollback_results`
does the converging). It counts the versions and documents it touched and keeps a
:class:`~docbus.records.RollbackRecord` in ``rollbacks``. A rollback of what is rolled back
already touches nothing (0) and says so. The command asks for confirmation like ``docbus
replay`` (:mod:`docbus.confirm`). Neighbours: :mod:`docbus.results_cli` shows the versions.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Console
from rich.table import Table

from docbus.confirm import REFUSED, confirm, stdin_is_terminal
from docbus.errors import DocbusError
from docbus.records import RollbackRecord
from docbus.settings import Settings
from docbus.settings_cli import load_settings
from docbus.store import Store

__all__ = ["add_arguments", "roll_back", "run"]


def _rollback_id(now: datetime) -> str:
    return f"rollback-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


async def roll_back(
    store: Store, batch_id: str, *, generation: int | None = None, handler: str | None = None
) -> RollbackRecord:
    """Withdraw the batch's result versions (of ``generation`` and later) and record it."""
    targets = await store.result_versions(
        batch_id=batch_id, handler=handler, min_generation=generation, include_rolled_back=False
    )
    versions = await store.rollback_results(batch_id, generation=generation, handler=handler)
    now = datetime.now(UTC)
    record = RollbackRecord(
        id=_rollback_id(now),
        batch_id=batch_id,
        generation=generation,
        handler=handler,
        versions=versions,
        documents=len({r.doc_id for r in targets}) if versions else 0,
        at=now,
    )
    await store.record_rollback(record)
    return record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", required=True, metavar="ID", help="the batch to roll back")
    parser.add_argument(
        "--generation",
        type=int,
        metavar="G",
        help="only result versions of replay generation G and later (default: all)",
    )
    parser.add_argument("--handler", metavar="NAME", help="only this handler's results")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


def run(
    args: argparse.Namespace, *, console: Console | None = None, stdin: TextIO | None = None
) -> int:
    console = console or Console()
    settings = load_settings(console)
    if settings is None:
        return 2
    if not args.yes and not stdin_is_terminal(stdin):
        console.print(
            "docbus rollback: refusing to roll back without confirmation: stdin is not a "
            "terminal. Pass --yes to roll back.",
            markup=False,
            highlight=False,
        )
        return REFUSED
    try:
        return asyncio.run(_rollback(settings, args, console, stdin))
    except DocbusError as exc:
        console.print(f"docbus rollback: error: {exc}", markup=False, highlight=False)
        return 1


async def _rollback(
    settings: Settings, args: argparse.Namespace, console: Console, stdin: TextIO | None
) -> int:
    scope = f"batch {args.batch}"
    if args.generation is not None:
        scope += f", generation {args.generation} and later"
    if args.handler is not None:
        scope += f", handler {args.handler}"
    async with Store.from_settings(settings) as store:
        if not args.yes:
            pending = await store.result_versions(
                batch_id=args.batch, handler=args.handler, min_generation=args.generation,
                include_rolled_back=False,
            )  # fmt: skip
            documents = len({r.doc_id for r in pending})
            question = f"roll back {len(pending)} result version(s) of {documents} document(s)?"
            if pending and not confirm(question, console=console, stdin=stdin):
                console.print("not confirmed: nothing was rolled back", markup=False)
                return 1
        record = await roll_back(
            store, args.batch, generation=args.generation, handler=args.handler
        )
    table = Table(title=f"rollback of {scope}", show_header=False, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("result versions rolled back", str(record.versions))
    table.add_row("documents touched", str(record.documents))
    table.add_row("recorded as", record.id)
    console.print(table)
    if record.versions == 0:
        console.print("nothing to roll back: no current result version matched", markup=False)
    return 0
