"""``docbus publish``: validate documents from files, JSONL or CSV, then send them as one batch.

The command reads the topology first (``--topology``, default ``infra/topology.toml``) and
refuses a topic it does not know or whose subscriptions would not take the messages; it then
scans every input (:func:`publisher.loaders.scan_documents`). Any invalid input — unreadable
file, invalid JSON, missing or empty text, non-UTF-8 bytes, duplicate id, a value JSON, MongoDB
or UTF-8 cannot carry — is listed with file:line and reason; without ``--skip-invalid`` nothing
is sent. Sending is :func:`publisher.publish.publish_documents`, which also refuses a
subscription missing on the broker and a batch id used before (``--resume`` sends only what
that batch is missing) and fails fast when the broker is unreachable. This module adds a
progress bar sized by the scan (advanced as the broker accepts each message batch, through the
publisher's sender seam), the skipped inputs in the closing summary and the batch record,
``--json`` (the summary as one JSON document on stdout, errors on stderr) and ``--budget`` (the
batch's own LLM budget, ``Store.set_batch_budget``, set before its first message is sent so no
worker spends on the batch unchecked). Exit codes are :data:`EXIT_CODES`. The store and Service
Bus come from :class:`~docbus.settings.Settings`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.servicebus import ServiceBusMessageBatch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from docbus.cli import arguments, brief
from docbus.cli.config import load_settings
from docbus.cli.render import Table, make_console, untrusted
from docbus.envelope import BATCH_ID_PATTERN, new_batch_id
from docbus.errors import ConfigurationError
from docbus.servicebus import MessagingError, servicebus_client, topic_senders
from docbus.settings import Settings
from docbus.store import Store, StoreError, StoreUnavailable
from docbus.topology import Topology, TopologyError, load_topology
from publisher.inputs import DocumentInput, InputProblem, InvalidInput
from publisher.llm_mode import LLM_MODES, HandlerLike, batch_mode_refusal
from publisher.loaders import LoaderOptions, finds_nothing, iter_documents, scan_documents
from publisher.preflight import PublishRefused, topic_receivers
from publisher.publish import MessageSender, PublishReport, SenderFactory, publish_documents

__all__ = ["add_arguments", "problems_table", "report_table", "run"]

PREVIEW_ROWS = 20
"""Documents listed one by one in a dry run's preview."""

NO_BROKER = (
    "no Service Bus configured: set DOCBUS_SERVICEBUS__CONNECTION_STRING (or "
    "DOCBUS_SERVICEBUS__NAMESPACE to sign in with Entra ID), or start the local stack with "
    "`docbus up` and export what it prints"
)
NO_STORE = (
    "set DOCBUS_MONGODB__URI (or MONGODB_URI) and DOCBUS_MONGODB__DATABASE, or start the local "
    "stack with `docbus up` and export what it prints"
)


