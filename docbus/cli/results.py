"""``docbus results``: a document's results — ``history`` (every version) and ``show`` (one) —
and ``export``, a handler's current results.

Every time a handler finishes a document (a first delivery, a replay, a batch replay under a new
handler version) :meth:`docbus.store.Store.write_result` keeps a new version; exactly one that is
not rolled back is current. ``history`` shows them all, per handler, oldest first, with the run
that wrote each (a batch's publication or a replay), its replay generation, handler version and
batch, and which are current or rolled back (:mod:`docbus.cli.rollback`). ``show DOC --handler H``
prints the current version's output (``--version N``: any version); the output is a handler's
(often an LLM's) text, so it is printed as JSON with control and bidirectional characters
escaped: it cannot move the cursor, recolour the terminal or reorder what is shown. Both take
``--json`` (one JSON document on stdout); errors go to stderr, and a document (or version) with
no result is one line and exit 1.

``export --handler H [--batch B]`` writes every current result of a handler (whose current
version is of batch B), by document id: JSONL, one object per document with its output as the
handler returned it, or CSV, ``doc_id, batch_id, version`` then the output flattened
(:func:`docbus.ops.aggregate.flatten`). Both stream from the store in constant memory (CSV reads
the results twice: once for its header); ``--output`` is written whole or not at all
(:mod:`docbus.cli.export`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
from collections.abc import Callable, Sequence
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from docbus.cli.arguments import non_empty, positive_int
from docbus.cli.export import Format, add_destination_arguments, export_format, write_export
from docbus.cli.render import Table, make_console, untrusted
from docbus.ops import NotFound
from docbus.ops._not_found import NameOne
from docbus.ops.aggregate import EXPORT_PREFIX, current_rows
from docbus.ops.results import choose_result, result_history, result_json, result_state
from docbus.records import ResultRecord
from docbus.settings import Settings
from docbus.store import Store
from docbus.text import visible

__all__ = [
    "EXIT_CODES",
    "add_arguments",
    "export_current_results",
    "history_table",
    "run",
    "safe_text",
]

EXIT_CODES = {
    1: "the document has no result (of that handler, or of that version); export: no current "
    "result matches, or the export could not be written",
    2: "usage error, e.g. the document has results of several handlers and --handler names "
    "none of them",
}


def history_table(doc_id: str, versions: Sequence[ResultRecord]) -> Table:
    """One row per result version, grouped by handler, oldest first.

    ``state`` is ``current``, ``rolled back``, or empty for a version a later one superseded.
    """
    table = Table(title=f"results of {doc_id}: {len(versions)} version(s)", title_justify="left")
    headers = (
        "handler", "version", "generation", "handler ver", "batch", "written at", "state", "run",
    )  # fmt: skip
    for name in headers:
        table.add_column(
            name, justify="right" if name in ("version", "generation") else "left", no_wrap=True
        )
    for record in versions:
        cells = (
            record.handler,
            str(record.version),
            str(record.generation),
            record.handler_version,
            record.batch_id,
            f"{record.written_at:%Y-%m-%d %H:%M:%S}",
            result_state(record),
            record.run_id or "",
        )
        table.add_row(*(_cell(cell) for cell in cells))
    return table


def _cell(value: str) -> Text:
    """A table cell of text from outside (ids, names): shown as it is, never as markup."""
    return untrusted(value)


def safe_text(text: str) -> str:
    """``text`` with every control, format (bidirectional overrides, zero-width) and line or
    paragraph separator character written as a ``\\uXXXX`` escape: untrusted text shown this
    way cannot act on the terminal. Newlines and tabs stay (:func:`docbus.text.visible`)."""
    return visible(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(
        dest="results_command", required=True, metavar="history|show|export"
    )
    history = commands.add_parser("history", help="every result version of a document")
    history.add_argument("doc", type=non_empty, metavar="DOC", help="the document id")
    history.add_argument(
        "--handler", type=non_empty, metavar="NAME", help="only this handler's versions"
    )
    history.add_argument(
        "--batch", type=non_empty, metavar="ID", help="only versions written for this batch"
    )
    history.add_argument("--json", action="store_true", help="print one JSON document")
    show = commands.add_parser("show", help="a document's current result (or any version)")
    show.add_argument("doc", type=non_empty, metavar="DOC", help="the document id")
    show.add_argument(
        "--handler",
        type=non_empty,
        metavar="NAME",
        help="the handler (needed when several wrote results)",
    )
    show.add_argument(
        "--version", type=positive_int, metavar="N", help="this version, current or not"
    )
    show.add_argument("--json", action="store_true", help="print one JSON document")
    export = commands.add_parser(
        "export", help="every current result of a handler (of one batch), by document id"
    )
    export.add_argument(
        "--handler", required=True, type=non_empty, metavar="NAME", help="the handler"
    )
    export.add_argument(
        "--batch",
        type=non_empty,
        metavar="ID",
        help="only documents whose current result is of this batch",
    )
    add_destination_arguments(export, "the output flattened: nested fields by dotted path")


def run(
    args: argparse.Namespace, *, console: Console | None = None, stdout: IO[str] | None = None
) -> int:
    from docbus.cli import run_async  # failures: one line on stderr, by the CLI's runner

    if args.results_command == "export":
        return _export(args, stdout)
    console = console or make_console()
    command = _show if args.results_command == "show" else _history
    return run_async(lambda settings: command(settings, args, console))


def _export(args: argparse.Namespace, stdout: IO[str] | None) -> int:
    from docbus.cli import run_async

    errors = make_console(stderr=True)
    fmt = export_format(args)
    selection = f"handler {args.handler!r}" + (f" in batch {args.batch!r}" if args.batch else "")

    def write(stream: IO[str]) -> int:
        return run_async(lambda settings: _write_export(settings, args, fmt, stream, errors))

    return write_export(
        "results export", args.output, stdout, write,
        nothing=f"no current results of {selection}", noun="current result(s)", fmt=fmt,
        errors=errors,
    )  # fmt: skip


async def _write_export(
    settings: Settings, args: argparse.Namespace, fmt: Format, stream: IO[str], errors: Console
) -> int:
    async with Store.from_settings(settings) as store:
        with (
            errors.status("exporting…")
            if errors.is_terminal
            else contextlib.nullcontext() as status
        ):

            def progress(count: int) -> None:
                if status is not None and count % 500 == 0:
                    status.update(f"exporting… {count:,} results")

            return await export_current_results(
                store, args.handler, fmt, stream, batch_id=args.batch, on_row=progress
            )


async def export_current_results(
    store: Store,
    handler: str,
    fmt: Format,
    stream: IO[str],
    *,
    batch_id: str | None = None,
    on_row: Callable[[int], None] | None = None,
) -> int:
    """Write a handler's current results (of one batch) to ``stream``; returns how many."""
    count = 0
    if fmt == "jsonl":
        async for record in store.iter_current_results(handler, batch_id=batch_id):
            # ASCII-only, as `show --json`: a result is a handler's (often an LLM's) text,
            # which escaped cannot act on a terminal the lines go to; parsers read it back.
            stream.write(json.dumps(result_json(record), ensure_ascii=True, default=str) + "\n")
            count += 1
            if on_row is not None:
                on_row(count)
        return count
    header: dict[str, None] = dict.fromkeys(EXPORT_PREFIX)
    async for row in current_rows(store, handler, batch_id=batch_id):
        header.update(dict.fromkeys(row))
    writer = csv.DictWriter(stream, fieldnames=list(header), lineterminator="\n")
    shown = stream.isatty()  # a terminal gets untrusted text escaped; a file or pipe, as it is
    async for row in current_rows(store, handler, batch_id=batch_id):
        if count == 0:
            writer.writeheader()
        writer.writerow({name: _csv_cell(value, shown) for name, value in row.items()})
        count += 1
        if on_row is not None:
            on_row(count)
    return count


