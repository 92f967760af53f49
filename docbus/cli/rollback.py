"""``docbus rollback``: withdraw the result versions exactly one run wrote, and undo that.

Every result version names the run that wrote it (``run_id``): a batch's publication is run ``B``
(its batch id), a replay is its replay id (``docbus replay`` prints it, ``replay-...``).
:func:`~docbus.ops.rollback.plan_rollback` finds the versions of one run — ``--batch B`` (B's
publication only; ``--with-replays`` adds every replay of B's documents) or ``--replay R`` —
optionally of one handler, and works out per document which version is current now and which will be
after (the highest-ranked version left, :func:`docbus.records.result_rank`), so ``--dry-run`` shows
exactly what a real run changes. :func:`~docbus.ops.rollback.carry_out` withdraws them, tagged with
the rollback's id, and keeps a :class:`~docbus.records.RollbackRecord` in ``rollbacks`` (written
first, as ``running``); every write is durable (:mod:`docbus.store`).
:func:`~docbus.ops.rollback.plan_undo` and the same :func:`~docbus.ops.rollback.carry_out` restore
exactly the versions one rollback withdrew (``--undo ROLLBACK_ID``), recorded as an undo.

A document is never left without a current version while it has one that is not withdrawn: the
current version is worked out from the versions left whenever it is read. A rollback of what is
rolled back already says "nothing to roll back" (exit 0) and keeps no record; an unknown batch,
replay or rollback is one line on stderr, exit 1, and no record. Versions a run writes after its
rollback (messages still in flight) are not withdrawn: roll a run back once it has finished. The
command asks for confirmation like ``docbus replay`` (:mod:`docbus.cli.confirm`; off a terminal:
``--yes``, which the undo command it prints carries); ``--json`` prints one JSON document instead
of tables (``"rollback": null`` when nothing was recorded). Neighbours: :mod:`docbus.cli.results`
shows the versions, :mod:`publisher.replay` names replay runs.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from rich.console import Console

from docbus.cli import print_json
from docbus.cli.arguments import non_empty
from docbus.cli.confirm import REFUSED, confirm, stdin_is_terminal
from docbus.cli.render import Table, make_console, untrusted
from docbus.ops.rollback import (
    RollbackPlan,
    carry_out,
    plan_rollback,
    plan_undo,
)
from docbus.records import ResultRecord
from docbus.settings import Settings
from docbus.store import Store

__all__ = [
    "EXIT_CODES",
    "add_arguments",
    "plan_table",
    "run",
]

EXIT_CODES = {
    1: "the batch, replay or rollback is unknown, or the rollback was not confirmed",
    2: "usage or configuration error, or no confirmation: stdin is not a terminal (pass --yes)",
}

TABLE_ROWS = 50
"""Documents a preview table shows at most (``--json`` lists all)."""


def plan_table(plan: RollbackPlan, title: str) -> Table:
    """One row per document and handler: what goes (or comes back), current now → after."""
    table = Table(title=title, title_justify="left")
    for name in ("document", "handler", "restores" if plan.undo else "withdraws"):
        table.add_column(name, no_wrap=True)
    table.add_column("current now", no_wrap=True)
    table.add_column("current after", no_wrap=True)
    for change in plan.changes[:TABLE_ROWS]:
        cells = (
            change.doc_id,
            change.handler,
            ", ".join(f"v{v.version}" for v in change.versions),
            _version(change.before),
            _version(change.after),
        )
        table.add_row(*(untrusted(cell) for cell in cells))  # ids as they are, never markup
    return table


def _version(record: ResultRecord | None) -> str:
    return "none" if record is None else f"v{record.version} ({record.run_id or record.batch_id})"


# -- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_argument_group("what to roll back (one of)")
    which.add_argument(
        "--batch", type=non_empty, metavar="ID", help="the publication of this batch"
    )
    which.add_argument(
        "--replay",
        type=non_empty,
        metavar="ID",
        help="one replay run (its id as docbus replay printed it)",
    )
    which.add_argument(
        "--undo",
        type=non_empty,
        metavar="ROLLBACK_ID",
        help="restore exactly what this rollback withdrew",
    )
    parser.add_argument(
        "--with-replays",
        action="store_true",
        help="with --batch: also every replay of the batch's documents",
    )
    parser.add_argument(
        "--handler", type=non_empty, metavar="NAME", help="only this handler's results"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would change, per document; change nothing",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document, no tables")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    # Generations are counted per document, so no value names one replay: say what replaces it.
    parser.add_argument("--generation", help=argparse.SUPPRESS)


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.generation is not None:
        return (
            "--generation is gone: generations are counted per document, so one value does not "
            "name one replay; roll back a replay with --replay REPLAY_ID (docbus replay prints it)"
        )
    given = [name for name in ("batch", "replay", "undo") if getattr(args, name) is not None]
    if len(given) != 1:
        return "name exactly one of --batch ID, --replay ID or --undo ROLLBACK_ID"
    if args.with_replays and args.batch is None:
        return "--with-replays applies to --batch only"
    if args.undo is not None and args.handler is not None:
        return "--undo restores everything its rollback withdrew: drop --handler"
    return None


def run(
    args: argparse.Namespace, *, console: Console | None = None, stdin: TextIO | None = None
) -> int:
    from docbus.cli import run_async, say_error  # failures: one line on stderr (the runner's)

    console = console or make_console()
    problem = _check_arguments(args)
    if problem is not None:
        say_error("rollback", problem)
        return REFUSED
    if not (args.yes or args.dry_run) and not stdin_is_terminal(stdin):
        say_error(
            "rollback",
            "refusing to roll back without confirmation: stdin is not a terminal. Pass --yes "
            "to roll back, or --dry-run to see what would change.",
        )
        return REFUSED
    return run_async(lambda settings: _rollback(settings, args, console, stdin))


async def _rollback(
    settings: Settings, args: argparse.Namespace, console: Console, stdin: TextIO | None
) -> int:
    # With --json, stdout holds the one JSON document: questions and notes go to stderr.
    talk = make_console(stderr=True) if args.json else console
    async with Store.from_settings(settings) as store:
        if args.undo is not None:
            plan = await plan_undo(store, args.undo)
        else:
            plan = await plan_rollback(
                store,
                batch_id=args.batch,
                replay_id=args.replay,
                with_replays=args.with_replays,
                handler=args.handler,
            )
        verb = "restore" if plan.undo else "withdraw"
        if args.dry_run or not plan.changes:
            # a rollback that withdraws nothing (an undo that restores nothing) changes
            # nothing: it is not worth a record, nor an id to undo
            return _show_plan(plan, args, console, verb)
        if not args.yes and plan.changes:
            talk.print(plan_table(plan, f"rollback of {plan.target.description}"))
            _more(plan, talk)
            question = (
                f"{verb} {plan.versions} result version(s) of {plan.documents} document(s) "
                f"({plan.target.description})?"
            )
            if not confirm(question, console=talk, stdin=stdin):
                talk.print("not confirmed: nothing was changed", markup=False)
                return 1
        record = await carry_out(store, plan)
    if args.json:
        print_json(
            console,
            {"dry_run": False, **plan.to_json(), "rollback": record.model_dump(mode="json")},
        )
        return 0
    what = "restored" if plan.undo else "rolled back"
    table = Table(
        title=f"{'undo' if plan.undo else 'rollback'} of {plan.target.description}",
        show_header=False,
        title_justify="left",
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row(f"result versions {what}", str(record.versions))
    table.add_row("documents touched", str(record.documents))
    table.add_row("recorded as", record.id)
    console.print(table)
    if plan.note:
        _say(console, plan.note)
    if record.versions == 0:  # another rollback withdrew them since the plan was made
        _say(console, _nothing(plan))
    elif not plan.undo:
        # as it runs: without a terminal, a rollback (or undo) not confirmed is refused
        _say(console, f"undo with: docbus rollback --undo {record.id} --yes")
    return 0


def _nothing(plan: RollbackPlan) -> str:
    if plan.undo:
        return "nothing to restore"
    return f"nothing to roll back: {plan.target.description} has no result version left to withdraw"


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _show_plan(plan: RollbackPlan, args: argparse.Namespace, console: Console, verb: str) -> int:
    if args.json:
        print_json(console, {"dry_run": bool(args.dry_run), **plan.to_json(), "rollback": None})
        return 0
    if plan.changes:
        title = (
            f"dry run: would {verb} {plan.versions} result version(s) of {plan.documents} "
            f"document(s) ({plan.target.description})"
        )
        console.print(plan_table(plan, title))
        _more(plan, console)
    if plan.note:
        _say(console, plan.note)
    if not plan.changes:
        _say(console, _nothing(plan))
    if args.dry_run:
        _say(console, "dry run: nothing was changed")
    return 0


def _more(plan: RollbackPlan, console: Console) -> None:
    hidden = len(plan.changes) - TABLE_ROWS
    if hidden > 0:
        console.print(f"... and {hidden} more (--json lists all)", markup=False)
