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

import hashlib
import json
import math
from array import array
from collections.abc import Callable, Iterator, Mapping
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


Reread = Callable[[str, int | None], "DocumentInput | None"]
"""Reads the document at a place (file, line) again, or None when it cannot."""


class DocumentChecker:
    """Checks documents one at a time, remembering ids to catch duplicates across the batch.

    Memory does not grow with the ids' length: with ``reread`` (the loaders give one) each id
    read from a file line is kept as an 8-byte digest and the place it was first seen, in flat
    arrays (16 bytes a slot, at most 7/8 of them used). A digest seen before is confirmed by
    reading the first place again, so a digest collision never drops a document, and the
    problem still names both places. Ids of whole-file documents (no line), and every id
    without ``reread`` (documents given in memory), are kept in full.
    """

    def __init__(
        self,
        *,
        session_key: str | None = None,
        reread: Reread | None = None,
        digest: Callable[[str], int] | None = None,
    ) -> None:
        self._session_key = session_key
        self.reread = reread
        self._digest = digest or _digest
        self._exact: dict[str, int] = {}
        self._table = _DigestTable()
        self._files: list[str] = []
        self._file_numbers: dict[str, int] = {}

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
        place = self._place(file, line)
        first = self._first_place(doc_id)
        if first is not None:
            where = self._where(first)
            if doc.doc_id is None:
                return problem(f"duplicate document: same content as {where}")
            return problem(f"duplicate id {doc_id!r} (first at {where})")
        self._remember(doc_id, place, exact=self.reread is None or line is None)
        if doc.doc_id is None:
            updates["doc_id"] = doc_id
        return (doc.model_copy(update=updates) if updates else doc), None

    def _place(self, file: str, line: int | None) -> int:
        number = self._file_numbers.get(file)
        if number is None:
            number = self._file_numbers[file] = len(self._files)
            self._files.append(file)
        return number << _LINE_BITS | (line or 0)

    def _where(self, place: int) -> str:
        file, line = self._files[place >> _LINE_BITS], place & _LINE_MASK
        return file if line == 0 else f"{file}:{line}"

    def _first_place(self, doc_id: str) -> int | None:
        """Where ``doc_id`` was first seen, or None."""
        first = self._exact.get(doc_id)
        if first is not None or self.reread is None:
            return first
        for first in self._table.places(self._digest(doc_id)):
            if self._holds(first, doc_id):
                return first
        return None

    def _holds(self, place: int, doc_id: str) -> bool:
        """Whether the input at ``place`` has id ``doc_id`` (not merely the same digest)."""
        assert self.reread is not None
        doc = self.reread(self._files[place >> _LINE_BITS], place & _LINE_MASK)
        if doc is None:  # cannot tell: report it rather than send a possible duplicate
            return True
        return (doc.doc_id if doc.doc_id is not None else content_doc_id(doc.text)) == doc_id

    def _remember(self, doc_id: str, place: int, *, exact: bool) -> None:
        if exact:
            self._exact[doc_id] = place
        else:
            self._table.add(self._digest(doc_id), place)


_LINE_BITS = 40
_LINE_MASK = (1 << _LINE_BITS) - 1


def _digest(doc_id: str) -> int:
    """8 bytes of BLAKE2b, never 0 (0 marks an empty slot)."""
    value = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest())
    return value or 1


class _DigestTable:
    """An open-addressing multimap of 64-bit digests to places, in two flat arrays.

    Up to 7/8 full (linear probing over uniformly spread digests stays short at that load),
    so 100,000 ids take 2 MiB; the arrays are allocated at their size directly, with no
    zeroed copy beside them while they grow."""

    def __init__(self) -> None:
        self._digests = _zeros(1024)
        self._places = _zeros(1024)
        self._count = 0

    def places(self, digest: int) -> Iterator[int]:
        """The places stored under ``digest`` (more than one only after a collision)."""
        mask = len(self._digests) - 1
        slot = digest & mask
        while (stored := self._digests[slot]) != 0:
            if stored == digest:
                yield self._places[slot]
            slot = (slot + 1) & mask

    def add(self, digest: int, place: int) -> None:
        if (self._count + 1) * 8 > len(self._digests) * 7:  # at most 7/8 full
            self._grow()
        self._put(digest, place)
        self._count += 1

    def _put(self, digest: int, place: int) -> None:
        mask = len(self._digests) - 1
        slot = digest & mask
        while self._digests[slot] != 0:
            slot = (slot + 1) & mask
        self._digests[slot], self._places[slot] = digest, place

    def _grow(self) -> None:
        old = zip(self._digests, self._places, strict=True)
        size = len(self._digests) * 2
        self._digests, self._places = _zeros(size), _zeros(size)
        for digest, place in old:
            if digest != 0:
                self._put(digest, place)


def _zeros(size: int) -> array[int]:
    return array("Q", (0,)) * size