EXIT_CODES = """\
exit codes:
  0  every document was sent (with --dry-run: every input is valid)
  1  something was skipped (invalid input, or --resume found a changed document), failed to
     send, or the publish was refused (topic or subscription unknown to the topology or
     missing on the broker, batch id already used); a refusal records and sends nothing
  2  usage or configuration error (bad batch id, a path that names no file, no broker
     configured, unreadable topology, --llm-mode batch for a topic with an ordered handler)
  3  Service Bus or MongoDB could not be reached: try again once it is available
  130 interrupted (Ctrl-C): the batch is incomplete; the same command with --batch-id ID
     --resume sends the rest
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXIT_CODES
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files, directories or globs to publish"
    )
    parser.add_argument("--topic", required=True, help="Service Bus topic to send to")
    parser.add_argument(
        "--batch-id", type=arguments.batch_id, help="batch id (default: a fresh time-sortable one)"
    )
    parser.add_argument(
        "--format",
        choices=["auto", "files", "jsonl", "csv"],
        default="auto",
        help="how to read the inputs (default: by file extension)",
    )
    parser.add_argument(
        "--id-field",
        help="JSON/CSV field holding each document's id (default: the SHA-256 of its text); "
        "for whole files (.txt, .md, --format files) 'path' or 'name' makes the file's path or "
        "name its id",
    )
    parser.add_argument(
        "--text-field", default="text", help="JSON/CSV field holding the text (default: text)"
    )
    parser.add_argument(
        "--session-key",
        help="field whose value becomes the session id (documents with one value run in order)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and show what would be sent; send nothing"
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="send the valid documents even if some inputs are invalid (they are listed)",
    )
    parser.add_argument(
        "--topology",
        type=Path,
        help="topology file the entities were deployed from (default: infra/topology.toml); "
        "a topic it does not know, or whose subscriptions are missing, is refused",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="publish into an existing batch: send only what it is missing (documents not yet "
        "in it, and recorded ones with no result or dead letter); changed documents are listed",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON document on stdout (errors go to stderr)",
    )
    parser.add_argument(
        "--budget",
        type=arguments.money,
        metavar="USD",
        help="maximum LLM spending for this batch, in US dollars",
    )
    parser.add_argument(
        "--llm-mode",
        choices=LLM_MODES,
        help="how the batch's LLM calls run: live (at once) or batch (the provider's Batch "
        "API: half price, answers within hours); kept on the batch, so replays keep it "
        "(default: each handler's llm_mode, else the workers' DOCBUS_LLM__MODE)",
    )
    parser.add_argument(
        "--handlers",
        metavar="MODULE",
        help="handler module (as for `docbus worker`): with --llm-mode batch, refuse a topic "
        "one of its handlers consumes in order (the topology's session subscriptions are "
        "always checked)",
    )


def _llm_mode_refusal(args: argparse.Namespace, topology: Topology) -> str | None:
    """Why ``--llm-mode`` cannot be used for the topic (one line), or None."""
    handlers: list[HandlerLike] = []
    if args.llm_mode == "batch" and args.handlers is not None:
        from handlers.runtime import HandlerDiscoveryError, discover_handlers

        try:
            handlers = [item.spec for item in discover_handlers(args.handlers)]
        except HandlerDiscoveryError as exc:
            return f"cannot read --handlers {args.handlers}: {exc}"
    return batch_mode_refusal(args.topic, args.llm_mode, topology=topology, handlers=handlers)


def run(  # noqa: C901 - one branch per refusal the command turns into a line and an exit code
    args: argparse.Namespace,
    *,
    console: Console | None = None,
    err_console: Console | None = None,
) -> int:
    """Run ``docbus publish``; returns the exit code (see :data:`EXIT_CODES`).

    Tables go to ``console`` (stdout), error lines to ``err_console`` (stderr; ``console``
    when only that is given). With ``--json`` stdout holds only the summary as JSON.
    """
    err = err_console or console or make_console(stderr=True)
    console = console or make_console()
    out = make_console(file=io.StringIO()) if args.json else console  # tables: not with --json
    settings = load_settings(err)
    if settings is None:
        return 2
    batch_id = args.batch_id or new_batch_id()

    def refuse(
        code: int, message: str, problems: Sequence[InputProblem] = (), *, named: bool = False
    ) -> int:
        """One line on stderr (the problems after it when no table shows them and ``message``
        does not name them); with --json, the refusal and its problems on stdout too."""
        _error(err, message, problems=problems if args.json and not named else None)
        if args.json:
            refusal = _refusal_json(args, batch_id, code, message, problems)
            console.file.write(json.dumps(refusal, ensure_ascii=False) + "\n")
            console.file.flush()
        return code

    if not re.match(BATCH_ID_PATTERN, batch_id):
        return refuse(2, f"invalid batch id {batch_id!r}: use up to 64 letters, digits, . _ or -")
    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        return refuse(2, f"{exc}: pass --topology FILE (the file the entities were deployed from)")
    try:
        topic_receivers(topology, args.topic)
    except PublishRefused as exc:
        return refuse(1, f"cannot publish to topic {args.topic!r}: {exc}; nothing was sent")
    refusal = _llm_mode_refusal(args, topology)
    if refusal is not None:
        return refuse(2, f"{refusal}; nothing was sent")
    options = LoaderOptions(
        format=args.format,
        text_field=args.text_field,
        id_field=args.id_field,
        session_key=args.session_key,
    )
    with out.status("checking the inputs..."):
        scan = scan_documents(args.paths, options)
    if scan.documents == 0 and scan.problems and all(map(finds_nothing, scan.problems)):
        # every path names no file: a typo, not bad documents (no table, no --skip-invalid)
        found = "; ".join(str(problem) for problem in scan.problems)
        return refuse(2, f"{found}: check the path; nothing was sent", scan.problems, named=True)
    if scan.problems and not args.skip_invalid:
        out.print(problems_table(scan.problems, "Invalid input"))
        # --skip-invalid only helps when something valid is left to send
        remedy = (
            f"Fix them, or pass --skip-invalid to send the other {scan.documents} document(s)."
            if scan.documents
            else "There are no valid documents to send: fix them."
        )
        return refuse(
            1, f"{len(scan.problems)} invalid input(s): nothing was sent. {remedy}", scan.problems
        )
    if scan.documents == 0:
        if scan.problems:
            out.print(problems_table(scan.problems, "Skipped (invalid input)"))
            return refuse(1, "no valid documents to publish; nothing was sent", scan.problems)
        inputs = ", ".join(os.fspath(path) for path in args.paths)
        return refuse(1, f"no documents in {inputs}: empty, or only blank lines; nothing was sent")
    if not args.dry_run and not settings.servicebus.configured:
        return refuse(2, NO_BROKER)
    job = _Job(
        args=args, settings=settings, batch_id=batch_id, options=options, console=out,
        topology=topology,
    )  # fmt: skip
    try:
        report = asyncio.run(job.dry_run() if args.dry_run else job.publish(scan.documents))
    except InvalidInput as exc:  # an input changed between the scan and the send
        out.print(problems_table(exc.problems, "Invalid input"))
        _error(
            err,
            f"inputs changed while publishing; {exc.sent} document(s) were sent",
            problems=exc.problems if args.json else None,
        )
        return 1
    except PublishRefused as exc:
        return refuse(1, f"cannot publish to topic {args.topic!r}: {exc}; nothing was sent")
    except StoreUnavailable as exc:
        _error(err, f"cannot reach MongoDB: {brief(str(exc))}; {NO_STORE}")
        return 3
    except StoreError as exc:
        _error(err, f"recording the batch failed: {exc}")
        return 1
    except ConfigurationError as exc:
        _error(err, str(exc))
        return 2
    except MessagingError as exc:
        _error(err, f"cannot publish to topic {args.topic!r}: {brief(str(exc))}")
        return 3 if exc.transient else 1
    except KeyboardInterrupt:
        if args.dry_run:
            raise
        _error(
            err,
            f"interrupted: batch {batch_id} is incomplete; send the rest with the same command "
            f"and --batch-id {batch_id} --resume",
        )
        return 130
    if args.json:
        console.file.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
        console.file.flush()
    else:
        if report.problems:
            out.print(problems_table(report.problems, "Skipped (invalid input)"))
        if report.failed:
            out.print(_failed_table(report.failed))
        for warning in report.warnings:
            out.print(Text.assemble(("warning: ", "bold yellow"), warning), highlight=False)
        out.print(report_table(report))
    return 0 if report.ok else 1


def _refusal_json(
    args: argparse.Namespace,
    batch_id: str,
    code: int,
    message: str,
    problems: Sequence[InputProblem],
) -> dict[str, Any]:
    """``--json`` of a publish that was refused before sending: why, and every problem."""
    return {
        "batch_id": batch_id,
        "topic": args.topic,
        "dry_run": bool(args.dry_run),
        "ok": False,
        "sent": 0,
        "refused": message,
        "exit_code": code,
        "problems": [problem.model_dump() for problem in problems],
    }


def report_table(report: PublishReport) -> Table:
    """A publish's closing summary: documents, sent, skipped, failed, time and throughput."""
    title = f"Batch {report.batch_id} → {report.topic}" + (" (dry run)" if report.dry_run else "")
    table = Table(title=title, show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rate = report.sent / report.duration if report.duration > 0 else 0.0
    rows: list[tuple[str, str]] = [
        ("documents", str(report.documents)),
        (
            "would send" if report.dry_run else "sent",
            str(report.documents if report.dry_run else report.sent),
        ),
        ("by claim-check", str(report.claim_checked)),
        ("message batches", "-" if report.dry_run else str(report.message_batches)),
        ("already in the batch", str(report.already_sent)),
        ("skipped (invalid input)", str(len(report.problems))),
        ("failed to send", str(len(report.failed))),
        ("size limit (bytes)", str(report.max_message_size)),
        ("time", f"{report.duration:.2f} s"),
    ]
    if not report.dry_run:
        rows.append(("throughput", f"{rate:.0f} docs/s"))
    if report.llm_mode is not None:
        rows.append(("LLM mode", report.llm_mode))
    if not report.already_sent and not report.resent:
        rows = [row for row in rows if row[0] != "already in the batch"]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _error(
    console: Console, message: str, *, problems: Sequence[InputProblem] | None = None
) -> None:
    """One error line, then each of ``problems`` (given when no table shows them)."""
    # soft_wrap: a line stays one line (rich would wrap at 80 columns off a terminal)
    console.print(
        Text.assemble(("docbus publish: error: ", "bold red"), message),
        highlight=False,
        soft_wrap=True,
    )
    for problem in problems or ():
        console.print(untrusted(f"  {problem}"), highlight=False, soft_wrap=True)


def problems_table(problems: list[InputProblem], title: str) -> Table:
    """Every problem, with where it is (file:line) and why."""
    table = Table(title=f"{title}: {len(problems)}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("where", overflow="fold")
    table.add_column("reason", overflow="fold")
    for number, problem in enumerate(problems, start=1):
        where = problem.where
        table.add_row(str(number), untrusted(where), untrusted(problem.reason))
    return table


def _failed_table(failed: dict[str, str]) -> Table:
    table = Table(title=f"Not sent: {len(failed)}", title_justify="left")
    table.add_column("doc_id", overflow="fold")
    table.add_column("reason", overflow="fold")
    for doc_id, reason in failed.items():
        table.add_row(untrusted(doc_id), untrusted(reason))
    return table


@dataclass
class _Preview:
    """The first documents of a dry run, and how many there were."""

    rows: list[tuple[str, str, int, str]] = field(default_factory=list)
    count: int = 0

    def watch(self, docs: Iterator[DocumentInput]) -> Iterator[DocumentInput]:
        for doc in docs:
            self.count += 1
            if len(self.rows) < PREVIEW_ROWS:
                where = str(doc.source) if doc.source is not None else "-"
                size = len(doc.text.encode("utf-8"))
                self.rows.append((doc.doc_id or "-", where, size, doc.session_id or ""))
            yield doc

    def table(self, topic: str, batch_id: str) -> Table:
        table = Table(title=f"Would send to {topic} as batch {batch_id}", title_justify="left")
        table.add_column("doc_id", overflow="fold")
        table.add_column("from", overflow="fold")
        table.add_column("bytes", justify="right")
        table.add_column("session")
        for doc_id, where, size, session in self.rows:
            table.add_row(untrusted(doc_id), untrusted(where), str(size), untrusted(session))
        if self.count > len(self.rows):
            table.add_row(f"... and {self.count - len(self.rows)} more", "", "", "")
        return table


@dataclass
class _Job:
    args: argparse.Namespace
    settings: Settings
    batch_id: str
    options: LoaderOptions
    console: Console
    topology: Topology

    @property
    def sources(self) -> list[str]:
        return [os.fspath(p) for p in self.args.paths]

    async def dry_run(self) -> PublishReport:
        problems: list[InputProblem] = []
        preview = _Preview()
        report = await publish_documents(
            preview.watch(iter_documents(self.args.paths, problems, self.options)),
            topic=self.args.topic,
            batch_id=self.batch_id,
            settings=self.settings,
            skip_invalid=True,
            dry_run=True,
            source=self.sources,
            checked=True,
            topology=self.topology,
            llm_mode=self.args.llm_mode,
        )
        report.problems[:0] = problems
        self.console.print(preview.table(self.args.topic, self.batch_id))
        if self.args.budget is not None:
            self.console.print(f"budget: ${self.args.budget:.2f} for this batch's LLM calls")
        return report

    async def publish(self, expected: int) -> PublishReport:
        problems: list[InputProblem] = []
        progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        # Resuming sends only what the batch is missing: how much is not known up front.
        total = None if self.args.resume else expected
        task = progress.add_task(f"publishing {self.batch_id}", total=total)
        async with Store.from_settings(self.settings) as store:
            budget = self.args.budget

            async def before_first_send() -> None:
                # The publisher records the batch before its first send: the budget is in
                # place before any worker can see a message of this batch.
                if budget is not None:
                    await store.set_batch_budget(self.batch_id, budget)
                progress.start()  # only now: a refused publish shows no bar, just its error

            hooks = _SendHooks(before_first_send, lambda n: progress.advance(task, n))
            async with servicebus_client(self.settings) as client:
                try:
                    report = await publish_documents(
                        iter_documents(self.args.paths, problems, self.options),
                        topic=self.args.topic,
                        batch_id=self.batch_id,
                        settings=self.settings,
                        sender_factory=hooks.wrap(topic_senders(client)),
                        store=store,
                        skip_invalid=self.args.skip_invalid,
                        source=self.sources,
                        checked=True,
                        topology=self.topology,
                        resume=self.args.resume,
                        llm_mode=self.args.llm_mode,
                    )
                finally:
                    progress.stop()
            if problems:
                report.problems[:0] = problems
                record = await store.get_batch(self.batch_id)
                counts = dict(record.counts) if record is not None else report.counts
                counts["skipped"] = len(report.problems)
                await store.update_batch(self.batch_id, counts=counts)
        return report


class _SendHooks:
    """Wraps the publisher's senders: run a callback once before the first send, count sends."""

    def __init__(
        self, before_first_send: Callable[[], Awaitable[None]], sent: Callable[[int], None]
    ) -> None:
        self._before_first_send = before_first_send
        self._sent = sent
        self._ready: asyncio.Task[None] | None = None

    async def before_send(self) -> None:
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._before_first_send())
        await asyncio.shield(self._ready)

    def wrap(self, factory: Callable[[str], Any]) -> SenderFactory:
        @asynccontextmanager
        async def sender(topic: str) -> AsyncIterator[MessageSender]:
            async with factory(topic) as inner:
                yield _CountingSender(inner, self)

        return sender

    def sent(self, count: int) -> None:
        self._sent(count)


class _CountingSender:
    def __init__(self, inner: MessageSender, hooks: _SendHooks) -> None:
        self._inner = inner
        self._hooks = hooks

    async def create_message_batch(
        self, max_size_in_bytes: int | None = None
    ) -> ServiceBusMessageBatch:
        return await self._inner.create_message_batch(max_size_in_bytes)

    async def send_messages(
        self,
        message: ServiceBusMessageBatch,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
    ) -> None:
        await self._hooks.before_send()
        await self._inner.send_messages(message, timeout=timeout)
        self._hooks.sent(len(message))
