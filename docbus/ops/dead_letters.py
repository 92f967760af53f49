"""Dead letters as an operator sees them: listed, counted by group, one shown in full.

The selection is a :class:`~docbus.store.DeadLetterFilter` (``docbus dlq list`` and ``docbus
replay`` take the same options; :func:`parse_time` reads their ``--since``/``--until`` as ISO
8601 or as an age such as ``30m``, ``2h``, ``7d``). :func:`list_json` is the rows of a listing
without bodies or tracebacks, :func:`group_dead_letters` counts them per :data:`GROUPS` key
(reason, handler, batch, error, subscription), and :func:`show_dead_letter` gathers everything
about one: the record, the document it carried (from the ``documents`` store, its claim-checked
text loaded) and the LLM calls made for it (:class:`DeadLetterDetail`). :func:`error_line` is
what went wrong, on one line. Neighbours: :mod:`docbus.cli.dlq` draws these,
:mod:`publisher.replay` replays what they show, :mod:`subscriber.dlq` captures the broker's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from docbus.envelope import Envelope, InvalidEnvelope
from docbus.errors import DocbusError
from docbus.ops._not_found import NotFound
from docbus.records import DeadLetterRecord, LLMCallRecord
from docbus.store import DeadLetterFilter, Store
from docbus.text import one_line

__all__ = [
    "GROUPS",
    "DeadLetterDetail",
    "DeadLetterGroup",
    "body_summary",
    "error_line",
    "group_dead_letters",
    "group_json",
    "list_json",
    "parse_time",
    "show_dead_letter",
]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or an age such as ``90m``/``2d``."""
    value = text.strip()
    age = _AGE.match(value.lower())
    if age is not None:
        amount, unit = float(age.group(1)), _UNITS[age.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2025-01-31T12:00) nor an age (30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def error_line(record: DeadLetterRecord) -> str:
    """What went wrong, on one line: the description (the worker writes ``Type: message`` or
    the handler's own words there; the broker its reason), else the error itself."""
    if record.description.strip():
        return record.description.strip().splitlines()[0]
    if record.error_type:
        first = (record.error_message or "").strip().splitlines()
        return f"{record.error_type}: {first[0]}" if first else record.error_type
    return ""


GROUPS: dict[str, Callable[[DeadLetterRecord], str]] = {
    "reason": lambda r: r.reason,
    "handler": lambda r: r.handler or f"({r.subscription})",
    "batch": lambda r: r.batch_id or "(none)",
    "error": lambda r: one_line(error_line(r), 80) or r.reason,
    "subscription": lambda r: f"{r.topic or '?'}/{r.subscription}",
}
"""``--group-by`` keys: what a dead letter counts under."""


@dataclass(frozen=True)
class DeadLetterGroup:
    """The dead letters that count under one key of a :data:`GROUPS` grouping."""

    key: str
    count: int
    replayed: int
    documents: int
    """Distinct (batch, document) pairs among them."""
    first: datetime
    last: datetime
    """When the earliest and the latest of them were dead-lettered."""

    def to_json(self, by: str) -> dict[str, Any]:
        return {
            by: self.key,
            "count": self.count,
            "replayed": self.replayed,
            "documents": self.documents,
            "first": self.first.isoformat(),
            "last": self.last.isoformat(),
        }


def group_dead_letters(records: Sequence[DeadLetterRecord], by: str) -> list[DeadLetterGroup]:
    """Counts per ``by`` (a key of :data:`GROUPS`), largest first, then by key."""
    key = GROUPS[by]
    members_of: dict[str, list[DeadLetterRecord]] = {}
    for record in records:
        members_of.setdefault(key(record), []).append(record)
    groups = []
    for name, members in sorted(members_of.items(), key=lambda item: (-len(item[1]), item[0])):
        times = [m.dead_lettered_at for m in members]
        groups.append(
            DeadLetterGroup(
                key=name,
                count=len(members),
                replayed=sum(1 for m in members if m.replayed_at is not None),
                documents=len({(m.batch_id, m.doc_id) for m in members}),
                first=min(times),
                last=max(times),
            )
        )
    return groups


def list_json(
    records: Sequence[DeadLetterRecord], *, total: int, selection: DeadLetterFilter
) -> dict[str, Any]:
    """A listing as JSON-ready data: the rows, without bodies or tracebacks."""
    return {
        "total": total,
        "filters": selection.describe(),
        "dead_letters": [
            {
                "id": record.id,
                **record.model_dump(
                    mode="json", exclude={"body", "traceback", "properties", "error_message"}
                ),
                "error": error_line(record),
            }
            for record in records
        ],
    }


def group_json(
    records: Sequence[DeadLetterRecord], by: str, *, selection: DeadLetterFilter
) -> dict[str, Any]:
    """The counts of :func:`group_dead_letters` as JSON-ready data."""
    return {
        "total": len(records),
        "by": by,
        "filters": selection.describe(),
        "groups": [group.to_json(by) for group in group_dead_letters(records, by)],
    }


def body_summary(body: bytes) -> str:
    """A dead letter's body in one line: its size and whether it is an envelope."""
    try:
        envelope = Envelope.from_bytes(body)
    except InvalidEnvelope as exc:
        head = body[:200].decode("utf-8", "replace")
        return f"{len(body)} bytes, not an envelope ({exc.reason}): {head!r}"
    how = "claim-check" if envelope.claim_check else "inline"
    return f"{len(body)} bytes, envelope (content {how}, generation {envelope.generation})"


@dataclass(frozen=True)
class DeadLetterDetail:
    """Everything about one dead letter: the record, its document and its LLM calls."""

    record: DeadLetterRecord
    document: Envelope | None = None
    """The document it carried, as published (None: not in the store)."""
    text: str | None = None
    """The document's text (loaded when claim-checked), or why it could not be."""
    calls: list[LLMCallRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record (its body summarised), the document, its text, its LLM calls."""
        record, document = self.record, self.document
        return {
            "dead_letter": {
                "id": record.id,
                **record.model_dump(mode="json", exclude={"body"}),
                "body": body_summary(record.body),
            },
            "document": document.model_dump(mode="json", exclude={"content"}) if document else None,
            "text": self.text,
            "llm_calls": [call.model_dump(mode="json") for call in self.calls],
        }


async def show_dead_letter(store: Store, record_id: str) -> DeadLetterDetail:
    """One dead letter in full; raises :class:`~docbus.ops.NotFound` for an unknown id."""
    record = await store.get_dead_letter(record_id)
    if record is None:
        raise NotFound(
            f"no dead letter {record_id!r}: ids look like subscription@message_id "
            "(see `docbus dlq list`)"
        )
    if record.batch_id is None or record.doc_id is None:
        return DeadLetterDetail(record)
    document = await store.get_document(record.batch_id, record.doc_id)
    calls = await store.llm_calls(record.batch_id, doc_id=record.doc_id)
    text = None
    if document is not None:
        text = document.content
        if text is None and document.claim_check is not None:
            try:
                text = await store.load_payload(document.claim_check)
            except DocbusError as exc:
                text = f"(claim-checked content unavailable: {exc})"
    return DeadLetterDetail(record, document, text, calls)
