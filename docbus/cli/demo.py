"""``docbus demo``: the main job, end to end, on the embedded local stack.

Starts the local stack (:mod:`docbus.local.stack`), publishes the sample supplier-news documents
shipped in ``docbus/samples`` (a few of them deliberately malformed, to show how bad input is
reported), runs a worker with the built-in multi-step handlers until the subscriptions are idle,
and prints what happened: results and dead letters per handler, LLM calls, tokens and cost, and
whether every published document ended as exactly one current result or one dead letter. With
no LLM API key configured it uses the offline model and says so. ``--console`` then keeps the
stack up and serves the operator console (:mod:`docbus.console`) on it until Ctrl-C.

``--llm-mode batch`` publishes the batch in batch mode: the handlers' LLM calls go through the
offline server's Batch API (its processing time ``--batch-processing`` seconds a round; the
submitter in the worker is set to submit after a second and to poll quickly), and the summary
shows the cost against what the same tokens would have cost live. It is refused with a real
LLM configured: a real provider answers a batch within 24 hours, not during a demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from docbus.cli.arguments import non_negative_seconds, port, positive_int
from docbus.cli.render import Table, make_console
from docbus.local.stack import LocalStack, StackOptions
from docbus.records import LLM_MODES
from docbus.settings import Settings
from docbus.store import DeadLetterFilter, Store

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "supplier_news.jsonl"

EXIT_CODES = {
    1: "some published document ended with neither one current result nor one dead letter",
    2: "--llm-mode batch with a real LLM configured (the demo's batch mode is offline only)",
}

BATCH_WITH_REAL_LLM = (
    "docbus demo --llm-mode batch runs on the offline LLM server only: a real provider "
    "answers a batch within 24 hours. Unset OPENAI_API_KEY / AZURE_OPENAI_* (or DOCBUS_LLM__*) "
    "to run it offline, or publish your own batch with `docbus publish --llm-mode batch`"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=SAMPLES, help="JSONL of documents")
    parser.add_argument(
        "--concurrency", type=positive_int, default=16, help="handlers at once (16)"
    )
    parser.add_argument(
        "--llm-latency",
        type=non_negative_seconds,
        default=0.05,
        help="offline model seconds per call (0.05)",
    )
    parser.add_argument("--batch-id", help="batch id (default: generated)")
    parser.add_argument(
        "--json", action="store_true", help="print the summary as JSON (progress stays on stderr)"
    )
    parser.add_argument(
        "--console",
        action="store_true",
        help="after the summary, keep the stack up and serve the operator console on it "
        "until Ctrl-C",
    )
    parser.add_argument(
        "--console-port", type=port, default=8765, help="the console's port (8765; 0: any free)"
    )
    parser.add_argument(
        "--llm-mode",
        choices=LLM_MODES,
        default="live",
        help="live (default), or batch: the LLM calls go through the offline server's Batch "
        "API and the summary compares the cost with live mode's",
    )
    parser.add_argument(
        "--batch-processing",
        type=non_negative_seconds,
        default=3.0,
        metavar="SECONDS",
        help="with --llm-mode batch: seconds the offline server takes per provider batch (3)",
    )


@dataclass
class DemoSummary:
    published: int = 0
    skipped: int = 0
    handlers: list[str] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)
    dead: dict[tuple[str, str], int] = field(default_factory=dict)
    unaccounted: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    tokens: int = 0
    cost: float = 0.0
    extra_calls: dict[str, int] = field(default_factory=dict)  # re-ask / retry → calls
    extra_cost: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    offline: bool = True
    llm_mode: str = "live"
    cost_by_mode: dict[str, float] = field(default_factory=dict)
    live_estimate: float = 0.0
    """What the same calls' tokens would have cost live (the live price table)."""
    provider_batches: int = 0

    @property
    def accounted(self) -> bool:
        return not any(self.unaccounted.values())


KeepOpen = Callable[[DemoSummary, Settings, Any], Awaitable[None]]
"""Awaited with the summary, the stack's settings and topology before the stack stops."""


