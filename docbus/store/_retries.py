"""Retry notes: which documents a worker is retrying, for ``docbus status``.

:class:`RetriesMixin` keeps the ``retries`` collection: one note per (handler, message) that a
worker failed on and will try again, with the attempt, the error and when the next attempt is due
(:meth:`~RetriesMixin.note_retry`), read back per batch (:meth:`~RetriesMixin.retried`). A note is
a status hint, never a reason to lose a retry, so it is written with the server's default write
concern (nothing depends on it surviving a crash). Dead letters and results
(:mod:`docbus.store._dead_letters`, :mod:`docbus.store._results`) say when a retried document
finally ended.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from docbus.store._base import StoreBase
from docbus.store._errors import _translated

COLLECTION = "retries"


class RetriesMixin(StoreBase):
    """Notes of the deliveries a worker is retrying."""

    async def note_retry(
        self,
        *,
        handler: str,
        message_id: str,
        batch_id: str,
        doc_id: str,
        attempt: int,
        error: str,
        delay: float,
    ) -> None:
        """Note that ``handler`` failed on ``message_id`` and tries again in ``delay`` s."""
        with _translated(f"note the retry of {doc_id}"):
            await self._c(COLLECTION, durable=False).update_one(
                {"_id": f"{handler}@{message_id}"},
                {
                    "$set": {
                        "batch_id": batch_id,
                        "doc_id": doc_id,
                        "handler": handler,
                        "attempt": attempt,
                        "error": error,
                        "next_attempt_at": datetime.now(UTC) + timedelta(seconds=delay),
                    }
                },
                upsert=True,
            )

    async def retried(self, batch_id: str) -> dict[str, set[str]]:
        """Handler → the documents of a batch a worker noted a retry of."""
        found: dict[str, set[str]] = {}
        with _translated(f"read the retry notes of batch {batch_id}"):
            cursor = self._c(COLLECTION).find({"batch_id": batch_id}, {"handler": 1, "doc_id": 1})
            async for row in cursor:
                if isinstance(row.get("handler"), str) and row.get("doc_id") is not None:
                    found.setdefault(row["handler"], set()).add(str(row["doc_id"]))
        return found
