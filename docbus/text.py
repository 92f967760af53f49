"""Text for people: one-line, bounded renderings of messages that may be long or untrusted.

:func:`one_line` folds every run of whitespace (newlines included) into one space and cuts the
result to a limit with an ellipsis; settlement reasons, dead-letter descriptions and table cells
all use it, so a multi-line error or a document excerpt never breaks a log line or a table row.
:func:`visible` writes the characters that act on a terminal (C0/C1 controls, ESC, BEL, DEL,
bidirectional overrides, zero-width and separator characters) as ``\\uXXXX`` escapes, so text
from documents, handlers or an LLM can be shown without recolouring the terminal, moving the
cursor, setting its title or reordering what is shown. The CLI's rendering
(:mod:`docbus.cli.render`) and error lines (:mod:`docbus.cli`) build on both.
"""

from __future__ import annotations

import unicodedata

__all__ = ["one_line", "visible"]

# Unicode categories that act on a terminal rather than show: controls (C0, C1, DEL), format
# characters (bidirectional overrides and isolates, zero-width), line and paragraph separators,
# lone surrogates.
_ACTIVE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def one_line(text: str | None, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis marks a cut); None: ""."""
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def visible(text: str, *, keep: str = "\n\t") -> str:
    """``text`` with every character that acts on a terminal written as a ``\\uXXXX`` escape
    (``\\x1b`` becomes ``\\u001b``); the characters in ``keep`` (newline and tab) stay."""
    if text.isprintable():  # the common case: nothing to escape (printable excludes all _ACTIVE)
        return text
    out = []
    for char in text:
        if char in keep or unicodedata.category(char) not in _ACTIVE:
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)
