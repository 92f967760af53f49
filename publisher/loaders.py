"""Loaders: turn files, directories and globs of text, markdown, JSON, JSONL and CSV into documents.

:func:`iter_documents` streams :class:`~publisher.inputs.DocumentInput` objects (one JSONL line or
CSV row at a time, so large inputs never sit in memory) and appends an
:class:`~publisher.inputs.InputProblem` with file, line and reason for every input it cannot use:
unreadable file, invalid or too deeply nested JSON, a CSV row with the wrong field count or an
unterminated quote, missing text, id or session field, empty document, non-UTF-8 bytes, duplicate
ids, values that JSON, MongoDB or UTF-8 cannot carry (:func:`publisher.inputs.uncarriable`).
:func:`load_documents` collects both into lists; :func:`scan_documents` only counts, for a
validation pass before sending. Formats: ``files`` (each file one document; a ``.json`` file
holds one record or a list of records), ``jsonl``, ``csv``, or ``auto`` by extension. Hidden
files and directories (``.name``) are not loaded. Neighbour: :mod:`publisher.publish` sends what
these produce.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from docbus.envelope import Source
from publisher.inputs import DocumentChecker, DocumentInput, InputProblem, uncarriable

__all__ = [
    "Format",
    "LoaderOptions",
    "ScanResult",
    "finds_nothing",
    "iter_documents",
    "json_type",
    "load_documents",
    "scan_documents",
]

Format = Literal["auto", "files", "jsonl", "csv"]

_JSONL_SUFFIXES = {".jsonl", ".ndjson"}
_MARKDOWN_SUFFIXES = {".md", ".markdown"}
_TOO_DEEP = "JSON nested too deeply to read (thousands of levels)"
_NO_SUCH_PATH = "no such file or directory"
_NO_MATCH = "no files match this pattern"
_EMPTY_DIRECTORY = "directory holds no files"
_FINDS_NOTHING = {_NO_SUCH_PATH, _NO_MATCH, _EMPTY_DIRECTORY}


@dataclass(frozen=True)
class LoaderOptions:
    """How to read records: which fields hold the text, the id and the session value."""

    format: Format = "auto"
    text_field: str = "text"
    """JSON/CSV field holding the document text."""
    id_field: str | None = None
    """Field holding the document id; without it the id is the content's SHA-256 prefix."""
    session_key: str | None = None
    """Field whose value becomes the Service Bus session id (ordered processing)."""


@dataclass
class ScanResult:
    """What a validation pass found."""

    documents: int = 0
    problems: list[InputProblem] = field(default_factory=list)


def iter_documents(
    paths: Iterable[str | os.PathLike[str]],
    problems: list[InputProblem],
    options: LoaderOptions | None = None,
) -> Iterator[DocumentInput]:
    """Stream the valid documents under ``paths``; append every problem found to ``problems``."""
    options = options or LoaderOptions()
    formats: dict[str, Format] = {}

    def reread(file: str, line: int | None) -> DocumentInput | None:
        """The document at ``file:line`` read again (to confirm a duplicate id's first place)."""
        if file not in formats:
            return None
        for doc, at in _read(Path(file), formats[file], options, []):
            if at == line:
                return doc
        return None

    checker = DocumentChecker(session_key=options.session_key, reread=reread)
    for path, fmt in _expand(paths, options.format, problems):
        formats[str(path)] = fmt
        for doc, line in _read(path, fmt, options, problems):
            ready, problem = checker.check(doc, str(path), line)
            if problem is not None:
                problems.append(problem)
            elif ready is not None:
                yield ready


def load_documents(
    paths: Iterable[str | os.PathLike[str]], options: LoaderOptions | None = None
) -> tuple[list[DocumentInput], list[InputProblem]]:
    """All valid documents under ``paths`` and every problem found, as lists."""
    problems: list[InputProblem] = []
    docs = list(iter_documents(paths, problems, options))
    return docs, problems


