"""One local stack, one demo-sized run and one console for the whole console test module.

``demo_run`` starts the Service Bus emulator (topic ``documents``: ``entities``,
``supplier-risk``, ``notes``), a database of its own on the session's SecantusDB and the
offline LLM server (context window small enough that the two long documents are refused:
``ContextLengthExceeded`` dead letters in each handler); publishes 16 sample news items, the
two long ones and one that holds HTML and a ``<script>``; runs a worker until idle; replays
one document to ``notes`` alone (a second result version) and runs the worker again.
``console`` serves ``docbus console`` on it (a subprocess, as a user starts it) with a known
action token; ``browser`` is Debian's Chromium driven by Playwright (never a downloaded one).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from docbus.local.emulator.config import parse_config
from docbus.local.emulator.server import EmulatorThread
from docbus.local.llm_server import LLMServer, LLMServerConfig
from docbus.local.llm_server.config import Limits
from docbus.settings import LLMSettings, MongoSettings, ServiceBusSettings, Settings
from docbus.topology import Topology, parse_topology

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "docbus" / "samples" / "supplier_news.jsonl"
ARTIFACTS = ROOT / "artifacts" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "console-test-token"
BATCH = "console-demo"
SCRIPT_DOC = "web/<b>sn html?&.txt"  # a path-like id, with characters URLs and HTML mind
SCRIPT_TEXT = (
    "Supplier note <script>window.__pwned = 1; alert('pwned')</script> "
    '<img src="x" onerror="window.__pwned = 2"> <b>bold?</b> Acme Corp plant in Lyon, France.'
)
LONG_DOCS = ("sn-long-1", "sn-long-2")
REPLAYED_DOC = "sn-001"
HANDLERS = ("entities", "notes", "supplier_risk")

TOPOLOGY_DATA: dict[str, Any] = {
    "defaults": {"max_delivery_count": 3, "lock_duration": "PT10S"},
    "topics": [
        {
            "name": "documents",
            "requires_duplicate_detection": True,
            "subscriptions": [{"name": "entities"}, {"name": "supplier-risk"}, {"name": "notes"}],
        }
    ],
}
TOPOLOGY_TOML = """\
[defaults]
max_delivery_count = 3
lock_duration = "PT10S"

[[topics]]
name = "documents"
requires_duplicate_detection = true

  [[topics.subscriptions]]
  name = "entities"

  [[topics.subscriptions]]
  name = "supplier-risk"

  [[topics.subscriptions]]
  name = "notes"
