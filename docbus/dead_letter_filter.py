"""Dead-letter filter options: which dead letters an operator means, for `dlq list` and `replay`.

:func:`add_filter_arguments` and :func:`filter_from_args` give both commands the same options
for a :class:`docbus.store.DeadLetterFilter` — batch, reason, handler, topic, subscription,
document, a time window on ``dead_lettered_at`` and whether it was replayed already;
:func:`parse_time` reads ``--since``/``--until`` as ISO 8601 or as an age (``30m``, ``2h``,
``7d``). Neighbours: :mod:`subscriber.dlq_cli` lists, :mod:`publisher.replay` replays.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

from docbus.store import DeadLetterFilter

__all__ = ["DeadLetterFilter", "add_filter_arguments", "filter_from_args", "parse_time"]

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (naive means UTC) or an age such as ``90m``/``2d``."""
    value = text.strip()
    age = _AGE.match(value.lower())
    if age is not None:
        amount, unit = float(age.group(1)), _UNITS[age.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2025-01-31T12:00) nor an age (30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _time_argument(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The dead-letter selection options shared by ``docbus dlq list`` and ``docbus replay``."""
    group = parser.add_argument_group("dead-letter filters (all given must match)")
    group.add_argument("--batch", metavar="ID", help="dead letters of this batch")
    group.add_argument("--reason", help="dead-letter reason, e.g. MaxDeliveryCountExceeded")
    group.add_argument("--handler", metavar="NAME", help="dead letters of this handler")
    group.add_argument("--topic", help="dead letters of this topic")
    group.add_argument("--subscription", metavar="NAME", help="dead letters of this subscription")
    group.add_argument("--doc", metavar="DOC_ID", help="dead letters of this document")
    group.add_argument(
        "--since",
        type=_time_argument,
        metavar="TIME",
        help="dead-lettered at or after TIME (ISO 8601, or an age: 30m, 2h, 7d)",
    )
    group.add_argument(
        "--until", type=_time_argument, metavar="TIME", help="dead-lettered before TIME"
    )
    replayed = group.add_mutually_exclusive_group()
    replayed.add_argument(
        "--replayed",
        dest="replayed",
        action="store_const",
        const=True,
        help="only dead letters replayed already",
    )
    replayed.add_argument(
        "--not-replayed",
        dest="replayed",
        action="store_const",
        const=False,
        help="only dead letters never replayed",
    )


def filter_from_args(args: argparse.Namespace) -> DeadLetterFilter:
    """The :class:`DeadLetterFilter` of parsed :func:`add_filter_arguments` options."""
    return DeadLetterFilter(
        batch_id=getattr(args, "batch", None),
        reason=getattr(args, "reason", None),
        handler=getattr(args, "handler", None),
        topic=getattr(args, "topic", None),
        subscription=getattr(args, "subscription", None),
        doc_id=getattr(args, "doc", None),
        since=getattr(args, "since", None),
        until=getattr(args, "until", None),
        replayed=getattr(args, "replayed", None),
    )
