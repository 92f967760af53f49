"""Inputs: one document to publish, one problem with the input, and the checks that find them.

:class:`DocumentInput` is what loaders (:mod:`publisher.loaders`) produce and what
:func:`publisher.publish.publish_documents` accepts (plain strings and mappings are turned into
one). :class:`InputProblem` says what is wrong with an input and where (file:line); bad input is
reported, never dropped silently. :class:`DocumentChecker` applies the checks every document
goes through — content present, size within the claim-check limit, a session value when ordering
is asked for, ids unique within the batch — and assigns content-hash ids where none is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from docbus.envelope import Source, content_doc_id
from docbus.errors import DocbusError
from docbus.store import MAX_PAYLOAD_BYTES

__all__ = ["DocumentChecker", "DocumentInput", "InputProblem", "InvalidInput", "as_input"]


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
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
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
