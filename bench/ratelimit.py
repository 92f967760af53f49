"""Benchmark of the LLM client's rate limiting against a server with a TPM limit; one JSON line.

The offline LLM server runs in its own process with a tokens-per-minute limit
(``python -m docbus.local.llm_server --port 0 --tpm N --latency S``) and answers 429 with the exact
``Retry-After`` when a request would exceed it, as OpenAI does. In this process ``--concurrency``
tasks send documents through one :class:`~handlers.llm.LLMClient` (``ctx.llm.extract`` of a
small pydantic model, no store: the limiter is what is measured), configured with the same
limit (``llm.tokens_per_minute``), for ``--seconds``.

Figures, all from the server's own counters (``GET /_admin/stats``), sampled once a second:

- ``tpm_ratio``: the tokens the server admitted in its sliding window, averaged over the samples
  taken once a full window has passed (the steady state), per minute, divided by the limit
  (aim: >= 0.95);
- ``share_429``: the share of chat-completion requests answered 429 (aim: <= 1%);
- ``peak_ratio``: the most tokens any window ever held, over the limit (<= 1.0: never exceeded).

``--window`` shortens the sliding window of both the server (``Limits.window``, set through
``POST /_admin/config``: the CLI has no flag for it) and the client (``llm.rate_window``), keeping
the same rate: a limit of N tokens per minute becomes N x window / 60 tokens per window. The
default is a real minute. ``--no-client-limit`` leaves the client's limit unset, so it learns the
limit only from 429s (``Retry-After``) and the ``x-ratelimit-*`` headers: the case of a quota
shared with processes it does not know about. Progress goes to stderr, the JSON line to stdout.

    python bench/ratelimit.py [--tpm 60000] [--seconds 80] [--concurrency 16] [--window 60]
                              [--no-client-limit]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _support import first_line
from pydantic import BaseModel, SecretStr
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from docbus.settings import LLMSettings, Settings

STARTUP_TIMEOUT = 60.0

TOPICS = [
    "a delayed shipment of hydraulic valves from Lyon",
    "a strike at a semiconductor plant near Osaka",
    "record quarterly revenue at a packaging supplier in Porto",
    "a flood that closed a warehouse outside Gdansk",
    "new export controls affecting rare-earth magnets",
    "a cyber attack on a logistics provider in Rotterdam",
]


class Digest(BaseModel):
    summary: str
    keywords: list[str]
    risk: int


def documents(count: int = 240) -> list[str]:
    """Documents of varied length (about 40 to 400 words), so requests differ in tokens."""
    docs = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        sentence = (
            f"Report {i}: analysts describe {topic}; buyers in Europe and North America expect "
            f"knock-on effects for {3 + i % 7} weeks and are reviewing second sources. "
        )
        docs.append(sentence * (1 + i % 10))
    return docs


# -- the server ---------------------------------------------------------------------------------


@contextlib.contextmanager
def llm_server(tpm: int, latency: float) -> Iterator[str]:
    """The offline server in its own process; yields its base URL (``.../v1``)."""
    argv = [sys.executable, "-m", "docbus", "llm-server", "--port", "0", "--tpm", str(tpm),
            "--latency", str(latency), "--log-level", "warning"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="docbus-bench-") as tmp:
        log = Path(tmp) / "llm.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file)
            try:
                line = first_line(process, STARTUP_TIMEOUT)
                if " at http" not in line:
                    raise RuntimeError(f"the LLM server did not start: {log.read_text()[-2000:]}")
                yield line.rsplit(" at ", 1)[1]
            finally:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def admin(base_url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    url = base_url.removesuffix("/v1") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method="POST" if data is not None else "GET",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Load:
    answered: int = 0
    gave_up: dict[str, int] = field(default_factory=dict)
    """Calls that raised (after the client's own retries), by exception and reason."""


async def send(client: Any, docs: list[str], offset: int, load: Load, stop: asyncio.Event) -> None:
    from handlers.runtime import HandlerOutcome

    llm = client.bind(None)
    index = offset
    while not stop.is_set():
        text = docs[index % len(docs)]
        index += 1
        try:
            await llm.extract(Digest, f"Digest this news item:\n{text}")
        except HandlerOutcome as exc:
            key = f"{type(exc).__name__}:{getattr(exc, 'reason', '')}"
            load.gave_up[key] = load.gave_up.get(key, 0) + 1
        else:
            load.answered += 1


@dataclass
class Samples:
    """Server window usage sampled once a second: (seconds since start, tokens in window)."""

    window_tokens: list[tuple[float, int]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)


async def sample(base_url: str, started: float, samples: Samples, stop: asyncio.Event) -> None:
    while not stop.is_set():
        stats = await asyncio.to_thread(admin, base_url, "/_admin/stats")
        samples.window_tokens.append((time.monotonic() - started, int(stats["window"]["tokens"])))
        samples.last = stats
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def run_bench(options: argparse.Namespace, base_url: str, console: Console) -> dict[str, Any]:
    from handlers.llm import LLMClient

    window = options.window
    limit = max(1, round(options.tpm * window / 60))  # tokens per window, at the same rate
    if window != 60:
        admin(base_url, "/_admin/config", {"limits": {"tpm": limit, "window": window}})
    settings = Settings(
        llm=LLMSettings(
            base_url=base_url,
            api_key=SecretStr("offline"),
            model="docbus-offline",
            tokens_per_minute=limit if options.client_limit else None,
            rate_window=window,
            max_concurrency=max(64, options.concurrency),
        )
    )
    docs = documents()
    load, samples = Load(), Samples()
    stop = asyncio.Event()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=console,
    )  # fmt: skip
    task = progress.add_task(
        f"TPM {options.tpm:,} ({window:g} s window)", total=options.seconds, status=""
    )
    async with LLMClient.from_settings(settings) as client:
        started = time.monotonic()
        senders = [
            asyncio.create_task(send(client, docs, i * 17, load, stop))
            for i in range(options.concurrency)
        ]
        sampler = asyncio.create_task(sample(base_url, started, samples, stop))
        with progress:
            while (elapsed := time.monotonic() - started) < options.seconds:
                tokens = samples.window_tokens[-1][1] if samples.window_tokens else 0
                outcomes = samples.last.get("outcomes", {})
                progress.update(
                    task,
                    completed=elapsed,
                    status=f"window {tokens:,}/{limit:,} tokens · {load.answered:,} answered · "
                    f"{outcomes.get('rate_limited_tpm', 0)} answered 429",
                )
                await asyncio.sleep(0.5)  # a display refresh, not synchronisation
            progress.update(task, completed=options.seconds)
            final = await asyncio.to_thread(admin, base_url, "/_admin/stats")
            stop.set()
            for sender in senders:
                sender.cancel()
            await asyncio.gather(*senders, sampler, return_exceptions=True)
    steady = [tokens for at, tokens in samples.window_tokens if at >= window]
    outcomes = final["outcomes"]
    refused = int(outcomes.get("rate_limited_tpm", 0)) + int(outcomes.get("rate_limited", 0))
    requests = int(final["requests"])
    per_minute = (sum(steady) / len(steady)) * 60 / window if steady else None
    return {
        "bench": "ratelimit",
        "tpm": options.tpm,
        "window_s": window,
        "client_knows_limit": options.client_limit,
        "seconds": options.seconds,
        "concurrency": options.concurrency,
        "llm_latency_s": options.latency,
        "tpm_achieved": round(per_minute) if per_minute is not None else None,
        "tpm_ratio": round(per_minute / options.tpm, 3) if per_minute is not None else None,
        "steady_samples": len(steady),
        "peak_ratio": round(int(final["window"]["peak_tokens"]) / limit, 3),
        "requests": requests,
        "answered_429": refused,
        "share_429": round(refused / requests, 4) if requests else None,
        "tokens_total": int(final["tokens"]["total"]),
        "calls_answered": load.answered,
        "calls_given_up": load.gave_up,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tpm", type=int, default=60_000, help="tokens per minute (60000)")
    parser.add_argument("--seconds", type=float, default=80.0, help="how long to run (80)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls at once (16)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call (0.2)")
    parser.add_argument("--window", type=float, default=60.0, help="sliding window in seconds (60)")
    parser.add_argument(
        "--no-client-limit",
        dest="client_limit",
        action="store_false",
        help="do not tell the client the limit: it learns it from 429s and rate-limit headers",
    )
    options = parser.parse_args(argv)
    if options.seconds <= options.window:
        parser.error("--seconds must exceed --window: the steady state starts after one window")
    console = Console(stderr=True)
    with llm_server(options.tpm, options.latency) as base_url:
        line = asyncio.run(run_bench(options, base_url, console))
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
