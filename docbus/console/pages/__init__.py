"""The console's pages, one module each: batches (and one batch), dead letters (and their
replay), a document's lineage (and rolling a version back), results (aggregated, exported),
workers (from their heartbeats).

Each module offers ``routes()``; :func:`routes` gathers them for :func:`docbus.console.app.
create_app`. A page reads an operator query of :mod:`docbus.ops` and renders a template.
"""

from __future__ import annotations

import typing as _typing

from docbus.console.pages import batches, dead_letters, documents, results, workers

if _typing.TYPE_CHECKING:
    from starlette.routing import Route

__all__ = ["routes"]


def routes() -> list[Route]:
    return [
        *batches.routes(),
        *dead_letters.routes(),
        *documents.routes(),
        *results.routes(),
        *workers.routes(),
    ]