async def run_demo(
    args: argparse.Namespace, console: Console, keep_open: KeepOpen | None = None
) -> DemoSummary:
    from docbus.cli.publish import report_table
    from docbus.cli.worker import build_llm
    from docbus.local.llm_server import Faults
    from docbus.local.llm_server.batch_config import BatchConfig
    from handlers.runtime import discover_handlers
    from publisher import LoaderOptions, iter_documents, publish_documents
    from subscriber.worker import Worker, WorkerOptions, freeze_startup_heap

    base = Settings()
    offline = _offline(base)
    summary = DemoSummary(offline=offline)
    started = time.monotonic()
    # Notices are soft-wrapped (the terminal wraps them): no line ends in padding spaces.
    console.print(
        Text.assemble(("docbus demo", "bold"), ": starting the local stack (Service Bus emulator, "
                      "SecantusDB" + (", offline LLM server)" if offline else ")")),
        soft_wrap=True,
    )  # fmt: skip
    if offline:
        console.print(
            Text.assemble(
                ("No LLM API key is configured: the demo uses the OFFLINE model "
                 "'docbus-offline' (deterministic answers derived from each document, not a "
                 "real LLM).", "yellow"),
                " Set OPENAI_API_KEY (or AZURE_OPENAI_*) to use a real one.",
            ),
            soft_wrap=True,
        )  # fmt: skip
    # A little realism for the offline model: some schema-violating answers (re-asked) and
    # some 429s (backed off), so the summary shows what they cost.
    faults: dict[str, Any] = {
        "faults": Faults(rate_schema=0.03, rate_429=0.02, retry_after=0.2),
        "seed": 7,
    }
    batch_mode = args.llm_mode == "batch"
    if batch_mode:
        faults["batch"] = BatchConfig(in_progress_seconds=args.batch_processing)
    summary.llm_mode = args.llm_mode
    options = StackOptions(
        llm=offline, llm_latency=args.llm_latency, extra_llm_config=faults if offline else {}
    )
    async with LocalStack(options) as stack:
        settings = stack.settings(base)
        if batch_mode:
            settings = quick_rounds(settings)
        registered = discover_handlers("handlers.builtin")
        summary.handlers = [h.name for h in registered]
        async with Store.from_settings(settings) as store:
            await store.ensure_indexes()
            problems: list[Any] = []
            docs = iter_documents(
                [args.input], problems, LoaderOptions(format="jsonl", id_field="id")
            )
            report = await publish_documents(
                list(docs), topic="documents", batch_id=args.batch_id, settings=settings,
                store=store, skip_invalid=True, source=[str(args.input)],
                llm_mode=args.llm_mode,
            )  # fmt: skip
            # What the loader refused counts as skipped, in the summary and the batch record.
            report.problems[:0] = problems
            await store.update_batch(report.batch_id, counts=report.counts)
            summary.published = report.sent
            summary.skipped = len(report.problems)
            if report.problems:
                table = Table(title="input problems (skipped, not sent)")
                table.add_column("where")
                table.add_column("reason")
                for problem in report.problems:
                    where = problem.where.replace(problem.file, Path(problem.file).name, 1)
                    table.add_row(where, problem.reason)
                console.print(table)
            console.print(report_table(report))
            expected = report.sent * len(registered)
            from docbus.servicebus import servicebus_client

            async with servicebus_client(settings) as client:
                llm = build_llm(settings, store)
                progress = Progress(
                    TextColumn("processing"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console,
                )  # fmt: skip
                task = progress.add_task("processing", total=expected)
                worker = Worker(
                    registered,
                    client=client,
                    store=store,
                    options=WorkerOptions(
                        concurrency=args.concurrency,
                        until_idle=3.0,
                        # batch mode: answered rounds are fetched back within a second
                        resume_interval=1.0 if batch_mode else WorkerOptions.resume_interval,
                    ),
                    topology=stack.topology,
                    llm=llm,
                    on_outcome=lambda outcome: (
                        progress.advance(task)
                        if outcome.action.value in ("completed", "dead-lettered")
                        else None
                    ),
                )
                freeze_startup_heap()
                with progress:
                    if llm is not None:
                        async with llm:
                            worker_report = await worker.run()
                    else:
                        worker_report = await worker.run()
            await _summarise(store, report.batch_id, registered, worker_report, summary)
            await _cost_by_mode(store, report.batch_id, settings, summary)
        summary.seconds = time.monotonic() - started
        if keep_open is not None:
            await keep_open(summary, settings, stack.topology)
    return summary


async def _summarise(
    store: Store, batch_id: str, registered: list[Any], worker_report: Any, summary: DemoSummary
) -> None:
    published = {doc.doc_id async for doc in store.iter_documents(batch_id)}
    for h in registered:
        name = h.name
        dead_ids: set[str] = set()
        # Resolved dead letters too: a document both done and dead is not accounted for.
        where = DeadLetterFilter(batch_id=batch_id, handler=name, include_resolved=True)
        for record in await store.dead_letters(where):
            key = (name, record.reason)
            summary.dead[key] = summary.dead.get(key, 0) + 1
            if record.doc_id is not None:
                dead_ids.add(record.doc_id)
        versions = await store.result_versions(batch_id=batch_id, handler=name)
        result_ids = {version.doc_id for version in versions if version.current}
        summary.done[name] = len(result_ids)
        both = result_ids & dead_ids
        summary.unaccounted[name] = len(published - result_ids - dead_ids) + len(both)
    async for call in store.iter_llm_usage(batch_id):
        summary.llm_calls += 1
        tokens = int(call.get("prompt_tokens") or 0) + int(call.get("completion_tokens") or 0)
        summary.tokens += tokens
        summary.cost += float(call.get("cost_usd") or 0.0)
        category = call.get("category")
        if category in ("reask", "retry"):
            summary.extra_calls[category] = summary.extra_calls.get(category, 0) + 1
            spent = float(call.get("cost_usd") or 0.0)
            summary.extra_cost[category] = summary.extra_cost.get(category, 0.0) + spent


def quick_rounds(settings: Settings, max_wait: float = 60.0, quiet: float = 0.3) -> Settings:
    """The settings with the batch-mode submitter tuned for a demo (or a benchmark): a round
    is submitted once no request has joined it for ``quiet`` seconds and no document is still
    coming back from the last one (at the latest once its first request has waited
    ``max_wait`` seconds), the submitter looks every half second, and polls every half second
    up to one."""
    llm = settings.llm
    batch = getattr(llm, "batch", None)  # llm.batch: the settings of the batch-mode submitter
    if batch is None:
        return settings
    quick = batch.model_copy(
        update={
            "max_wait": max_wait,
            "quiet": quiet,
            "renew_every": 0.5,
            "poll_base": 0.5,
            "poll_max": 1.0,
        }
    )
    return settings.model_copy(update={"llm": llm.model_copy(update={"batch": quick})})


def live_estimate(
    rows: Iterable[Mapping[str, Any]], cost: Callable[[str, int, int], float]
) -> float:
    """What calls summed per model (``Store.llm_usage_by_mode`` rows) would cost live;
    ``cost(model, prompt_tokens, completion_tokens)`` is the live price table's."""
    return sum(
        cost(str(row.get("model") or ""), int(row["prompt_tokens"]), int(row["completion_tokens"]))
        for row in rows
    )


async def _cost_by_mode(
    store: Store, batch_id: str, settings: Settings, summary: DemoSummary
) -> None:
    from handlers.llm.pricing import PriceTable

    prices = PriceTable.from_settings(settings.llm)
    rows = await store.llm_usage_by_mode(batch_id)
    for row in rows:
        mode = str(row["llm_mode"])
        summary.cost_by_mode[mode] = summary.cost_by_mode.get(mode, 0.0) + float(row["cost_usd"])
    summary.live_estimate = live_estimate(
        rows, lambda model, p, c: prices.cost(model, p, c, fallback=settings.llm.model)
    )
    summary.provider_batches = len(await store.provider_batches(batch_id=batch_id, limit=0))


def summary_table(summary: DemoSummary) -> Table:
    model = "offline model docbus-offline" if summary.offline else "configured LLM"
    table = Table(title=f"docbus demo: {summary.published} documents, {model}")
    table.add_column("handler")
    table.add_column("outcome")
    table.add_column("documents", justify="right")
    for name in summary.handlers:
        table.add_row(name, "done", str(summary.done.get(name, 0)))
        for (handler, reason), count in sorted(summary.dead.items()):
            if handler == name:
                table.add_row("", f"dead-lettered: {reason}", str(count))
        if summary.unaccounted.get(name):
            table.add_row("", Text("unaccounted", "red"), str(summary.unaccounted[name]))
    table.add_section()
    table.add_row("input", "skipped as invalid", str(summary.skipped))
    table.add_row("LLM", "calls", str(summary.llm_calls))
    table.add_row("LLM", "tokens", f"{summary.tokens:,}")
    table.add_row("LLM", "cost (USD)", f"{summary.cost:.4f}")
    for category, label in (("reask", "re-asks"), ("retry", "retries")):
        calls = summary.extra_calls.get(category, 0)
        cost = summary.extra_cost.get(category, 0.0)
        table.add_row("LLM", f"  of which {label}: calls / USD", f"{calls} / {cost:.4f}")
    if summary.llm_mode == "batch":
        table.add_row("LLM", "mode", "batch")
        table.add_row("LLM", "provider batches", str(summary.provider_batches))
        for mode, usd in sorted(summary.cost_by_mode.items()):
            table.add_row("LLM", f"  cost in {mode} mode (USD)", f"{usd:.4f}")
        share = summary.cost / summary.live_estimate if summary.live_estimate else 0.0
        table.add_row(
            "LLM", "cost vs live mode (USD)",
            f"{summary.cost:.4f} vs {summary.live_estimate:.4f} ({share:.0%})",
        )  # fmt: skip
    table.add_row("time", "seconds", f"{summary.seconds:.1f}")
    return table


def summary_json(summary: DemoSummary) -> dict[str, Any]:
    """The summary's figures as JSON-ready data (what ``--json`` prints)."""
    handlers = {
        name: {
            "done": summary.done.get(name, 0),
            "dead_lettered": {
                reason: count for (handler, reason), count in sorted(summary.dead.items())
                if handler == name
            },
            "unaccounted": summary.unaccounted.get(name, 0),
        }
        for name in summary.handlers
    }  # fmt: skip
    return {
        "published": summary.published,
        "skipped": summary.skipped,
        "model": "docbus-offline" if summary.offline else "configured",
        "handlers": handlers,
        "llm": {
            "calls": summary.llm_calls,
            "tokens": summary.tokens,
            "cost_usd": summary.cost,
            **{
                label: {
                    "calls": summary.extra_calls.get(category, 0),
                    "cost_usd": summary.extra_cost.get(category, 0.0),
                }
                for category, label in (("reask", "reasks"), ("retry", "retries"))
            },
        },
        "llm_mode": summary.llm_mode,
        "cost_by_mode": dict(summary.cost_by_mode),
        "live_estimate_usd": summary.live_estimate,
        "provider_batches": summary.provider_batches,
        "seconds": summary.seconds,
        "accounted": summary.accounted,
    }


def run(args: argparse.Namespace) -> int:
    console = make_console(stderr=True)
    out = make_console()
    if args.llm_mode == "batch" and not _offline(Settings()):
        from docbus.cli import say_error

        say_error("demo", BATCH_WITH_REAL_LLM)
        return 2
    if args.console:
        shown: list[DemoSummary] = []

        async def keep_open(summary: DemoSummary, settings: Settings, topology: Any) -> None:
            from docbus.console import listen

            shown.append(summary)
            _print_summary(out, summary, args.json)
            listening = listen(settings, port=args.console_port, topology=topology)
            print(listening.announcement, flush=True)
            print("  (Ctrl-C stops the console and the stack)", flush=True)
            await listening.server.serve(sockets=[listening.socket])

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the console ends
            asyncio.run(run_demo(args, console, keep_open))
        return 0 if shown and shown[0].accounted else 1
    summary = asyncio.run(run_demo(args, console))
    code = _print_summary(out, summary, args.json)
    if not args.json:
        console.print(
            "To watch a run in the browser: docbus demo --console (runs the demo again and "
            "keeps the operator console open on it)",
            soft_wrap=True,
        )
    return code


def _offline(settings: Settings) -> bool:
    """Whether the demo runs the offline model (no real LLM key or Azure endpoint)."""
    return settings.llm.api_key is None and settings.llm.azure_endpoint is None


def _print_summary(out: Console, summary: DemoSummary, as_json: bool) -> int:
    if as_json:
        from docbus.cli import print_json

        print_json(out, summary_json(summary))
        return 0 if summary.accounted else 1
    out.print(summary_table(summary))
    if summary.accounted:
        out.print(
            Text(
                f"Every one of the {summary.published} published documents ended as exactly "
                "one current result or one dead letter in each handler.",
                "green",
            ),
            soft_wrap=True,
        )
        return 0
    out.print(Text("Some documents are unaccounted for: see the table.", "red"), soft_wrap=True)
    return 1