def scan_documents(
    paths: Iterable[str | os.PathLike[str]], options: LoaderOptions | None = None
) -> ScanResult:
    """Count valid documents and collect problems without keeping any document in memory."""
    result = ScanResult()
    for _ in iter_documents(paths, result.problems, options):
        result.documents += 1
    return result


def finds_nothing(problem: InputProblem) -> bool:
    """Whether ``problem`` is a path that names no file at all (missing, an empty directory, a
    pattern matching nothing) rather than a file that could not be used."""
    return problem.line is None and problem.reason in _FINDS_NOTHING


def json_type(value: Any) -> str:
    """What JSON calls the type of a parsed ``value`` (``null``, not Python's ``NoneType``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# -- finding files -----------------------------------------------------------------------------


def _expand(
    paths: Iterable[str | os.PathLike[str]], fmt: Format, problems: list[InputProblem]
) -> Iterator[tuple[Path, Format]]:
    for raw in paths:
        text = os.fspath(raw)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file() and not _hidden(Path(m))]
            if not files:
                problems.append(InputProblem(file=text, reason=_NO_MATCH))
            for file in files:
                yield file, _format_of(file, fmt)
            continue
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path))
            )
            if not files:
                problems.append(InputProblem(file=text, reason=_EMPTY_DIRECTORY))
            for file in files:
                yield file, _format_of(file, fmt)
        elif path.is_file():
            yield path, _format_of(path, fmt)
        elif path.exists():
            problems.append(InputProblem(file=text, reason="not a regular file"))
        else:
            problems.append(InputProblem(file=text, reason=_NO_SUCH_PATH))


def _hidden(path: Path) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in path.parts)


def _format_of(path: Path, fmt: Format) -> Format:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "files"


# -- reading -----------------------------------------------------------------------------------


def _read(
    path: Path, fmt: Format, options: LoaderOptions, problems: list[InputProblem]
) -> Iterator[tuple[DocumentInput, int | None]]:
    try:
        if fmt == "jsonl":
            yield from _read_jsonl(path, options, problems)
        elif fmt == "csv":
            yield from _read_csv(path, options, problems)
        else:
            yield from _read_file(path, options, problems)
    except OSError as exc:
        problems.append(InputProblem(file=str(path), reason=f"unreadable: {exc.strerror or exc}"))


def _decode_error(data: bytes, exc: UnicodeDecodeError) -> tuple[int, str]:
    line = data.count(b"\n", 0, exc.start) + 1
    return line, f"not valid UTF-8 (byte {exc.start} of the file)"


def _read_file(
    path: Path, options: LoaderOptions, problems: list[InputProblem]
) -> Iterator[tuple[DocumentInput, int | None]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, reason = _decode_error(data, exc)
        problems.append(InputProblem(file=str(path), line=line, reason=reason))
        return
    file_metadata = {"path": str(path), "name": path.name}
    if path.suffix.lower() == ".json":
        yield from _read_json_file(path, text, file_metadata, options, problems)
        return
    if options.id_field is not None and options.id_field not in file_metadata:
        # A whole file is one plain-text document: its only fields are its path and name.
        problems.append(InputProblem(file=str(path), reason=_plain_text_has_no_id(path, options)))
        return
    content_type = "text/markdown" if path.suffix.lower() in _MARKDOWN_SUFFIXES else "text/plain"
    doc = _document(path, None, text, file_metadata, options, problems, content_type=content_type)
    if doc is not None:
        yield doc, None


def _plain_text_has_no_id(path: Path, options: LoaderOptions) -> str:
    why = (
        "--format files"
        if options.format == "files"
        else f"its name ends in {path.suffix!r}"
        if path.suffix
        else "its name has no extension"
    )
    return (
        f"read as plain text because {why}, so it has no id field {options.id_field!r} (only "
        "'path' and 'name'): pass --format jsonl or csv (or name it .jsonl, .json or .csv)"
    )


def _invalid_json(exc: json.JSONDecodeError) -> str:
    """The reason for a problem of JSON that does not parse, with where on its line: the
    parser's short message alone can be half a sentence ("Invalid control character at")."""
    message = exc.msg.removesuffix(" at")
    return f"invalid JSON: {message} at column {exc.colno}"


