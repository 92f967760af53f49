"""Result versions side by side: what changed between two, and withdrawing a single one.

:func:`diff_outputs` compares two result outputs field by field — nested objects and lists by
path (``operational.score``, ``entities[2].name``) — into :class:`FieldChange` rows (added,
removed, changed), a pure function a reader can follow without reading two JSON documents.
:func:`plan_version_rollback` plans withdrawing one version of one document and handler, the
smallest rollback there is: the same :class:`~docbus.ops.rollback.RollbackPlan` that
:func:`~docbus.ops.rollback.carry_out` carries out and ``docbus rollback --undo`` undoes.
Neighbours: :mod:`docbus.ops.results` (the versions), :mod:`docbus.ops.rollback` (runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from docbus.ops._not_found import NotFound
from docbus.ops.rollback import RollbackPlan, Target, preview
from docbus.store import Store

__all__ = ["FieldChange", "diff_outputs", "plan_version_rollback"]

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    """One field that differs between two outputs."""

    path: str
    kind: Literal["added", "removed", "changed"]
    before: Any = None
    after: Any = None


def diff_outputs(before: Any, after: Any) -> list[FieldChange]:
    """The fields that differ from ``before`` to ``after``, by path, in document order."""
    changes: list[FieldChange] = []
    _walk("", before, after, changes)
    return changes


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(path: str, before: Any, after: Any, into: list[FieldChange]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            _walk(_join(path, str(key)), before.get(key, _MISSING), after.get(key, _MISSING), into)
        return
    if isinstance(before, list) and isinstance(after, list) and before != after:
        for index in range(max(len(before), len(after))):
            old = before[index] if index < len(before) else _MISSING
            new = after[index] if index < len(after) else _MISSING
            _walk(f"{path}[{index}]", old, new, into)
        return
    if before is _MISSING:
        into.append(FieldChange(path or "(output)", "added", after=after))
    elif after is _MISSING:
        into.append(FieldChange(path or "(output)", "removed", before=before))
    elif before != after or type(before) is not type(after):
        into.append(FieldChange(path or "(output)", "changed", before, after))


async def plan_version_rollback(
    store: Store, doc_id: str, handler: str, version: int
) -> RollbackPlan:
    """Withdrawing version ``version`` of ``doc_id``'s ``handler`` result, and what becomes
    current after; raises :class:`~docbus.ops.NotFound` for an unknown version. A version
    rolled back already makes an empty plan (with a note)."""
    versions = await store.result_versions(doc_id=doc_id, handler=handler)
    chosen = [record for record in versions if record.version == version]
    if not chosen:
        raise NotFound(f"document {doc_id!r} has no version {version} of {handler}")
    target = Target(f"version {version} of {handler} for document {doc_id}")
    if chosen[0].rolled_back:
        note = f"version {version} is rolled back already (by {chosen[0].rolled_back_by})"
        return RollbackPlan(target, handler, [], note)
    return RollbackPlan(target, handler, preview(chosen, versions))
