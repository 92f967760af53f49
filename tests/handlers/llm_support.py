"""Shared pieces of the LLM client tests: models at module level (step checkpoints re-import
them by class path), a context builder and a client pointed at the offline server."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from docbus.envelope import Envelope
from docbus.local.llm_server import LLMServer
from docbus.settings import LLMSettings, Settings
from docbus.store import Store
from handlers import Context
from handlers.llm import LLMClient
from handlers.runtime import HandlerSpec, open_context

INVOICE_TEXT = (
    "Invoice INV-2024-117 from Acme Industrial GmbH, Berlin, Germany, to Globex Corporation "
    "in Toronto, Canada. Total due 12,450.00 EUR by 2024-09-30 for 40 hydraulic pumps and "
    "installation services."
)


class Party(BaseModel):
    name: str
    country: str


class Invoice(BaseModel):
    number: str
    total: float
    currency: str
    seller: Party = Field(description="who issued the invoice")
    buyer: Party
    items: list[str]


class Summary(BaseModel):
    summary: str
    keywords: list[str]


def make_ctx(
    store: Store | None,
    *,
    batch_id: str = "b1",
    doc_id: str = "d1",
    text: str = INVOICE_TEXT,
    handler: str = "invoices",
    version: str = "1",
    attempt: int = 1,
    llm: Any = None,
    write_behind: bool = False,
) -> Context:
    envelope = Envelope(doc_id=doc_id, batch_id=batch_id, topic="documents", content=text)
    spec = HandlerSpec(name=handler, topic="documents", subscription=handler, version=version)
    return open_context(
        envelope, spec, delivery_count=attempt, store=store, llm=llm, write_behind=write_behind
    )


def make_client(server: LLMServer, store: Store | None = None, **llm: Any) -> LLMClient:
    settings = Settings(llm=LLMSettings(base_url=server.base_url, model="docbus-offline", **llm))
    return LLMClient.from_settings(settings, store)


def chat_requests(server: LLMServer) -> int:
    """Chat-completion requests the server has seen."""
    return int(server.stats()["requests"])


def seed_for(faults: Any, contents: list[str | None]) -> int:
    """A server seed whose first requests get exactly these content faults, in order."""
    import random

    from docbus.local.llm_server.config import Latency
    from docbus.local.llm_server.faults import plan_faults

    for seed in range(10_000):
        plans = [
            plan_faults(faults, Latency(), random.Random(f"{seed}:{n}")).content
            for n in range(len(contents))
        ]
        if plans == contents:
            return seed
    raise AssertionError(f"no seed gives {contents}")


def status_seed_for(faults: Any, statuses: list[str | None]) -> int:
    """A server seed whose first requests get exactly these status faults, in order."""
    import random

    from docbus.local.llm_server.config import Latency
    from docbus.local.llm_server.faults import plan_faults

    for seed in range(10_000):
        plans = [
            plan_faults(faults, Latency(), random.Random(f"{seed}:{n}")).status
            for n in range(len(statuses))
        ]
        if plans == statuses:
            return seed
    raise AssertionError(f"no seed gives {statuses}")
