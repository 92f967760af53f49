"""Confirmation: how commands that change things (replay, rollback) ask before they act.

Such a command runs at once with ``--yes``; without it, it asks a yes/no question on the terminal
and refuses outright when stdin is not a terminal (a pipeline or a cron job must say ``--yes``),
so nothing is ever sent or withdrawn by accident. Neighbours: :mod:`docbus.cli.replay`,
:mod:`docbus.cli.rollback`.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

__all__ = ["REFUSED", "confirm", "stdin_is_terminal"]

REFUSED = 2
"""The exit status of a command that refused to act without confirmation."""


def stdin_is_terminal(stdin: TextIO | None = None) -> bool:
    """Whether a person can answer a question on ``stdin`` (default ``sys.stdin``)."""
    stream = stdin if stdin is not None else sys.stdin
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def confirm(question: str, *, console: Console, stdin: TextIO | None = None) -> bool:
    """Ask ``question [y/N]``; True only for an explicit yes."""
    stream = stdin if stdin is not None else sys.stdin
    console.print(f"{question} [y/N] ", end="", markup=False, highlight=False)
    answer = stream.readline()
    return answer.strip().lower() in {"y", "yes"}
