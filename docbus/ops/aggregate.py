"""Aggregates of a handler's current results: grouped by a field, counted and averaged, and
exported as rows for the tools analysts already use.

:func:`flatten` turns one result output into a flat row (nested objects by dotted path,
``operational.score``; lists as JSON text); :func:`aggregate` groups rows by one field
(``country``, ``region``...) and gives per group its count and the mean of every numeric field
(booleans are not numbers here), largest group first: :class:`Aggregation`. :func:`current_rows`
streams a handler's current results (optionally of one batch) as export rows — ``doc_id``,
``batch_id``, ``version`` then the flattened output (its own fields of those names as
``output.doc_id`` …) — and :func:`csv_lines` renders them as CSV
lines under one header. Pure except :func:`current_rows`. Neighbours: the console's results
page draws the table and the bar chart, ``Store.iter_current_results`` reads the versions.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from docbus.store import Store

__all__ = [
    "EXPORT_PREFIX",
    "Aggregation",
    "GroupFigures",
    "aggregate",
    "csv_lines",
    "current_rows",
    "flatten",
]

EXPORT_PREFIX = ("doc_id", "batch_id", "version")
"""The columns of an export row before the output's own fields."""

NONE = "(none)"
"""The group of rows without the field (or with null)."""


def flatten(output: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """One output as a flat row: nested objects by dotted path, lists as JSON text. A name
    met twice (a key ``"a.b"`` beside ``{"a": {"b": …}}``) keeps both values: the later one
    as ``a.b#2``."""
    row: dict[str, Any] = {}
    _flatten_into(row, output, prefix)
    return row


def _flatten_into(row: dict[str, Any], output: Mapping[str, Any], prefix: str) -> None:
    for key, value in output.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten_into(row, value, f"{name}.")
            continue
        if isinstance(value, list):
            value = json.dumps(value, ensure_ascii=False, default=str)
        unique, count = name, 1
        while unique in row:
            count += 1
            unique = f"{name}#{count}"
        row[unique] = value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class GroupFigures:
    """One group: its key, how many rows, and the mean of each numeric field."""

    key: str
    count: int
    means: dict[str, float]


@dataclass(frozen=True)
class Aggregation:
    """Rows grouped by ``by``, largest group first (then by key)."""

    by: str
    total: int
    groups: list[GroupFigures]
    numeric: list[str]
    """Fields that are numbers wherever they are set (the averaged ones), sorted."""
    fields: list[str] = field(default_factory=list)
    """Every field seen, in first-seen order (what one can group by)."""


def aggregate(
    rows: Iterable[Mapping[str, Any]], by: str, *, ignore: Collection[str] = EXPORT_PREFIX
) -> Aggregation:
    """Count rows per value of ``by`` and average every numeric field per group: a field
    with a number in some row and nothing but numbers or nulls in the others (``ignore``: the
    export's own columns, never averaged)."""
    seen: dict[str, None] = {}
    not_numeric: set[str] = set()
    has_number: set[str] = set()
    members: dict[str, list[Mapping[str, Any]]] = {}
    total = 0
    for row in rows:
        total += 1
        for name, value in row.items():
            seen.setdefault(name)
            if _number(value) is not None:
                has_number.add(name)
            elif value is not None:
                not_numeric.add(name)
        value = row.get(by)
        key = NONE if value is None or value == "" else str(value)
        members.setdefault(key, []).append(row)
    numeric = sorted(name for name in has_number - not_numeric if name != by and name not in ignore)
    groups = []
    for key, rows_of in sorted(members.items(), key=lambda item: (-len(item[1]), item[0])):
        means: dict[str, float] = {}
        for name in numeric:
            values = [n for r in rows_of if (n := _number(r.get(name))) is not None]
            if values:
                means[name] = sum(values) / len(values)
        groups.append(GroupFigures(key, len(rows_of), means))
    return Aggregation(by, total, groups, numeric, list(seen))


async def current_rows(
    store: Store, handler: str, *, batch_id: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """A handler's current results as export rows, by document id, one read at a time."""
    async for record in store.iter_current_results(handler, batch_id=batch_id):
        row: dict[str, Any] = {
            "doc_id": record.doc_id,
            "batch_id": record.batch_id,
            "version": record.version,
        }
        for name, value in flatten(record.output).items():
            # an output's own doc_id or version does not overwrite the record's
            row[f"output.{name}" if name in row else name] = value
        yield row


def csv_lines(rows: Sequence[Mapping[str, Any]]) -> Iterable[str]:
    """The rows as CSV text, one line at a time, under a header of every field seen."""
    header: dict[str, None] = dict.fromkeys(EXPORT_PREFIX)
    for row in rows:
        header.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()
