"""``docbus replay``: send dead letters, or a whole batch, back to the subscription that failed.

Two modes, one command:

- **dead letters** (default): the dead letters the filters select (the options of ``docbus dlq
  list``: ``--batch``, ``--reason``, ``--handler``, ``--topic``, ``--subscription``, ``--doc``,
  ``--since``, ``--until``), each sent once to its own subscription; ``--again`` includes
  dead letters replayed before.
- **batch** (``--only failed|missing|all`` with ``--batch``): the batch's documents from the
  ``documents`` store. With ``--handler H`` the messages go to H's subscription only — taken
  from ``--subscription``, else from ``--handlers MODULE`` (the module ``docbus worker`` runs),
  else from H's dead letters; without ``--handler`` they are broadcast to every subscription.

The replayed documents run in their batch's LLM mode (kept on the batch record since ``docbus
publish --llm-mode``); ``--llm-mode live|batch`` sets it on the plan's batches before sending
(batch mode is refused, exit 2, for a topic with an ordered handler: the topology's session
subscriptions, and the handlers of ``--handlers MODULE``).

``--dry-run`` prints exactly what would be sent and sends nothing. A real run asks for
confirmation on a terminal, and refuses (exit 2) when stdin is not one, unless ``--yes``.
``--rate`` caps messages per second; ``--limit`` the number of messages. ``--json`` prints one
JSON document (the plan, and the run's record) instead of tables; errors, questions and
progress go to stderr. Exit 0 when everything planned was sent (or nothing was to be), 1 when a
message failed to send or the run stopped (its record says ``partial`` or ``failed``), 2 for a
refused or impossible request. Library: :mod:`publisher.replay`.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from docbus.cli.arguments import positive_int, positive_number
from docbus.cli.confirm import REFUSED, confirm, stdin_is_terminal
from docbus.cli.dead_letter_filter import add_filter_arguments, filter_from_args
from docbus.cli.render import Table, make_console
from docbus.ops.batches import no_batch
from docbus.servicebus import servicebus_client
from docbus.settings import Settings
from docbus.store import Store
from docbus.text import one_line
from docbus.topology import Topology, TopologyError, load_topology
from publisher.llm_mode import LLM_MODES, batch_mode_refusal
from publisher.replay import (
    ONLY,
    ReplayError,
    ReplayPlan,
    ReplayReport,
    new_replay_id,
    plan_batch_replay,
    plan_dead_letter_replay,
    route_name,
    send_replay,
    subscription_of,
)
from publisher.sending import SendRetry

__all__ = [
    "EXIT_CODES",
    "add_arguments",
    "llm_modes",
    "modes_line",
    "plan_table",
    "problems_table",
    "report_table",
    "run",
    "skipped_table",
]

EXIT_CODES = {
    1: "a message failed to send or the run stopped (its record says partial or failed), or "
    "the replay was not confirmed",
    2: "usage or configuration error, a replay that cannot be planned as asked (or not in "
    "--llm-mode batch: an ordered handler), or no "
    "confirmation: stdin is not a terminal (pass --yes or --dry-run)",
}

_DEAD_LETTER_ONLY = ("reason", "topic", "doc", "since", "until", "replayed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_filter_arguments(parser)
    batch = parser.add_argument_group("batch replay")
    batch.add_argument(
        "--only",
        choices=ONLY,
        help="replay the documents of --batch instead of dead letters: those that failed in "
        "--handler, those it never finished, or all",
    )
    batch.add_argument(
        "--handlers",
        metavar="MODULE",
        help="handler module (as for `docbus worker`) to find --handler's subscription in",
    )
    sending = parser.add_argument_group("sending")
    sending.add_argument(
        "--dry-run", action="store_true", help="list what would be sent; send nothing"
    )
    sending.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="replay at most N dead letters (oldest first), or N documents of a batch",
    )
    sending.add_argument(
        "--rate", type=positive_number, metavar="N", help="at most N messages per second"
    )
    sending.add_argument(
        "--again", action="store_true", help="also replay dead letters replayed before"
    )
    sending.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    sending.add_argument(
        "--llm-mode",
        choices=LLM_MODES,
        help="run the replayed documents' LLM calls live or in batch mode, and keep that mode "
        "on their batches (default: each batch keeps the mode it was published with)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document, no tables")


def run(
    args: argparse.Namespace, *, console: Console | None = None, stdin: TextIO | None = None
) -> int:
    from docbus.cli import run_async, say_error  # failures: one line on stderr (the runner's)

    console = console or make_console()
    problem = _check_arguments(args)
    if problem is not None:
        say_error("replay", problem)
        return REFUSED
    interactive = stdin_is_terminal(stdin)
    if not (args.dry_run or args.yes or interactive):
        say_error(
            "replay",
            "refusing to send without confirmation: stdin is not a terminal. Pass --yes to "
            "replay, or --dry-run to see what would be sent.",
        )
        return REFUSED
    return run_async(lambda settings: _replay(settings, args, console, stdin))


def _check_arguments(args: argparse.Namespace) -> str | None:
    if args.only is None:
        if args.handlers is not None and getattr(args, "llm_mode", None) != "batch":
            return "--handlers applies to batch replays (--only) and to --llm-mode batch only"
        return None
    if args.batch is None:
        return "--only replays a batch: name it with --batch"
    given = [f"--{name}" for name in _DEAD_LETTER_ONLY if getattr(args, name, None) is not None]
    if given or args.again:
        extra = ", ".join(given + (["--again"] if args.again else []))
        return f"{extra} select dead letters and do not apply to a batch replay (--only)"
    return None


async def _plan(store: Store, args: argparse.Namespace) -> ReplayPlan:
    if args.only is None:
        return await plan_dead_letter_replay(
            store, filter_from_args(args), limit=args.limit or 0, again=args.again
        )
    subscription = args.subscription
    if args.handler is not None and subscription is None:
        subscription, _ = await subscription_of(store, args.handler, handlers_module=args.handlers)
    return await plan_batch_replay(
        store,
        args.batch,
        only=args.only,
        handler=args.handler,
        subscription=subscription,
        limit=args.limit or 0,
    )


async def _replay(
    settings: Settings, args: argparse.Namespace, console: Console, stdin: TextIO | None
) -> int:
    from docbus.cli import print_json, say_error

    # With --json, stdout holds the one JSON document: questions and notes go to stderr.
    talk = make_console(stderr=True) if args.json else console
    async with Store.from_settings(settings) as store:
        try:
            plan = await _plan(store, args)
            modes = await llm_modes(store, plan, args.llm_mode)
        except ReplayError as exc:
            say_error("replay", str(exc))
            return REFUSED
        if (
            args.batch is not None
            and not plan.messages
            and not plan.skipped
            and await store.get_batch(args.batch) is None
        ):
            say_error("replay", f"{no_batch(args.batch)}: nothing to replay (see `docbus status`)")
            return 1
        refusal = _llm_mode_refusal(plan, args)
        if refusal is not None:
            say_error("replay", f"{refusal}; nothing was sent")
            return REFUSED
        if args.dry_run or not plan.messages:
            if args.json:
                print_json(
                    console,
                    {
                        "dry_run": bool(args.dry_run),
                        **plan.to_json(),
                        "llm_modes": modes,
                        "replay": None,
                    },
                )
                return 0
            if args.dry_run:
                title = f"dry run: would send {len(plan.messages)} message(s)"
                console.print(plan_table(plan, title))
            if plan.skipped:
                console.print(skipped_table(plan))
            if plan.note:
                console.print(plan.note, markup=False, highlight=False, soft_wrap=True)
            if plan.messages:
                console.print(modes_line(modes), markup=False, highlight=False, soft_wrap=True)
            done = "dry run: nothing was sent" if args.dry_run else "nothing to replay"
            console.print(done, markup=False, highlight=False, soft_wrap=True)
            return 0
        if plan.note:
            talk.print(plan.note, markup=False, highlight=False, soft_wrap=True)
        talk.print(modes_line(modes), markup=False, highlight=False, soft_wrap=True)
        if not args.yes:
            talk.print(plan_table(plan))
            question = f"send {len(plan.messages)} message(s)?"
            if not confirm(question, console=talk, stdin=stdin):
                talk.print("not confirmed: nothing was sent", markup=False)
                return 1
        progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=make_console(stderr=True),
            transient=False,
        )
        async with servicebus_client(settings) as client:
            with progress:
                replay_id = new_replay_id()
                task = progress.add_task(f"replaying ({replay_id})", total=len(plan.messages))
                report = await send_replay(
                    plan, store=store, sender_factory=client.get_topic_sender,
                    rate=args.rate, replay_id=replay_id,
                    on_progress=lambda n: progress.advance(task, n),
                    retry=SendRetry.of(settings.publisher), llm_mode=args.llm_mode,
                )  # fmt: skip
        ok = not report.record.failed and report.record.status == "done"
        if args.json:
            print_json(
                console,
                {"dry_run": False, **plan.to_json(), "llm_modes": modes, **report.to_json()},
            )
            return 0 if ok else 1
        console.print(report_table(report))
        console.print(report.summary(), markup=False, highlight=False, soft_wrap=True)
        problems = problems_table(report)
        if problems is not None:
            console.print(problems)
        return 0 if ok else 1


def _llm_mode_refusal(plan: ReplayPlan, args: argparse.Namespace) -> str | None:
    """Why the plan cannot run in ``--llm-mode`` (one line), or None."""
    if args.llm_mode != "batch":
        return None
    from handlers.runtime import HandlerDiscoveryError, discover_handlers

    handlers = []
    if args.handlers is not None:
        try:
            handlers = [item.spec for item in discover_handlers(args.handlers)]
        except HandlerDiscoveryError as exc:
            return f"cannot read --handlers {args.handlers}: {exc}"
    try:
        topology: Topology | None = load_topology()
    except TopologyError:
        topology = None  # no topology file here: only --handlers can tell
    for topic in sorted({planned.envelope.topic for planned in plan.messages}):
        refusal = batch_mode_refusal(topic, "batch", topology=topology, handlers=handlers)
        if refusal is not None:
            return refusal.replace("publish it with", "replay it with")
    return None


async def llm_modes(store: Store, plan: ReplayPlan, override: str | None) -> dict[str, str]:
    """Batch id → the LLM mode its replayed documents run in (``default``: the handlers' or
    the workers' own). Raises :class:`ReplayError` when ``override`` is given for a batch that
    has no record to keep it on."""
    modes: dict[str, str] = {}
    for batch_id in sorted({planned.envelope.batch_id for planned in plan.messages}):
        record = await store.get_batch(batch_id)
        if override is not None and record is None:
            raise ReplayError(
                f"batch {batch_id} has no record to keep --llm-mode on: replay it without "
                "--llm-mode (its handlers' or the workers' default applies)"
            )
        modes[batch_id] = override or (record.llm_mode if record is not None else None) or "default"
    return modes


def modes_line(modes: dict[str, str]) -> str:
    """``LLM mode: batch`` when every batch agrees, else one ``batch=mode`` per batch."""
    if len(set(modes.values())) == 1:
        return f"LLM mode: {next(iter(modes.values()))}"
    return "LLM mode: " + ", ".join(f"{batch}={mode}" for batch, mode in modes.items())


def plan_table(plan: ReplayPlan, title: str | None = None) -> Table:
    """Every planned message, one row each: what it replays, and how it will be sent."""
    heading = "dead letter" if plan.kind == "dead-letters" else "document"
    title = title or f"replay plan: {len(plan.messages)} message(s)"
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column(heading, no_wrap=True)
    table.add_column("generation", justify="right")
    table.add_column("route")
    table.add_column("message id", no_wrap=True)
    for number, planned in enumerate(plan.messages, start=1):
        envelope = planned.envelope
        table.add_row(
            str(number),
            planned.key,
            str(envelope.generation),
            route_name(envelope),
            envelope.message_id,
        )
    return table


def skipped_table(plan: ReplayPlan) -> Table:
    """What a plan leaves out, with why."""
    table = Table(title=f"skipped: {len(plan.skipped)}", title_justify="left")
    table.add_column("dead letter" if plan.kind == "dead-letters" else "document")
    table.add_column("why")
    for key, reason in plan.skipped.items():
        table.add_row(key, one_line(reason, 100))
    return table


def report_table(report: ReplayReport) -> Table:
    """The closing summary: messages sent per topic and route, with their generations."""
    record = report.record
    table = Table(title=f"replayed: {record.count} message(s)", title_justify="left")
    for name in ("topic", "route", "sent", "generations"):
        table.add_column(name, justify="right" if name == "sent" else "left")
    groups: dict[tuple[str, str], list[int]] = {}
    for item in record.items:
        route = item.target_subscription or "* (broadcast)"
        groups.setdefault((item.topic, route), []).append(item.generation)
    for (topic, route), generations in sorted(groups.items()):
        low, high = min(generations), max(generations)
        span = str(low) if low == high else f"{low}-{high}"
        table.add_row(topic, route, str(len(generations)), span)
    return table


def problems_table(report: ReplayReport) -> Table | None:
    """What was skipped or failed to send, with why; None when everything went."""
    record = report.record
    if not record.skipped and not record.failed:
        return None
    table = Table(title="not replayed", title_justify="left")
    for name in ("dead letter" if record.kind == "dead-letters" else "document", "", "why"):
        table.add_column(name)
    for outcome, problems in (("skipped", record.skipped), ("failed", record.failed)):
        for key, reason in problems.items():
            table.add_row(key, outcome, one_line(reason, 100))
    return table
