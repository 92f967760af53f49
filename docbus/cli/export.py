"""Where the CLI's exports go: ``--format jsonl|csv`` and ``--output FILE`` (default stdout;
``-`` is stdout too, as for most tools, never a file named ``-``).

Shared by ``docbus audit export`` (:mod:`docbus.cli.audit`) and ``docbus results export``
(:mod:`docbus.cli.results`). With ``--output`` an export is written to ``FILE.partial`` and
renamed to ``FILE`` only once complete, so an interrupted export never leaves a file that looks
whole; the format defaults to the file's suffix (``.csv``), else JSONL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Literal

from rich.console import Console

__all__ = ["Format", "add_destination_arguments", "destination", "export_format", "output_path"]

Format = Literal["jsonl", "csv"]


def add_destination_arguments(parser: argparse.ArgumentParser, csv_note: str) -> None:
    """``--format`` and ``--output``; ``csv_note`` says how CSV cells are made."""
    parser.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help=f"jsonl or csv ({csv_note}); default: csv when --output ends in .csv, else jsonl",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=output_path,
        metavar="FILE",
        help="write here (default: stdout; - for stdout)",
    )


def output_path(text: str) -> Path | None:
    """``--output``'s value: a file, or ``None`` (stdout) for ``-``."""
    return None if text == "-" else Path(text)


def export_format(args: argparse.Namespace) -> Format:
    if args.format is not None:
        return "csv" if args.format == "csv" else "jsonl"
    output: Path | None = args.output
    return "csv" if output is not None and output.suffix.lower() == ".csv" else "jsonl"


@contextlib.contextmanager
def destination(output: Path | None, stdout: IO[str] | None) -> Iterator[IO[str]]:
    """stdout, or ``output`` written through ``output.partial`` and renamed when complete."""
    if output is None:
        stream = stdout or sys.stdout
        yield stream
        stream.flush()
        return
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as stream:
            yield stream
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def write_export(
    command: str,
    output: Path | None,
    stdout: IO[str] | None,
    write: Callable[[IO[str]], int],
    *,
    nothing: str,
    noun: str,
    fmt: Format,
    errors: Console,
) -> int:
    """Run ``write`` (it writes rows to the stream it is given and returns how many) into
    ``output`` or stdout, as ``docbus COMMAND`` does: no rows is one line (``nothing``) and
    exit 1, with no file left; so is an unknown id (:class:`docbus.ops.NotFound`) or a file
    that cannot be written; otherwise a line on ``errors`` says how many ``noun`` went where."""
    from docbus.cli import say_error
    from docbus.ops import NotFound

    try:
        with destination(output, stdout) as stream:
            count = write(stream)
            if count == 0:
                raise _NothingMatched
    except _NothingMatched:
        say_error(command, nothing)
        return 1
    except NotFound as exc:
        say_error(command, str(exc))
        return 1
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the runner ends quietly
    except OSError as exc:
        say_error(command, f"cannot write the export: {exc}")
        return 1
    where = str(output) if output is not None else "stdout"
    errors.print(f"exported {count:,} {noun} as {fmt} to {where}", highlight=False)
    return 0


class _NothingMatched(Exception):
    pass
