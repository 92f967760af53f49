"""Results: a document's result versions — every one (history), or the one asked for.

Every time a handler finishes a document (a first delivery, a replay, a batch replay under a new
handler version) :meth:`docbus.store.Store.write_result` keeps a new version; exactly one that is
not rolled back is current. :func:`result_history` reads them all, per handler, oldest first, with
the run that wrote each (a batch's publication or a replay), its replay generation, handler version
and batch; :func:`result_state` says which is current, rolled back (:mod:`docbus.ops.rollback`) or
superseded. :func:`choose_result` picks the current version of one handler (or the version asked
for) and raises :class:`~docbus.ops.NotFound`, saying what to ask instead, when there is none.
Neighbours: :mod:`docbus.cli.results` draws them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docbus.ops._not_found import NameOne, NotFound
from docbus.records import ResultRecord
from docbus.store import Store

__all__ = ["choose_result", "result_history", "result_json", "result_state"]


def result_state(record: ResultRecord) -> str:
    """``current``, ``rolled back``, or empty for a version a later one superseded."""
    return "current" if record.current else "rolled back" if record.rolled_back else ""


def result_json(record: ResultRecord) -> dict[str, Any]:
    """A version as JSON-ready data, with its :func:`result_state` (``superseded`` when empty)."""
    return {**record.model_dump(mode="json"), "state": result_state(record) or "superseded"}


async def result_history(
    store: Store, doc_id: str, *, handler: str | None = None, batch_id: str | None = None
) -> list[ResultRecord]:
    """Every result version of a document (of one handler, of one batch), by handler and
    version; raises :class:`~docbus.ops.NotFound` when there is none."""
    versions = await store.result_versions(doc_id=doc_id, handler=handler, batch_id=batch_id)
    if not versions:
        raise NotFound(f"no results for document {doc_id!r}")
    return versions


def choose_result(
    doc_id: str,
    versions: Sequence[ResultRecord],
    *,
    handler: str | None = None,
    version: int | None = None,
) -> ResultRecord:
    """The current version among a document's ``versions`` (read for ``handler``, if named), or
    version number ``version``; raises :class:`~docbus.ops.NotFound` when there is none, or
    when several handlers wrote results and none is named."""
    handlers = sorted({record.handler for record in versions})
    if not versions:
        whose = f" of handler {handler!r}" if handler else ""
        raise NotFound(f"no results{whose} for document {doc_id!r}")
    if len(handlers) > 1:
        raise NameOne(
            f"document {doc_id!r} has results of {len(handlers)} handlers "
            f"({', '.join(handlers)}): name one with --handler"
        )
    if version is not None:
        chosen = [record for record in versions if record.version == version]
        if not chosen:
            numbers = ", ".join(str(record.version) for record in versions)
            raise NotFound(f"document {doc_id!r} has no version {version} (versions: {numbers})")
        return chosen[0]
    chosen = [record for record in versions if record.current]
    if not chosen:
        raise NotFound(
            f"document {doc_id!r} has no current result of {handlers[0]} (every version "
            "is rolled back): see `docbus results history`, or --version N"
        )
    return chosen[0]
