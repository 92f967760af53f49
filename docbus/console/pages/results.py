"""The results page: a handler's current results grouped by a field, as a table and a bar
chart, and exported as CSV or JSONL.

:func:`docbus.ops.aggregate.current_rows` streams the rows, :func:`docbus.ops.aggregate.
aggregate` counts and averages them per group; the chart draws the count, or the mean of one
numeric field (``?value=``), per group (:func:`docbus.console.charts.bar_chart`). The exports
stream every current result (of one batch, if chosen) straight from the store's cursor.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from docbus.console.app import ConsoleState, render
from docbus.console.charts import Bar, bar_chart
from docbus.ops.aggregate import aggregate, csv_lines, current_rows

__all__ = ["routes"]


async def results_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    handlers = await state.store.result_handlers()
    handler = request.query_params.get("handler") or (handlers[0] if handlers else "")
    batch_id = request.query_params.get("batch") or None
    rows = [row async for row in current_rows(state.store, handler, batch_id=batch_id)]
    fields = [name for name in (rows[0] if rows else {}) if name not in ("doc_id", "version")]
    by = request.query_params.get("by") or _default_by(fields)
    figures = aggregate(rows, by) if by else None
    value = request.query_params.get("value") or "count"
    bars: list[Bar] = []
    height = 0.0
    if figures is not None:
        chart_rows = [
            (group.key, float(group.count) if value == "count" else group.means.get(value, 0.0))
            for group in figures.groups
        ]
        bars, height = bar_chart(chart_rows)
    return render(
        request,
        "results.html",
        handlers=handlers,
        handler=handler,
        batch_id=batch_id or "",
        by=by,
        value=value,
        figures=figures,
        bars=bars,
        height=height,
    )


def _default_by(fields: list[str]) -> str:
    for name in ("region", "country", "category", "batch_id"):
        if name in fields:
            return name
    return fields[0] if fields else ""


async def export(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    handler = request.query_params.get("handler") or ""
    batch_id = request.query_params.get("batch") or None
    kind = request.path_params["kind"]
    if kind not in ("csv", "jsonl"):
        raise ValueError(f"no export as {kind!r}: use export.csv or export.jsonl")
    name = f"{handler}{'-' + batch_id if batch_id else ''}.{kind}"
    headers = {"Content-Disposition": f'attachment; filename="{_safe(name)}"'}
    if kind == "jsonl":

        async def lines() -> AsyncIterator[str]:
            async for row in current_rows(state.store, handler, batch_id=batch_id):
                yield json.dumps(row, ensure_ascii=False, default=str) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers=headers)
    # CSV needs every column before the first row: the rows are read first.
    rows = [row async for row in current_rows(state.store, handler, batch_id=batch_id)]
    return StreamingResponse(iter(csv_lines(rows)), media_type="text/csv", headers=headers)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def routes() -> list[Route]:
    return [
        Route("/results", results_page),
        Route("/results/export.{kind:str}", export),
    ]
