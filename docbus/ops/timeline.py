"""A batch's throughput over time: documents finished per interval, from when they finished.

:func:`throughput_series` is pure: given the times at which results and dead letters were
written (``Store.finish_times``) it counts them into ``buckets`` equal intervals from the first
to the last and returns :class:`Interval` rows with their rate per second — what the console's
throughput chart draws. :func:`batch_timeline` reads the times. Neighbours:
:mod:`docbus.ops.status` (``throughput``: one rate for the whole batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from docbus.store import Store

__all__ = ["Interval", "batch_timeline", "throughput_series"]


@dataclass(frozen=True)
class Interval:
    """One interval of a throughput series."""

    start: datetime
    seconds: float
    finished: int

    @property
    def per_second(self) -> float:
        return self.finished / self.seconds if self.seconds > 0 else 0.0


def throughput_series(times: Sequence[datetime], buckets: int = 30) -> list[Interval]:
    """``times`` counted into ``buckets`` equal intervals from the first to the last (one
    interval when they are all at once; none when there are none)."""
    if not times:
        return []
    ordered = sorted(times)
    start, end = ordered[0], ordered[-1]
    span = (end - start).total_seconds()
    if span <= 0:
        return [Interval(start, 0.0, len(ordered))]
    width = span / buckets
    counts = [0] * buckets
    for moment in ordered:
        index = min(buckets - 1, int((moment - start).total_seconds() / width))
        counts[index] += 1
    return [
        Interval(start + (end - start) * (index / buckets), width, count)
        for index, count in enumerate(counts)
    ]


async def batch_timeline(store: Store, batch_id: str, buckets: int = 30) -> list[Interval]:
    """The batch's throughput series (results and dead letters written per interval)."""
    return throughput_series(await store.finish_times(batch_id), buckets)
