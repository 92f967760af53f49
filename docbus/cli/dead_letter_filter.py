"""Dead-letter filter options: which dead letters an operator means, for `dlq list` and `replay`.

:func:`add_filter_arguments` and :func:`filter_from_args` give both commands the same options
for a :class:`docbus.store.DeadLetterFilter` — batch, reason, handler, topic, subscription,
document, a time window on ``dead_lettered_at`` and whether it was replayed already;
:func:`docbus.ops.dead_letters.parse_time` reads ``--since``/``--until`` as ISO 8601 or as an
age (``30m``, ``2h``, ``7d``). Neighbours: :mod:`docbus.cli.dlq` lists,
:mod:`publisher.replay` replays.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from docbus.ops.dead_letters import parse_time
from docbus.store import DeadLetterFilter

__all__ = ["add_filter_arguments", "filter_from_args"]


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
