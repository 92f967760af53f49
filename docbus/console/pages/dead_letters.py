"""The dead-letters page, and replaying what it shows.

Dead letters: the selection of ``docbus dlq list`` (batch, reason, handler, topic,
subscription, document, since, until, replayed) as a GET form, the dead letters it selects
grouped by a :data:`docbus.ops.GROUPS` key — reason, LLM failure type
(:func:`docbus.ops.failures.failure_type`), handler, batch, error, subscription — and listed,
each with a box to tick. Replay: a group (as a filter) or the ticked dead letters go to a
preview — :func:`publisher.replay_preview.preview_dead_letter_replay`, exactly the messages
``docbus replay --dry-run`` lists, with an estimated cost — and only a POST with the action
token and CSRF token sends it (:func:`publisher.replay.send_replay`): planned again at that
moment and narrowed to the dead letters the preview listed (one that arrived since is not
sent unseen; one replayed meanwhile is skipped), and shows the run's record.
"""

from __future__ import annotations

import shlex
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from docbus.console.app import ConsoleState, guard_action, render
from docbus.ops.dead_letters import GROUPS, error_line, group_dead_letters, parse_time
from docbus.ops.failures import FAILURE_TYPES, failure_type
from docbus.store import DeadLetterFilter
from publisher.replay_preview import preview_dead_letter_replay

__all__ = ["routes"]

FILTERS = ("batch", "reason", "handler", "topic", "subscription", "doc", "since", "until")
"""Query parameters of the selection, named as ``docbus dlq list`` names its options."""

GROUP_FILTER = {"reason": "reason", "handler": "handler", "batch": "batch"}
"""Groupings whose key is itself a filter: their groups can be replayed as a selection."""

LIST_LIMIT = 500


def selection_params(source: Any) -> dict[str, str]:
    """The selection's parameters present in ``source`` (query params or a form)."""
    found = {name: str(source.get(name) or "").strip() for name in (*FILTERS, "replayed")}
    return {name: value for name, value in found.items() if value}


def to_filter(params: dict[str, str]) -> DeadLetterFilter:
    """The :class:`~docbus.store.DeadLetterFilter` of the page's parameters."""
    replayed = {"yes": True, "no": False}.get(params.get("replayed", ""))
    return DeadLetterFilter(
        batch_id=params.get("batch"),
        reason=params.get("reason"),
        handler=params.get("handler"),
        topic=params.get("topic"),
        subscription=params.get("subscription"),
        doc_id=params.get("doc"),
        since=parse_time(params["since"]) if "since" in params else None,
        until=parse_time(params["until"]) if "until" in params else None,
        replayed=replayed,
    )


def dry_run_command(params: dict[str, str]) -> str:
    """The ``docbus replay`` command that lists the same plan."""
    words = ["docbus", "replay"]
    for name in FILTERS:
        if name in params:
            words += [f"--{name}", params[name]]
    if params.get("replayed") == "no":
        words.append("--not-replayed")
    return " ".join(shlex.quote(word) for word in [*words, "--dry-run"])


async def dead_letters_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    params = selection_params(request.query_params)
    by = request.query_params.get("group_by") or "reason"
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}: use one of {', '.join(GROUPS)}")
    records = await state.store.dead_letters(to_filter(params))
    failure = request.query_params.get("failure")
    if failure:
        records = [record for record in records if failure_type(record) == failure]
    groups = group_dead_letters(records, by)
    return render(
        request,
        "dead_letters.html",
        params=params,
        by=by,
        group_keys=list(GROUPS),
        group_filter=GROUP_FILTER.get(by),
        groups=groups,
        failure=failure or "",
        failure_types=FAILURE_TYPES,
        records=records[:LIST_LIMIT],
        total=len(records),
        error_line=error_line,
        failure_type=failure_type,
    )


async def replay_preview_page(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    params = selection_params(request.query_params)
    ids = [str(value) for value in request.query_params.getlist("id")]
    preview = await preview_dead_letter_replay(state.store, to_filter(params), ids=ids)
    return render(
        request,
        "replay_preview.html",
        params=params,
        ids=ids,
        preview=preview,
        plan=preview.plan.to_json(),
        command=None if ids else dry_run_command(params),
    )


async def replay_send(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    fields, refused = await guard_action(request)
    if refused is not None:
        return refused
    form = await request.form()
    params = selection_params(fields)
    ids = [str(value) for value in form.getlist("id")]
    preview = await preview_dead_letter_replay(state.store, to_filter(params), ids=ids)
    from docbus.servicebus import servicebus_client
    from publisher.replay import send_replay

    report = None
    if preview.plan.messages:
        async with servicebus_client(state.config.settings) as client:
            report = await send_replay(
                preview.plan, store=state.store, sender_factory=client.get_topic_sender
            )
    return render(
        request,
        "replay_done.html",
        plan=preview.plan.to_json(),
        record=report.record if report is not None else None,
    )


def routes() -> list[Route]:
    return [
        Route("/dead-letters", dead_letters_page),
        Route("/dead-letters/replay", replay_preview_page, methods=["GET"]),
        Route("/dead-letters/replay", replay_send, methods=["POST"]),
    ]
