"""The CLI's rendering of untrusted text (:mod:`docbus.cli.render`), without I/O: markup and
terminal escapes shown literally, numbers whole and text folded at 80 columns, a wide console
on a pipe. The same through the real commands: :mod:`tests.docbus.cli.test_untrusted_text`."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from docbus.cli.render import SafeFormatter, Table, make_console, untrusted

MARKUP = "[bold red]x[/] markup"
ESCAPES = "\x1b[31mRED\x1b]0;PWNED-TITLE\x07"


def printed(renderable: object, width: int) -> str:
    console = make_console(file=io.StringIO(), width=width)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def test_untrusted_text_is_literal_and_inert() -> None:
    assert untrusted(f"{MARKUP} {ESCAPES}\u202e").plain == (
        "[bold red]x[/] markup \\u001b[31mRED\\u001b]0;PWNED-TITLE\\u0007\\u202e"
    )
    out = printed(f"{MARKUP} :smile: {ESCAPES}", width=200)
    assert out.startswith("[bold red]x[/] markup :smile: \\u001b[31mRED")
    assert "\x1b" not in out and "\x07" not in out


def test_at_80_columns_numbers_stay_whole_and_text_folds() -> None:
    table = Table(title="Batch 2026-12-04T17:06:19Z-399d61 → documents and their long title")
    table.add_column("handler")
    table.add_column("id")
    for name in ("prompt tokens", "completion tokens", "cost (USD)", "calls", "dead-lettered"):
        table.add_column(name, justify="right")
    long_id = "x" * 70
    table.add_row("entities", long_id, "9,234,567", "1,234,567", "0.123456", "18", "3")
    out = printed(table, width=80)
    assert all(len(line) <= 80 for line in out.splitlines())
    for number in ("9,234,567", "1,234,567", "0.123456", "18"):
        assert number in out, out
    assert "…" not in out
    assert out.count("x") == len(long_id)  # folded onto more lines, not cut
    assert "┃ handler " in out
    assert out.splitlines()[0].rstrip().endswith("documents and their long title")


def test_a_pipe_gets_a_wide_console_unless_columns_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console(file=io.StringIO()).width >= 160
    monkeypatch.setenv("COLUMNS", "80")
    assert make_console(file=io.StringIO()).width == 80
    assert isinstance(make_console(), Console)


def test_wrapped_notices_and_titles_end_without_padding_spaces() -> None:
    notice = "No LLM API key is configured: the demo uses the OFFLINE model " * 3
    table = Table(title="a centred title over a narrow table")
    table.add_column("n", justify="right")
    table.add_row("1")
    out = printed(notice, width=80) + printed(table, width=80)
    assert len(out.splitlines()) > 3
    assert all(line == line.rstrip() for line in out.splitlines()), out


def test_log_lines_escape_control_characters_and_stay_one_line() -> None:
    formatter = SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "subscriber.processing", logging.WARNING, __file__, 1,
        "dead-lettered %s: %s", ("t-5[bold]", f"poison: {ESCAPES}\nFAKE ERROR line"), None,
    )  # fmt: skip
    line = formatter.format(record)
    assert line == (
        "WARNING dead-lettered t-5[bold]: poison: \\u001b[31mRED\\u001b]0;PWNED-TITLE\\u0007"
        "\\u000aFAKE ERROR line"
    )
    assert record.getMessage().endswith("FAKE ERROR line")  # the record itself is unchanged
