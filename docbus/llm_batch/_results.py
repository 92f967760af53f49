"""Reading a provider batch's output and error files, line by line.

OpenAI and Azure OpenAI write one JSON object a line::

    {"id": "batch_req_…", "custom_id": "…",
     "response": {"status_code": 200, "request_id": "req_…", "body": {chat.completion}},
     "error": null}
    {"id": …, "custom_id": …,
     "response": {"status_code": 400, "body": {"error": {…}}}, "error": null}
    {"id": …, "custom_id": …, "response": null,
     "error": {"code": "batch_expired" | "batch_cancelled" | "request_timeout", "message": …}}

in any order, so everything keys on ``custom_id`` (docbus's request key). :func:`read_lines`
turns each line into a :class:`LineAnswer` (status 200), a :class:`LineError` (another status,
or a request the provider never ran) or an :class:`UnreadableLine` (not JSON, no custom id) —
one bad line never hides the others. Pure; :mod:`docbus.llm_batch._outcomes` decides what each
means.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

NOT_RUN_EXPIRED = "batch_expired"
NOT_RUN_CANCELLED = "batch_cancelled"


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """A request the provider answered: the ``chat.completion`` body and its usage."""

    custom_id: str
    body: Mapping[str, Any] = field(hash=False)
    request_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def finish_reason(self) -> str | None:
        choices = self.body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            reason = choices[0].get("finish_reason")
            return reason if isinstance(reason, str) else None
        return None


@dataclass(frozen=True, slots=True)
class LineError:
    """A request that failed (``status_code`` set) or was never run (``status_code`` None,
    ``code`` such as ``batch_expired``)."""

    custom_id: str
    status_code: int | None
    code: str | None
    message: str
    type: str | None = None
    param: str | None = None
    request_id: str | None = None

    @property
    def not_run(self) -> bool:
        return self.status_code is None


@dataclass(frozen=True, slots=True)
class UnreadableLine:
    """A line that names no request: ``number`` is 1-based in its file."""

    number: int
    reason: str


Line = LineAnswer | LineError | UnreadableLine


def read_lines(content: bytes | str | Iterable[str]) -> Iterator[Line]:
    """The lines of an output or error file (bytes, text, or an iterable of lines)."""
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    rows = content.splitlines() if isinstance(content, str) else content
    for number, raw in enumerate(rows, 1):
        if raw.strip():
            yield read_line(raw, number)


def read_line(raw: str, number: int = 1) -> Line:
    """One line of an output or error file."""
    try:
        data = json.loads(raw)
    except ValueError:
        return UnreadableLine(number, "not JSON")
    if not isinstance(data, Mapping):
        return UnreadableLine(number, "not a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return UnreadableLine(number, "no custom_id")
    response = data.get("response")
    error = data.get("error")
    if isinstance(response, Mapping):
        status = response.get("status_code")
        body = response.get("body")
        request_id = _text(response.get("request_id"))
        if status == 200 and isinstance(body, Mapping):
            usage = body.get("usage")
            usage = usage if isinstance(usage, Mapping) else {}
            return LineAnswer(
                custom_id,
                body,
                request_id,
                _int(usage.get("prompt_tokens")),
                _int(usage.get("completion_tokens")),
            )
        if isinstance(status, int):
            detail = body.get("error") if isinstance(body, Mapping) else None
            detail = detail if isinstance(detail, Mapping) else {}
            return LineError(
                custom_id,
                status,
                _text(detail.get("code")),
                _text(detail.get("message")) or f"HTTP {status}",
                _text(detail.get("type")),
                _text(detail.get("param")),
                request_id,
            )
    if isinstance(error, Mapping):
        return LineError(
            custom_id,
            None,
            _text(error.get("code")),
            _text(error.get("message")) or "not run",
        )
    return UnreadableLine(number, "neither a response nor an error")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
