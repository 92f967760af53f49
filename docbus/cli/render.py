"""Rendering untrusted text: the one way the CLI shows ids, reasons, documents and LLM output.

Everything docbus prints about a document comes from outside — its id and text, a handler's
reason, an LLM's answer — so none of it may act on the terminal. Three pieces, used by every
command in :mod:`docbus.cli`:

- :func:`untrusted`: a value as a Rich :class:`~rich.text.Text`, never parsed as markup, with
  control, escape and bidirectional characters written as visible escapes
  (:func:`docbus.text.visible`);
- :class:`Table`: Rich's table whose cells and title go through :func:`untrusted`, whose
  numeric (right-justified) columns never wrap nor truncate, whose text columns fold rather
  than cut, and whose title sets the least width so it is not broken;
- :func:`make_console`: a console that parses no markup nor emoji codes, escapes whatever
  control character still reaches a segment, and — when its output is not a terminal — is wide
  (``COLUMNS``, else :data:`PIPE_WIDTH`) so piped output keeps whole values.

:class:`SafeFormatter` does the same for log records: the CLI installs it where it configures
logging (:func:`docbus.cli.runner.main`), so a document cannot write ESC or BEL to stderr
through a worker's log line. Neighbours: :mod:`docbus.text` (the escaping itself).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table as RichTable
from rich.text import Text

from docbus.text import visible

__all__ = ["PIPE_WIDTH", "SafeFormatter", "Table", "install_log_escaping", "make_console",
           "untrusted"]  # fmt: skip

PIPE_WIDTH = 200
"""Columns of a console whose output is not a terminal and no ``COLUMNS`` says otherwise."""


def untrusted(value: object, style: str = "") -> Text:
    """``value`` (text from a document, a handler, an LLM, an id) as it is: no markup, no emoji
    codes, and no character that acts on a terminal (written as ``\\uXXXX``). A
    :class:`~rich.text.Text` keeps its style when it has nothing to escape."""
    if isinstance(value, Text):
        plain = value.plain
        safe = visible(plain)
        if safe == plain:
            return value
        return Text(safe, style=value.style or style)
    return Text(visible("" if value is None else str(value)), style=style)


def _safe_cell(cell: RenderableType | None) -> RenderableType | None:
    if isinstance(cell, str | Text):
        return untrusted(cell)
    return cell


class Table(RichTable):
    """A Rich table that shows its cells and title as :func:`untrusted` text and keeps data
    whole at any width.

    Columns added with ``justify="right"`` (or ``numeric=True``) are numeric: they never wrap
    and are at least as wide as their widest cell and their header, so a narrow terminal can
    never show ``9,2…``; other columns fold long values onto more lines instead of cutting them.
    A text that is meant to be styled is passed as a :class:`~rich.text.Text` with a style.
    """

    def __init__(self, *headers: Any, title: str | Text | None = None, **kwargs: Any) -> None:
        super().__init__(*headers, title=None if title is None else untrusted(title), **kwargs)
        self._numeric: set[int] = set()
        self._value_widths: dict[int, int] = {}

    def add_column(  # type: ignore[override]
        self, header: RenderableType = "", *, numeric: bool = False, **kwargs: Any
    ) -> None:
        if numeric or kwargs.get("justify") == "right":
            self._numeric.add(len(self.columns))
            kwargs["no_wrap"] = True
            kwargs.setdefault("justify", "right")
            if isinstance(header, str):  # a long header goes onto more lines, by word
                header = Text(visible(header), no_wrap=False, overflow="fold")
        else:  # text gives way by folding: a long id stays whole, on more lines
            kwargs["no_wrap"] = False
            kwargs.setdefault("overflow", "fold")
        super().add_column(_safe_cell(header) or "", **kwargs)

    def add_row(self, *renderables: RenderableType | None, **kwargs: Any) -> None:
        super().add_row(*(_safe_cell(cell) for cell in renderables), **kwargs)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Any:
        # A numeric column is at least as wide as its widest value and the longest word of its
        # header: the text columns are the ones that give way. The title sets the least width
        # of the table, so that it is not broken onto more lines than it must.
        for index in self._numeric:
            column = self.columns[index]
            widths = [_longest_word(column.header)]
            values = [Measurement.get(console, options, cell).maximum for cell in column.cells]
            self._value_widths[index] = max(values, default=0)
            widths += values
            column.min_width = max(column.min_width or 0, *widths)
            column.max_width = None
        for index, column in enumerate(self.columns):
            if index not in self._numeric:  # a text column keeps its header and short words
                words = max((_longest_word(cell) for cell in column.cells), default=0)
                least = max(_longest_word(column.header), min(words, _SHORT_WORD))
                column.min_width = max(column.min_width or 0, least)
        if self._numeric and self.__rich_measure__(console, options).maximum > options.max_width:
            # Too wide: numeric headers go onto more lines (by word) before text is squeezed.
            for index in self._numeric:
                self.columns[index].max_width = self.columns[index].min_width
        if isinstance(self.title, Text):
            wanted = min(self.title.cell_len, options.max_width)
            self.min_width = max(self.min_width or 0, wanted)
        return super().__rich_console__(console, options)

    def _calculate_column_widths(self, console: Console, options: ConsoleOptions) -> list[int]:
        # Rich narrows the wrapping columns without regard to their least widths and then
        # widens them back, which can make the table wider than the terminal (its right-hand
        # columns cut off): from the widths the cells want, narrow the columns here instead.
        if self.expand:
            return super()._calculate_column_widths(console, options)
        widths = super()._calculate_column_widths(console, options.update_width(_UNBOUNDED))
        if sum(widths) <= options.max_width:
            return widths
        floors = []
        for index, (column, width) in enumerate(zip(self.columns, widths, strict=True)):
            padding = self._get_padding_width(index)
            # First text down to its short words, then numeric headers onto more lines, then
            # text down to its header's words: values are the last to be broken.
            if index in self._numeric:
                values = min(width, self._value_widths.get(index, 0) + padding)
                floors.append((width, values, values))
            else:
                least = min(width, (column.min_width or 0) + padding)
                floors.append((least, least, min(least, _longest_word(column.header) + padding)))
        return _squeezed(widths, floors, options.max_width)


_SHORT_WORD = 12  # a text column's words up to this length are never cut
_UNBOUNDED = 100_000  # a width no table reaches: the widths its cells want


def _squeezed(widths: list[int], floors: Sequence[Sequence[int]], room: int) -> list[int]:
    """``widths`` narrowed, the widest first, until they fit in ``room``: every column down to
    its first floor, then (if still too wide) to its second, and so on. A column whose floor is
    its width keeps it at that level."""
    widths = list(widths)
    for level in range(len(floors[0]) if floors else 0):
        while sum(widths) > room:
            slack = [width - floor[level] for width, floor in zip(widths, floors, strict=True)]
            widest = max(range(len(widths)), key=lambda index: slack[index])
            if slack[widest] <= 0:
                break
            widths[widest] -= 1  # one at a time: the widest columns give way evenly
    return widths


def _longest_word(cell: RenderableType) -> int:
    if not isinstance(cell, str | Text):
        return 0
    plain = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(word) for word in plain.split()), default=0)


class _SafeConsole(Console):
    """A console whose every text segment is escaped — the last guard, for a renderable that
    did not go through :func:`untrusted` (control segments, such as a progress bar's cursor
    moves, are Rich's own and pass) — and whose lines end without the spaces Rich pads or wraps
    them with (a notice wrapped at 80 columns, a centred title)."""

    def render(self, renderable: Any, options: ConsoleOptions | None = None) -> Any:
        return _inert_lines(super().render(renderable, options))


def _inert_lines(segments: Iterable[Segment]) -> Iterable[Segment]:
    line: list[Segment] = []
    for segment in segments:
        if segment.control:
            yield from line
            line.clear()
            yield segment
            continue
        text, style = segment.text, segment.style
        if not text.isprintable():
            text = visible(text)
        *ended, rest = text.split("\n")  # a wrapped text is one segment, newlines and all
        for part in ended:
            line.append(Segment(part, style))
            yield from _rstripped(line)
            line.clear()
            yield Segment("\n", style)
        if rest:
            line.append(Segment(rest, style))
    yield from line


def _rstripped(line: list[Segment]) -> list[Segment]:
    while line and not line[-1].text.rstrip(" "):
        line.pop()
    if line and line[-1].text.endswith(" "):
        last = line[-1]
        line[-1] = Segment(last.text.rstrip(" "), last.style, last.control)
    return line


def make_console(*, stderr: bool = False, file: IO[str] | None = None, **kwargs: Any) -> Console:
    """The console a command prints on: no markup, emoji codes nor highlighting (what it shows
    comes from outside), control characters escaped, and — not on a terminal — wide enough that
    piped output keeps whole values (``COLUMNS`` when set, else :data:`PIPE_WIDTH`)."""
    console = _SafeConsole(
        stderr=stderr, file=file, markup=False, emoji=False, highlight=False, **kwargs
    )
    if "width" not in kwargs and not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


class SafeFormatter(logging.Formatter):
    """A formatter whose every line is safe on a terminal: the message on one line with control
    characters (newlines too, so a document cannot forge a log line) escaped, and whatever
    follows it (a traceback) with controls other than newline and tab escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = visible(message, keep="")
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


def install_log_escaping(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (the root logger) a :class:`SafeFormatter` keeping its
    format: called once the CLI has configured logging."""
    for handler in (logger or logging.getLogger()).handlers:
        current = handler.formatter or logging.Formatter()
        formatter = SafeFormatter(current._fmt, current.datefmt)  # its format and date format
        handler.setFormatter(formatter)
