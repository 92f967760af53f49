"""Prompting: how the built-in handlers show a document to the LLM.

:func:`document_prompt` renders the document's text between clear markers, followed by the
metadata fields a news feed usually carries (title, supplier, country, published, source) and
any context from earlier steps, and cuts the text at :data:`MAX_PROMPT_CHARS` so one oversized
document cannot exceed a model's context window (the cut is said in the prompt, and
:func:`unread_chars` says how much was left out, for the result).
:func:`require_llm` returns ``ctx.llm`` or says plainly that the worker has no LLM configured.
Used by :mod:`handlers.builtin.entities` and :mod:`handlers.builtin.supplier_risk`.
"""

from __future__ import annotations

from handlers.context import LLM, Context
from handlers.document import Document
from handlers.errors import SystemicFailure

__all__ = [
    "MAX_PROMPT_CHARS",
    "METADATA_FIELDS",
    "document_prompt",
    "require_llm",
    "unread_chars",
]

MAX_PROMPT_CHARS = 48_000
"""Characters of document text put in a prompt (about 12k tokens of English)."""

METADATA_FIELDS = ("title", "supplier", "country", "published", "source")
"""Metadata shown to the model when present; other fields stay out of the prompt."""

_FIELD_LIMIT = 300


def document_prompt(
    doc: Document, *, note: str | None = None, max_chars: int = MAX_PROMPT_CHARS
) -> str:
    """The document as the user message: the (possibly cut) text between markers, then the
    feed's metadata and ``note`` (context from earlier steps) after it."""
    text = doc.text.strip()
    if len(text) > max_chars:
        text = (
            text[:max_chars]
            + f"\n[... cut: the document continues for {len(text) - max_chars} characters]"
        )
    parts = [f"Document:\n<<<\n{text}\n>>>"]
    fields = []
    for name in METADATA_FIELDS:
        value = doc.metadata.get(name)
        if isinstance(value, str | int | float) and str(value).strip():
            fields.append(f"- {name}: {str(value).strip()[:_FIELD_LIMIT]}")
    if fields:
        parts.append("From the feed:\n" + "\n".join(fields))
    if note:
        parts.append(note)
    return "\n\n".join(parts)


def unread_chars(doc: Document, max_chars: int = MAX_PROMPT_CHARS) -> int:
    """Characters of the document's text that :func:`document_prompt` leaves out (0: none).

    The built-in handlers store it in their result (``unread_chars``) and log it, so a result
    drawn from part of a document says so where people read it."""
    return max(0, len(doc.text.strip()) - max_chars)


def require_llm(ctx: Context) -> LLM:
    """``ctx.llm``, or :class:`SystemicFailure` when the worker runs without an LLM client."""
    if ctx.llm is None:
        raise SystemicFailure(
            "LLMNotConfigured",
            "this handler calls an LLM but the worker has none: set OPENAI_API_KEY, "
            "AZURE_OPENAI_ENDPOINT or DOCBUS_LLM__BASE_URL (e.g. `docbus llm-server`)",
        )
    return ctx.llm
