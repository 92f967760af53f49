"""Charts as geometry: what the console's server-side SVG draws, computed as plain data.

:func:`progress_segments` splits a bar of a given width among the parts of a whole (done,
retrying, dead-lettered, parked, pending); :func:`bar_chart` lays out horizontal bars for
labelled values (the results page's aggregation); :func:`line_chart` turns a series into the
points of a polyline (the batch page's throughput). The templates draw these numbers into SVG
elements — text goes through the template's escaping, never into markup by hand. Pure
functions; no asset is fetched from anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Bar", "Line", "Segment", "bar_chart", "line_chart", "progress_segments"]


@dataclass(frozen=True)
class Segment:
    """One part of a progress bar."""

    name: str
    count: int
    x: float
    width: float


def progress_segments(
    parts: Sequence[tuple[str, int]], total: int, width: float = 300.0
) -> list[Segment]:
    """The parts (name, count) of ``total`` as consecutive segments of a ``width``-wide bar;
    parts of zero are left out, and the bar is never wider than ``width``."""
    segments = []
    x = 0.0
    whole = max(total, sum(count for _, count in parts), 1)
    for name, count in parts:
        if count <= 0:
            continue
        share = width * count / whole
        segments.append(Segment(name, count, round(x, 2), round(share, 2)))
        x += share
    return segments


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: its label, value, and box."""

    label: str
    value: float
    y: float
    width: float


def bar_chart(
    rows: Sequence[tuple[str, float]], width: float = 400.0, bar_height: float = 18.0
) -> tuple[list[Bar], float]:
    """Bars for ``rows`` (label, value ≥ 0) scaled to the largest, and the chart's height."""
    top = max((value for _, value in rows), default=0.0)
    bars = [
        Bar(label, value, index * (bar_height + 6), width * value / top if top > 0 else 0.0)
        for index, (label, value) in enumerate(rows)
    ]
    return bars, len(rows) * (bar_height + 6)


@dataclass(frozen=True)
class Line:
    """A polyline in a ``width`` by ``height`` box, and the value its top stands for."""

    points: str
    top: float
    width: float
    height: float


def line_chart(values: Sequence[float], width: float = 600.0, height: float = 120.0) -> Line:
    """The points of ``values`` spread evenly across ``width``, scaled so the largest touches
    the top (a flat line at the bottom when all are 0)."""
    top = max(values, default=0.0)
    if not values:
        return Line("", 0.0, width, height)
    step = width / (len(values) - 1) if len(values) > 1 else 0.0
    points = " ".join(
        f"{index * step:.1f},{height - (height * value / top if top > 0 else 0.0):.1f}"
        for index, value in enumerate(values)
    )
    return Line(points, top, width, height)
