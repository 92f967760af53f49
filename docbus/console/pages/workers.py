"""The workers page: the worker processes that beat recently, and what they left parked.

Each running worker writes a heartbeat (:mod:`subscriber.heartbeat`, read with
``Store.heartbeats``): host, pid, handlers, concurrency, messages in flight, whether its circuit
breaker paused consumption, and when it last beat — a running one silent for three intervals
is shown as silent (it died). Parked messages come from :func:`docbus.ops.parked_overview`,
per subscription, handler and reason, as ``docbus parked list`` counts them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from docbus.console.app import ConsoleState, render
from docbus.ops.parked import ParkedSelection, parked_overview

__all__ = ["routes"]


async def workers_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    beats = await state.store.heartbeats()
    overview = await parked_overview(state.store, ParkedSelection())
    now = datetime.now(UTC)
    rows = [
        {"beat": beat, "status": beat.status(now), "age": (now - beat.beat_at).total_seconds()}
        for beat in beats
    ]
    return render(request, "workers.html", rows=rows, parked=overview.groups)


def routes() -> list[Route]:
    return [Route("/workers", workers_page)]
