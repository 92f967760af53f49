"""``docbus llm-batches``: the provider batches behind batch-mode LLM calls — list, show, cancel,
resume.

A batch published with ``--llm-mode batch`` has its LLM calls sent to the provider's Batch API
in provider batches (one input file per round, not one per document). ``list`` shows their
records newest first (``--batch`` for one docbus batch's), ``show ID`` one record (by its id or
the provider's ``batch_...`` id) with its outcome. ``cancel BATCH`` holds the docbus batch's
pending requests and cancels its open provider batches at the provider — what was answered is
kept, the rest is held, its documents stay parked; a provider batch shared with another docbus
batch is left running and named. ``resume BATCH`` makes the held requests pending again and asks
the workers to fetch the batch's parked messages back. Every subcommand takes ``--json``. The
queries and actions are :mod:`docbus.ops.llm_batches`; the provider is called through the
``openai`` SDK with the client the live LLM calls use (:func:`provider_canceller`).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

from rich.console import Console, Group, RenderableType
from rich.text import Text

from docbus.cli.arguments import positive_int
from docbus.cli.render import Table, make_console, untrusted
from docbus.ops.llm_batches import (
    Cancel,
    CancelOutcome,
    LLMBatchRefused,
    LLMProgress,
    ResumeOutcome,
    cancel_llm_batch,
    find_provider_batch,
    list_provider_batches,
    provider_batch_json,
    resume_llm_batch,
)
from docbus.settings import Settings
from docbus.store import ProviderBatchRecord, Store
from docbus.text import one_line

__all__ = [
    "EXIT_CODES",
    "add_arguments",
    "cancel_text",
    "progress_text",
    "provider_batch_view",
    "provider_batches_table",
    "provider_canceller",
    "resume_text",
    "run",
]

Outcome = TypeVar("Outcome", CancelOutcome, ResumeOutcome)

EXIT_CODES = {
    1: "no such batch or provider batch, or the provider refused to cancel a provider batch",
    2: "the batch has no batch-mode LLM requests, or no LLM is configured to cancel with",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="llm_batches_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="provider batches, newest first")
    listing.add_argument("--batch", metavar="BATCH", help="only those of this docbus batch")
    listing.add_argument(
        "--limit", type=positive_int, default=50, metavar="N", help="rows shown (default 50)"
    )
    show = commands.add_parser("show", help="one provider batch and its outcome")
    show.add_argument("id", metavar="ID", help="its record id, or the provider's batch id")
    cancel = commands.add_parser(
        "cancel",
        help="hold a docbus batch's LLM requests and cancel its open provider batches",
    )
    resume = commands.add_parser(
        "resume", help="release a cancelled docbus batch's requests and resume its documents"
    )
    for sub in (cancel, resume):
        sub.add_argument("batch", metavar="BATCH", help="the docbus batch id")
    for sub in (listing, show, cancel, resume):
        sub.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    from docbus.cli import run_async  # failures: one line on stderr, by the CLI's runner

    console = console or make_console()
    command = {"list": _list, "show": _show, "cancel": _cancel, "resume": _resume}[
        args.llm_batches_command
    ]
    return run_async(lambda settings: command(settings, args, console))


async def _list(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with Store.from_settings(settings) as store:
        records = await list_provider_batches(store, batch_id=args.batch, limit=args.limit)
    if args.json:
        from docbus.cli import print_json

        print_json(console, {"provider_batches": [provider_batch_json(r) for r in records]})
    elif not records:
        where = f" of batch {args.batch}" if args.batch else ""
        console.print(f"no provider batches{where} yet", markup=False)
    else:
        console.print(provider_batches_table(records))
    return 0


async def _show(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async with Store.from_settings(settings) as store:
        record = await find_provider_batch(store, args.id)
    if args.json:
        from docbus.cli import print_json

        print_json(console, provider_batch_json(record))
    else:
        console.print(provider_batch_view(record))
    return 0


async def _cancel(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async def cancel_it(store: Store) -> CancelOutcome:
        async with provider_canceller(settings) as cancel:
            return await cancel_llm_batch(store, args.batch, cancel)

    outcome = await _carry_out(settings, args, console, cancel_it, cancel_text)
    return 2 if outcome is None else 0 if outcome.ok else 1


async def _resume(settings: Settings, args: argparse.Namespace, console: Console) -> int:
    async def resume_it(store: Store) -> ResumeOutcome:
        return await resume_llm_batch(store, args.batch)

    outcome = await _carry_out(settings, args, console, resume_it, resume_text)
    return 2 if outcome is None else 0


async def _carry_out(
    settings: Settings,
    args: argparse.Namespace,
    console: Console,
    act: Callable[[Store], Awaitable[Outcome]],
    text: Callable[[Outcome], str],
) -> Outcome | None:
    """Run an action and show what it did; None (after one line on stderr) when refused."""
    from docbus.cli import print_json, say_error

    try:
        async with Store.from_settings(settings) as store:
            outcome = await act(store)
    except LLMBatchRefused as exc:
        say_error(f"llm-batches {args.llm_batches_command}", str(exc))
        return None
    if args.json:
        print_json(console, outcome.to_json())
    else:
        console.print(text(outcome), markup=False, highlight=False, soft_wrap=True)
    return outcome


@asynccontextmanager
async def provider_canceller(settings: Settings) -> AsyncIterator[Cancel]:
    """Cancels provider batches through the ``openai`` SDK, with the client the live LLM calls
    use (:meth:`handlers.llm.LLMClient.from_settings`: OpenAI, a compatible server, or Azure
    OpenAI with a key or Entra ID); ``openai`` errors are translated once, by the submitter's
    :func:`~docbus.llm_batch.submitter.failure_of`. Raises :class:`LLMBatchRefused` when no
    LLM is configured."""
    import openai

    from docbus.llm_batch.submitter import failure_of
    from handlers.llm import LLMClient, LLMConfigError

    try:
        client = LLMClient.from_settings(settings)
    except LLMConfigError as exc:
        raise LLMBatchRefused(f"cannot cancel at the provider: {exc}") from exc

    async def cancel(provider_batch_id: str) -> None:
        try:
            await client.openai.batches.cancel(provider_batch_id)
        except openai.OpenAIError as exc:
            failure = failure_of(exc)
            raise LLMBatchRefused(
                f"{failure.reason}: {one_line(failure.description, 200)}"
            ) from exc

    try:
        yield cancel
    finally:
        await client.aclose()


# -- rendering ----------------------------------------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    return " / ".join(str(counts.get(k, 0)) for k in ("completed", "failed", "total"))


def provider_batches_table(records: Sequence[ProviderBatchRecord]) -> Table:
    """Provider batches, one row each, newest first."""
    table = Table(title=f"{len(records)} provider batch(es)", title_justify="left")
    for name in ("id", "provider id", "model", "state", "provider status"):
        table.add_column(name, no_wrap=True)
    table.add_column("requests", justify="right")
    table.add_column("done / failed / total", justify="right")
    table.add_column("docbus batches")
    table.add_column("created", no_wrap=True)
    for record in records:
        table.add_row(
            untrusted(record.id),
            untrusted(record.provider_batch_id or "-"),
            untrusted(record.model),
            str(record.state),
            untrusted(record.provider_status or "-"),
            str(len(record.keys)),
            _counts(record.request_counts),
            untrusted(", ".join(record.batch_ids) or "-"),
            f"{record.created_at:%Y-%m-%d %H:%M:%S}",
        )
    return table


def _files_deleted(record: ProviderBatchRecord) -> str:
    if record.files_deleted_at is not None:
        return f"yes, {record.files_deleted_at:%Y-%m-%d %H:%M:%S}"
    if not (record.file_id or record.output_file_id or record.error_file_id):
        return "-"
    return "no (still open)" if record.is_open else "no"


def provider_batch_view(record: ProviderBatchRecord) -> RenderableType:
    """One provider batch: its figures, then its errors if any."""
    table = Table(title=f"provider batch {record.id}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("provider id", record.provider_batch_id or "- (not created at the provider yet)"),
        ("endpoint", record.endpoint),
        ("model", record.model),
        ("state", f"{record.state} ({'open' if record.is_open else 'closed'})"),
        ("provider status", record.provider_status or "-"),
        ("requests", str(len(record.keys))),
        ("request counts", ", ".join(f"{k} {v}" for k, v in record.request_counts.items()) or "-"),
        ("outcome", ", ".join(f"{k} {v}" for k, v in record.outcome.items()) or "-"),
        ("docbus batches", ", ".join(record.batch_ids) or "-"),
        ("input file", record.file_id or "-"),
        ("output file", record.output_file_id or "-"),
        ("error file", record.error_file_id or "-"),
        ("files deleted", _files_deleted(record)),
        ("polls", str(record.polls)),
        ("created", f"{record.created_at:%Y-%m-%d %H:%M:%S}"),
        ("updated", f"{record.updated_at:%Y-%m-%d %H:%M:%S}"),
    ]
    for name, value in rows:
        table.add_row(name, untrusted(value))
    parts: list[RenderableType] = [table]
    for error in record.errors:
        parts.append(untrusted(f"error: {one_line(str(error), 200)}", style="red"))
    return Group(*parts)


def cancel_text(outcome: CancelOutcome) -> str:
    """What a cancel did, in a few sentences."""
    lines = [
        f"batch {outcome.batch_id}: {outcome.held} pending LLM request(s) held; "
        f"{len(outcome.cancelled)} provider batch(es) cancelled"
        + (f" ({', '.join(outcome.cancelled)})" if outcome.cancelled else "")
        + ". Its documents stay parked: `docbus llm-batches resume "
        f"{outcome.batch_id}` carries on (answers already received are kept)."
    ]
    if outcome.shared:
        lines.append(
            f"left running (shared with other batches): {', '.join(outcome.shared)}; its "
            "answers for this batch are kept"
        )
    if outcome.not_created:
        lines.append(
            f"still being created at the provider: {', '.join(outcome.not_created)}; run the "
            "cancel again in a minute"
        )
    for provider_id, why in outcome.failed.items():
        lines.append(f"error: the provider refused to cancel {provider_id}: {why}")
    return "\n".join(lines)


def resume_text(outcome: ResumeOutcome) -> str:
    held = (
        f"{outcome.released} held LLM request(s) pending again"
        if outcome.released
        else "nothing was held"
    )
    return (
        f"batch {outcome.batch_id}: {held}; asked workers to resume {outcome.resume_requested} "
        "parked message(s) (a worker of their subscription fetches them back within its resume "
        "interval; those still waiting on an answer park again)"
    )


def progress_text(progress: LLMProgress, now: datetime | None = None) -> Text:
    """One batch's batch-mode requests in one line: counts, open provider batches, pauses."""
    now = now or datetime.now(UTC)
    parts: list[tuple[str, str] | str] = [
        "LLM requests: "
        + ", ".join(f"{state} {count}" for state, count in progress.requests.items())
    ]
    if progress.open_batches:
        shown = ", ".join(
            f"{r.provider_batch_id or r.id} {r.provider_status or r.state} "
            f"{_counts(r.request_counts)}"
            for r in progress.open_batches
        )
        parts.append(f" · open provider batches: {shown}")
    for pause in progress.active_pauses(now):
        parts.append(
            (
                f" · submission of {pause.model} paused until {pause.until:%H:%M:%S}: "
                f"{pause.reason} {one_line(pause.description, 80)}",
                "yellow",
            )
        )
    if progress.cancelled_at is not None:
        parts.append((" · CANCELLED: `docbus llm-batches resume` carries on", "bold yellow"))
    return Text.assemble(*parts)