def _csv_cell(value: Any, shown: bool) -> Any:
    if value is None:
        return ""
    return safe_text(value) if shown and isinstance(value, str) else value


def _print_json(console: Console, data: Any) -> None:
    # ASCII-only JSON: a result is a handler's (often an LLM's) text, and escaped it cannot
    # act on a terminal that shows it (bidirectional overrides, C1 controls); parsers read it
    # back unchanged.
    console.out(json.dumps(data, indent=2, ensure_ascii=True, default=str), highlight=False)


async def _history(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    try:
        async with Store.from_settings(settings) as store:
            versions = await result_history(
                store, args.doc, handler=args.handler, batch_id=args.batch
            )
    except NotFound as exc:
        return _fail(exc, "history")
    if args.json:
        _print_json(console, {"doc_id": args.doc, "versions": [result_json(v) for v in versions]})
    else:
        console.print(history_table(args.doc, versions))
    return 0


def _fail(exc: NotFound, command: str) -> int:
    from docbus.cli import ExitCode, say_error

    say_error(f"results {command}", str(exc))
    # several handlers' results and none named: the command line must say which
    return ExitCode.USAGE if isinstance(exc, NameOne) else ExitCode.ATTENTION


async def _show(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with Store.from_settings(settings) as store:
        versions = await store.result_versions(doc_id=args.doc, handler=args.handler)
    try:
        record = choose_result(args.doc, versions, handler=args.handler, version=args.version)
    except NotFound as exc:
        return _fail(exc, "show")
    if args.json:
        _print_json(console, result_json(record))
        return 0
    state = result_state(record) or "superseded"
    table = Table(show_header=False, title_justify="left", box=None)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = (
        ("document", record.doc_id),
        ("handler", f"{record.handler} (version {record.handler_version})"),
        ("version", f"{record.version} of {len(versions)} · {state}"),
        ("run", record.run_id or "(unnamed)"),
        ("batch", f"{record.batch_id} · generation {record.generation}"),
        ("written at", f"{record.written_at:%Y-%m-%d %H:%M:%S}"),
    )
    for name, value in rows:
        table.add_row(name, _cell(value))
    console.print(table)
    output = json.dumps(record.output, indent=2, ensure_ascii=False, default=str)
    console.out(safe_text(output), highlight=False)
    return 0
