"""Text for people: one-line, bounded renderings of messages that may be long or untrusted.

:func:`one_line` folds every run of whitespace (newlines included) into one space and cuts the
result to a limit with an ellipsis; settlement reasons, dead-letter descriptions and table cells
all use it, so a multi-line error or a document excerpt never breaks a log line or a table row.
The CLI's error lines (:mod:`docbus.cli`) build on it.
"""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(text: str | None, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut); None: ""."""
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
