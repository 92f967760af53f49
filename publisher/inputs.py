"""Inputs: one document to publish, one problem with the input, and the checks that find them.

:class:`DocumentInput` is what loaders (:mod:`publisher.loaders`) produce and what
:func:`publisher.publish.publish_documents` accepts (plain strings and mappings are turned into
one). :class:`InputProblem` says what is wrong with an input and where (file:line); bad input is
reported, never dropped silently. :class:`DocumentChecker` applies the checks every document
goes through — everything representable in JSON, MongoDB and UTF-8 (:func:`uncarriable`),
content present, size within the claim-check limit, a session value when ordering is asked for,
ids unique within the batch — and assigns content-hash ids where none is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from docbus.envelope import Source, content_doc_id
from docbus.errors import DocbusError
from docbus.store import MAX_PAYLOAD_BYTES

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "DocumentChecker",
    "DocumentInput",
    "InputProblem",
    "InvalidInput",
    "as_input",
    "uncarriable",
]


class DocumentInput(BaseModel):
    """One document to publish: its text and what is known about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    doc_id: str | None = Field(default=None, min_length=1, max_length=1024)
    """Given id; ``None`` means the SHA-256 of the text (see ``content_doc_id``)."""
    content_type: str = "text/plain"
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: Source | None = None
    session_id: str | None = Field(default=None, max_length=128)


class InputProblem(BaseModel):
    """Why an input was not (or cannot be) published, and where it is."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int | None = None
    last_line: int | None = None
    """Set when the problem spans lines (a CSV row that a stray quote joined across lines)."""
    reason: str

    @property
    def where(self) -> str:
        """``file``, ``file:line`` or ``file:first-last``."""
        if self.line is None:
            return self.file
        if self.last_line is not None and self.last_line != self.line:
            return f"{self.file}:{self.line}-{self.last_line}"
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        where = self.where
        return f"{where}: {self.reason}"


class InvalidInput(DocbusError):
    """Some inputs are invalid and nothing (or not everything) was published; see ``problems``."""

    def __init__(self, problems: list[InputProblem], *, sent: int = 0) -> None:
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        what = "nothing was sent" if sent == 0 else f"{sent} documents before them were sent"
        super().__init__(f"{len(problems)} invalid input(s); {what}:\n{shown}{more}")
        self.problems = problems
        self.sent = sent


def as_input(item: DocumentInput | str | Mapping[str, Any]) -> DocumentInput:
    """A :class:`DocumentInput` from what a Python caller hands the publisher.

    Raises ``ValueError`` (with a readable message) when a mapping does not fit the model.
    """
    if isinstance(item, DocumentInput):
        return item
    if isinstance(item, str):
        return DocumentInput(text=item)
    if isinstance(item, Mapping):
        try:
            return DocumentInput.model_validate(dict(item))
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ValueError(reasons) from None
    raise ValueError(
        f"cannot publish a {type(item).__name__}; give a str, mapping or DocumentInput"
    )


MAX_METADATA_DEPTH = 32
"""Levels of lists and objects metadata may nest (MongoDB refuses documents past 100 levels,
and a document's metadata is stored inside other records)."""

MAX_METADATA_BYTES = 64 * 1024
"""Largest metadata, as UTF-8 JSON: it travels in every message, even a claim-checked one."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def uncarriable(value: Any, where: str) -> str | None:  # noqa: C901 - one branch per JSON type a document may not carry
    """Why JSON, BSON (MongoDB) or UTF-8 cannot carry ``value`` faithfully, or None if they can.

    ``value`` is a text or metadata as a caller gives it; ``where`` names it in the reason.
    Refused: lone surrogates (not Unicode, so not UTF-8), integers outside the signed 64-bit
    range (MongoDB's largest), NaN and infinities (JSON has none: they would arrive as null),
    NUL in object keys (MongoDB field names), nesting past :data:`MAX_METADATA_DEPTH`, and
    types JSON does not have. The walk is iterative, so no input can exhaust the stack.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, str):
            reason = _unencodable(item, path)
            if reason is not None:
                return reason
        elif isinstance(item, int):
            if not _INT64_MIN <= item <= _INT64_MAX:
                return (
                    f"{path} is an integer of {item.bit_length()} bits; MongoDB stores at most "
                    f"64-bit integers: write it as a string"
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{path} is {item}, not a finite number: JSON cannot carry it"
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_METADATA_DEPTH:
                return f"{path} is nested too deeply (more than {MAX_METADATA_DEPTH} levels)"
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return f"{path} has a key of type {type(key).__name__}; keys are strings"
                    reason = _unencodable(key, f"a key of {path}")
                    if reason is not None:
                        return reason
                    if "\0" in key:
                        return (
                            f"the key {_shown(key)} of {path} holds a NUL character, which a "
                            "MongoDB field name cannot"
                        )
                    stack.append((child, f"{path}.{_shown(key)}", depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            return (
                f"{path} is a {type(item).__name__}, which JSON cannot carry: use strings, "
                "numbers, booleans, null, lists or objects"
            )
    return None


def _unencodable(text: str, where: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        return (
            f"{where} holds a lone surrogate (U+{code:04X}) at character {exc.start + 1}: not "
            "valid Unicode, so UTF-8 cannot carry it"
        )
    return None


def _shown(key: str) -> str:
    shown = key.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\0")
    return shown if len(shown) <= 40 else shown[:37] + "..."


class DocumentChecker:
    """Checks documents one at a time, remembering ids to catch duplicates across the batch."""

    def __init__(self, *, session_key: str | None = None) -> None:
        self._session_key = session_key
        self._seen: dict[str, str] = {}

    def check(
        self, doc: DocumentInput, file: str, line: int | None
    ) -> tuple[DocumentInput | None, InputProblem | None]:
        """The document ready to send (id and session resolved), or the problem with it."""

        def problem(reason: str) -> tuple[None, InputProblem]:
            return None, InputProblem(file=file, line=line, reason=reason)

        for what, value in (
            ("the text", doc.text),
            ("the id", doc.doc_id),
            ("the session", doc.session_id),
            ("the content type", doc.content_type),
            ("metadata", doc.metadata),
        ):
            reason = uncarriable(value, what)
            if reason is not None:
                return problem(reason)
        metadata_size = len(json.dumps(doc.metadata, ensure_ascii=False).encode("utf-8"))
        if metadata_size > MAX_METADATA_BYTES:
            return problem(
                f"metadata of {metadata_size} bytes exceeds the limit of {MAX_METADATA_BYTES} "
                "(it travels in every message): move large values into the text"
            )
        if not doc.text.strip():
            return problem("empty document")
        size = len(doc.text.encode("utf-8"))
        if size > MAX_PAYLOAD_BYTES:
            return problem(f"document of {size} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}")
        updates: dict[str, Any] = {}
        if doc.session_id is None and self._session_key is not None:
            value = doc.metadata.get(self._session_key)
            if value is None or value == "":
                return problem(f"missing session field {self._session_key!r}")
            session = str(value)
            if len(session) > 128:
                return problem(f"session value longer than 128 characters: {session[:40]}...")
            updates["session_id"] = session
        doc_id = doc.doc_id if doc.doc_id is not None else content_doc_id(doc.text)
        where = file if line is None else f"{file}:{line}"
        first = self._seen.get(doc_id)
        if first is not None:
            if doc.doc_id is None:
                return problem(f"duplicate document: same content as {first}")
            return problem(f"duplicate id {doc_id!r} (first at {first})")
        self._seen[doc_id] = where
        if doc.doc_id is None:
            updates["doc_id"] = doc_id
        return (doc.model_copy(update=updates) if updates else doc), None
