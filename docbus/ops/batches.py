"""Batches: which batch records an operator query is about.

:func:`find_batches` reads the records of the batches named (each must exist:
:class:`~docbus.ops.NotFound` otherwise) or of the most recent ones. :mod:`docbus.ops.status`
and :mod:`docbus.ops.report` build on it; the records are :class:`~docbus.records.BatchRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence

from docbus.ops._not_found import NotFound
from docbus.records import BatchRecord
from docbus.store import Store

__all__ = ["find_batches", "no_batch"]


def no_batch(batch_id: str) -> NotFound:
    """The error for a batch the store does not know."""
    return NotFound(f"no batch {batch_id!r} in the store")


async def find_batches(
    store: Store, batch_ids: Sequence[str] | None = None, *, limit: int = 10
) -> list[BatchRecord]:
    """The records of ``batch_ids`` in that order, or the ``limit`` most recent ones (newest
    first) when none are named; raises :class:`~docbus.ops.NotFound` for an unknown batch."""
    if not batch_ids:
        return await store.list_batches(limit=limit)
    records = []
    for batch_id in batch_ids:
        record = await store.get_batch(batch_id)
        if record is None:
            raise no_batch(batch_id)
        records.append(record)
    return records
