"""``docbus audit export``: a batch's LLM prompt/response pairs, for people to review.

Every LLM request a handler makes is an ``llm_calls`` audit row
(:class:`~docbus.records.LLMCallRecord`, written by :mod:`handlers.llm`).
``docbus audit export --batch B [--step S] [--handler H] [--doc D] [--format jsonl|csv]
[--output FILE]`` writes one line (JSONL) or one row (CSV) per request, oldest first: its ids,
step, model, re-ask and retry numbers, the prompt messages, the response text, the parsed
output, tokens, cost, latency and error. Rows are streamed from the store's cursor
(``Store.iter_llm_calls``) to the output as they arrive, so a batch of any size exports in
constant memory. In CSV the messages and the parsed output are JSON-encoded cells.

With ``--output`` the export is written to ``FILE.partial`` and renamed to ``FILE`` only once
complete, so an interrupted export never leaves a file that looks whole. The format defaults to
the file's suffix (``.csv``), else JSONL. Neighbours: :mod:`docbus.cli.report` (the same rows added
up), :mod:`docbus.store`.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console

from docbus.cli.arguments import non_empty
from docbus.cli.export import Format, add_destination_arguments, export_format, write_export
from docbus.cli.render import make_console
from docbus.ops.audit import EXPORT_FIELDS, ExportFilter, export_rows
from docbus.ops.batches import no_batch
from docbus.settings import Settings
from docbus.store import Store

__all__ = [
    "EXIT_CODES",
    "RowWriter",
    "add_arguments",
    "export_calls",
    "run",
]

EXIT_CODES = {1: "no LLM call matches the selection, or the export could not be written"}


_JSON_CELLS = ("messages", "parsed")


class RowWriter:
    """Writes exported rows as JSON lines or CSV to a text stream."""

    def __init__(self, stream: IO[str], fmt: Format) -> None:
        self.format = fmt
        self.count = 0
        self._stream = stream
        self._csv: Any = None
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=EXPORT_FIELDS, lineterminator="\n")

    def write(self, row: dict[str, Any]) -> None:
        if self._csv is not None:
            if self.count == 0:
                self._csv.writeheader()
            self._csv.writerow({name: _cell(name, row.get(name)) for name in EXPORT_FIELDS})
        else:
            self._stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1


def _cell(name: str, value: Any) -> Any:
    if name in _JSON_CELLS:
        return "" if value is None else json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


async def export_calls(
    store: Store,
    selection: ExportFilter,
    writer: RowWriter,
    on_row: Callable[[int], None] | None = None,
) -> int:
    """Stream the selected audit rows, oldest first, into ``writer``; returns how many."""
    async for row in export_rows(store, selection):
        writer.write(row)
        if on_row is not None:
            on_row(writer.count)
    return writer.count


# -- command ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="export")
    export = commands.add_parser(
        "export", help="export a batch's LLM prompt/response pairs (one row per request)"
    )
    export.add_argument("--batch", required=True, metavar="ID", type=non_empty, help="the batch")
    export.add_argument(
        "--step", metavar="NAME", type=non_empty, help="only calls made in this step"
    )
    export.add_argument(
        "--handler", metavar="NAME", type=non_empty, help="only calls of this handler"
    )
    export.add_argument(
        "--doc", metavar="ID", type=non_empty, help="only calls about this document"
    )
    add_destination_arguments(export, "messages and parsed output JSON-encoded")


def run(
    args: argparse.Namespace, *, stdout: IO[str] | None = None, errors: Console | None = None
) -> int:
    """Run ``docbus audit export``; the export goes to ``--output`` or ``stdout``, progress to
    ``errors`` (stderr), failures through the CLI's runner."""
    from docbus.cli import run_async

    errors = errors or make_console(stderr=True)
    selection = ExportFilter(args.batch, step=args.step, handler=args.handler, doc_id=args.doc)
    fmt = export_format(args)

    def write(stream: IO[str]) -> int:
        writer = RowWriter(stream, fmt)
        return run_async(lambda settings: _export(settings, selection, writer, errors))

    return write_export(
        "audit export", args.output, stdout, write,
        nothing=f"no LLM calls match {selection.describe()}", noun="LLM call(s)", fmt=fmt,
        errors=errors,
    )  # fmt: skip


async def _export(
    settings: Settings, selection: ExportFilter, writer: RowWriter, errors: Console
) -> int:
    async with Store.from_settings(settings) as store:
        if not errors.is_terminal:
            count = await export_calls(store, selection, writer)
        else:
            with errors.status("exporting…") as status:

                def progress(count: int) -> None:
                    if count % 100 == 0:
                        status.update(f"exporting… {count:,} LLM calls")

                count = await export_calls(store, selection, writer, progress)
        if count == 0 and await store.get_batch(selection.batch_id) is None:
            raise no_batch(selection.batch_id)  # not "no calls match": there is no such batch
        return count