def _read_json_file(
    path: Path,
    text: str,
    file_metadata: dict[str, Any],
    options: LoaderOptions,
    problems: list[InputProblem],
) -> Iterator[tuple[DocumentInput, int | None]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(InputProblem(file=str(path), line=exc.lineno, reason=_invalid_json(exc)))
        return
    except RecursionError:
        problems.append(InputProblem(file=str(path), line=1, reason=_TOO_DEEP))
        return
    items = value if isinstance(value, list) else [value]
    for index, item in enumerate(items, start=1):
        prefix = f"item {index}: " if isinstance(value, list) else ""
        if not isinstance(item, dict):
            reason = f"{prefix}JSON {json_type(item)}, expected an object with a text field"
            problems.append(InputProblem(file=str(path), reason=reason))
            continue
        doc = _record(path, None, item, options, problems, prefix=prefix, extra=file_metadata)
        if doc is not None:
            yield doc, None


def _read_jsonl(
    path: Path, options: LoaderOptions, problems: list[InputProblem]
) -> Iterator[tuple[DocumentInput, int | None]]:
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 (byte {exc.start} of the line)"
                problems.append(InputProblem(file=str(path), line=number, reason=reason))
                continue
            if not line.strip():
                continue  # blank lines separate nothing in JSONL; they are not documents
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(
                    InputProblem(file=str(path), line=number, reason=_invalid_json(exc))
                )
                continue
            except RecursionError:
                problems.append(InputProblem(file=str(path), line=number, reason=_TOO_DEEP))
                continue
            if not isinstance(value, dict):
                reason = f"JSON {json_type(value)}, expected an object"
                problems.append(InputProblem(file=str(path), line=number, reason=reason))
                continue
            doc = _record(path, number, value, options, problems)
            if doc is not None:
                yield doc, number


class _Lines:
    """Decode a binary stream line by line for ``csv``, remembering lines that are not UTF-8."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = iter(stream)
        self.number = 0
        self.bad: set[int] = set()
        self.eof = False
        """Set once the reader asked past the last line: only a quoted field still open does."""

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            raw = next(self._stream)
        except StopIteration:
            self.eof = True
            raise
        self.number += 1
        try:
            return raw.decode("utf-8-sig" if self.number == 1 else "utf-8")
        except UnicodeDecodeError:
            self.bad.add(self.number)
            return raw.decode("utf-8", "replace")


def _read_csv(
    path: Path, options: LoaderOptions, problems: list[InputProblem]
) -> Iterator[tuple[DocumentInput, int | None]]:
    csv.field_size_limit(2**31 - 1)  # documents are long; the default caps a field at 128 KiB
    with path.open("rb") as stream:
        lines = _Lines(stream)
        # strict: a quote followed by anything but a delimiter is an error, not silently glued
        # onto the field (which is how a stray quote swallows the next row whole).
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            problems.append(InputProblem(file=str(path), reason="empty CSV file (no header)"))
            return
        except csv.Error as exc:
            problems.append(InputProblem(file=str(path), line=1, reason=f"invalid CSV: {exc}"))
            return
        if options.text_field not in header:
            reason = (
                f"no column {options.text_field!r} in the header (columns: {', '.join(header)})"
            )
            problems.append(InputProblem(file=str(path), line=1, reason=reason))
            return
        end = lines.number
        while True:
            start = end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = lines.number
                if lines.eof and "end of data" in str(exc):
                    problems.append(_unterminated(path, start, end))
                    return
                reason = f"invalid CSV: {exc}"
                if end > start:
                    reason += _joined(start, end)
                problems.append(
                    InputProblem(file=str(path), line=start, last_line=end, reason=reason)
                )
                continue
            end = lines.number
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if any(number in lines.bad for number in range(start, end + 1)):
                problems.append(InputProblem(file=str(path), line=start, reason="not valid UTF-8"))
                continue
            if len(row) != len(header):
                reason = f"row has {len(row)} fields, the header has {len(header)}"
                if end > start:
                    reason += _joined(start, end)
                problems.append(
                    InputProblem(file=str(path), line=start, last_line=end, reason=reason)
                )
                continue
            doc = _record(path, start, dict(zip(header, row, strict=True)), options, problems)
            if doc is not None:
                yield doc, start


def _joined(start: int, end: int) -> str:
    # A stray quote joined physical lines into one row: the problem spans all of them, so no
    # line that held a document of its own goes unmentioned.
    return (
        f"; a quote opened on line {start} runs to line {end}, reading lines {start}-{end} as "
        f'one row: close the quote (a quote inside a quoted field is written "")'
    )


def _unterminated(path: Path, start: int, end: int) -> InputProblem:
    reason = (
        f"unterminated quote: a quoted field opened in this row runs to the end of the file "
        f"({end - start + 1} lines), taking the rows after it into this one; close the quote "
        f'(a quote inside a quoted field is written "")'
    )
    return InputProblem(file=str(path), line=start, last_line=end, reason=reason)


# -- records to documents ----------------------------------------------------------------------


def _record(
    path: Path,
    line: int | None,
    record: Mapping[str, Any],
    options: LoaderOptions,
    problems: list[InputProblem],
    *,
    prefix: str = "",
    extra: Mapping[str, Any] | None = None,
) -> DocumentInput | None:
    text = record.get(options.text_field)
    if text is None:
        problems.append(
            InputProblem(
                file=str(path),
                line=line,
                reason=f"{prefix}missing text field {options.text_field!r}",
            )
        )
        return None
    if not isinstance(text, str):
        reason = (
            f"{prefix}text field {options.text_field!r} is a JSON {json_type(text)}, not a string"
        )
        problems.append(InputProblem(file=str(path), line=line, reason=reason))
        return None
    metadata = {**(extra or {}), **{k: v for k, v in record.items() if k != options.text_field}}
    return _document(path, line, text, metadata, options, problems, prefix=prefix)


def _document(
    path: Path,
    line: int | None,
    text: str,
    metadata: dict[str, Any],
    options: LoaderOptions,
    problems: list[InputProblem],
    *,
    prefix: str = "",
    content_type: str = "text/plain",
) -> DocumentInput | None:
    doc_id: str | None = None
    if options.id_field is not None:
        value = metadata.get(options.id_field)
        problem = _id_problem(options.id_field, metadata)
        if problem is not None:
            problems.append(InputProblem(file=str(path), line=line, reason=f"{prefix}{problem}"))
            return None
        doc_id = str(value)
        if len(doc_id) > 1024:
            problems.append(
                InputProblem(
                    file=str(path), line=line, reason=f"{prefix}id longer than 1024 characters"
                )
            )
            return None
    try:
        return DocumentInput(
            text=text,
            doc_id=doc_id,
            content_type=content_type,
            metadata=metadata,
            source=Source(path=str(path), line=line),
        )
    except ValidationError as exc:  # what the model refuses, e.g. an id pydantic cannot read
        reason = uncarriable(doc_id, "the id") or "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        problems.append(InputProblem(file=str(path), line=line, reason=f"{prefix}{reason}"))
        return None


def _id_problem(id_field: str, metadata: Mapping[str, Any]) -> str | None:
    """What is wrong with the id in ``metadata[id_field]``, or None."""
    if id_field not in metadata:
        return f"missing id field {id_field!r}"
    value = metadata[id_field]
    if value is None:
        return f"id field {id_field!r} is null: give each document an id"
    if isinstance(value, dict | list):
        return f"id field {id_field!r} is a JSON {json_type(value)}: use a string or a number"
    if value == "":
        return f"id field {id_field!r} is empty: give each document an id"
    return None