"""


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a loop of its own, in a thread: Playwright's sync API
    keeps an event loop running in the test's thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class DemoRun:
    settings: Settings
    topology: Topology
    env: dict[str, str]
    published: list[str]
    llm: LLMServer
    topology_file: Path

    @property
    def database(self) -> str:
        return self.settings.mongodb.database

    @property
    def connection_string(self) -> str:
        secret = self.settings.servicebus.connection_string
        assert secret is not None
        return secret.get_secret_value()


def _documents() -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(item, dict)
            and item.get("text")
            and item.get("id") not in {s["id"] for s in samples}
        ):
            samples.append(item)
        if len(samples) == 16:
            break
    docs = [
        {"doc_id": s["id"], "text": s["text"], "metadata": {"title": s.get("title")}}
        for s in samples
    ]
    long_text = " ".join(["The supplier's plant reported a long list of events."] * 900)
    docs += [{"doc_id": doc_id, "text": long_text} for doc_id in LONG_DOCS]
    docs.append({"doc_id": SCRIPT_DOC, "text": SCRIPT_TEXT})
    return docs


async def _run(settings: Settings, topology: Topology) -> list[str]:
    from azure.servicebus.aio import ServiceBusClient

    from docbus.backoff import BackoffPolicy
    from docbus.cli.worker import build_llm
    from docbus.store import Store
    from handlers.runtime import discover_handlers
    from publisher import publish_documents
    from publisher.replay import plan_batch_replay, send_replay
    from subscriber.worker import Worker, WorkerOptions
    from tests.console import console_handlers

    async with Store.from_settings(settings) as store:
        await store.ensure_indexes()
        docs = _documents()
        report = await publish_documents(
            docs, topic="documents", batch_id=BATCH, settings=settings, store=store,
            topology=topology,
        )  # fmt: skip
        assert report.sent == len(docs), report.problems
        secret = settings.servicebus.connection_string
        assert secret is not None

        async def work(until_idle: float) -> None:
            async with ServiceBusClient.from_connection_string(secret.get_secret_value()) as client:
                llm = build_llm(settings, store)
                worker = Worker(
                    discover_handlers(console_handlers),
                    client=client,
                    store=store,
                    options=WorkerOptions(
                        concurrency=8,
                        until_idle=until_idle,
                        backoff=BackoffPolicy(base=0.2, cap=1.0, jitter=0.0),
                    ),
                    topology=topology,
                    llm=llm,
                )
                async with llm:
                    await worker.run()

        await work(1.5)
        plan = await plan_batch_replay(
            store, BATCH, only="all", handler="notes", subscription="notes", limit=1
        )
        assert [m.envelope.doc_id for m in plan.messages] == [REPLAYED_DOC]
        async with ServiceBusClient.from_connection_string(secret.get_secret_value()) as client:
            await send_replay(plan, store=store, sender_factory=client.get_topic_sender)
        # Longer idle time: a worker that stops while receiving its only message keeps it
        # locked until the lock expires (seen with 1.5 s), and the test needs it processed.
        await work(3.0)
        versions = await store.result_versions(doc_id=REPLAYED_DOC, handler="notes")
        assert len(versions) == 2, versions
        return [doc["doc_id"] for doc in docs]


@pytest.fixture(scope="module")
def demo_run(local_mongo: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    topology = parse_topology(TOPOLOGY_DATA)
    topology_file = tmp_path_factory.mktemp("console") / "topology.toml"
    topology_file.write_text(TOPOLOGY_TOML, encoding="utf-8")
    database = f"test_console_{uuid.uuid4().hex[:10]}"
    with ExitStack() as stack:
        emulator = stack.enter_context(EmulatorThread(parse_config(topology.emulator_config())))
        llm = stack.enter_context(
            LLMServer(LLMServerConfig(limits=Limits(context_tokens=6000))).in_thread()
        )
        settings = Settings(
            servicebus=ServiceBusSettings(connection_string=SecretStr(emulator.connection_string)),
            mongodb=MongoSettings(uri=SecretStr(local_mongo.uri), database=database),
            llm=LLMSettings(
                base_url=llm.base_url, api_key=SecretStr("offline"), model="docbus-offline"
            ),
        )
        published = run_async(_run(settings, topology))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DOCBUS_", "OPENAI_", "AZURE_OPENAI", "MONGODB_URI"))
        }
        env |= {
            "DOCBUS_SERVICEBUS__CONNECTION_STRING": emulator.connection_string,
            "DOCBUS_MONGODB__URI": local_mongo.uri,
            "DOCBUS_MONGODB__DATABASE": database,
            # the console cancels provider batches through the LLM client (llm-batches)
            "DOCBUS_LLM__BASE_URL": llm.base_url,
            "DOCBUS_LLM__API_KEY": "offline",
        }
        yield DemoRun(settings, topology, env, published, llm, topology_file)
        from pymongo import MongoClient

        client: MongoClient[dict[str, Any]]
        with MongoClient(local_mongo.uri) as client:
            client.drop_database(database)


@dataclass
class Console:
    url: str
    process: subprocess.Popen[str]


@pytest.fixture(scope="module")
def console(demo_run: DemoRun) -> Iterator[Console]:
    process = subprocess.Popen(
        [sys.executable, "-m", "docbus", "console", "--port", "0", "--token", TOKEN,
         "--topology", str(demo_run.topology_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo_run.env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("docbus console: http://127.0.0.1:"), first + (
            process.stderr.read() if process.stderr else ""
        )
        url = first.split()[2].rstrip("/")
        yield Console(url, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@contextmanager
def _page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, console: Console) -> Iterator[Any]:
    """A page logged in with the action token (the URL ``docbus console`` prints)."""
    with _page(browser) as page:
        response = page.goto(f"{console.url}/batches?token={TOKEN}")
        assert response is not None and response.ok
        yield page


@pytest.fixture
def anonymous(browser: Any, console: Console) -> Iterator[Any]:
    """A page that never logged in."""
    with _page(browser) as page:
        yield page


def screenshot(page: Any, name: str, *, readme: str | None = None) -> None:
    """Save the page as a test artefact under artifacts/console/ (gitignored); with
    ``DOCBUS_README_SCREENSHOTS=1`` also the README's pictures under docs/ (tracked, so a
    plain test run leaves them alone)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if readme is not None and os.environ.get("DOCBUS_README_SCREENSHOTS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "docs" / readme), full_page=False)
