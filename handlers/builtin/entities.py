"""The ``entities`` handler: classify a document, extract typed entities, summarise and rank.

Three checkpointed LLM steps (:meth:`handlers.context.Context.step`), each a validated structured
output (``ctx.llm.extract``):

1. ``classify`` → :class:`DocumentKind`: the document type, the event it reports and a confidence;
2. ``extract`` → :class:`ExtractedEntities`: organisations (with their role), people, locations
   (with the country), dates, money amounts with currency, and products — told what kind of
   document it reads, from step 1;
3. ``summarise`` → :class:`DocumentSummary`: a short summary and key points with an importance.

The handler then normalises what the model gave — countries to ISO 3166-1 alpha-2 codes and
regions (:mod:`handlers.builtin.regions`), currencies upper-cased, duplicates dropped, key points
ranked by importance — and returns an :class:`EntitiesResult`. A redelivery after a crash
resumes after the last finished step. The document's text goes into the prompts (cut at
:data:`MAX_PROMPT_CHARS`), never into logs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from handlers.builtin.prompting import (
    MAX_PROMPT_CHARS,
    document_prompt,
    require_llm,
    unread_chars,
)
from handlers.builtin.regions import country_code, region_of
from handlers.context import Context
from handlers.decorator import handler
from handlers.document import Document

__all__ = [
    "CLASSIFY_SYSTEM",
    "EXTRACT_SYSTEM",
    "SUMMARISE_SYSTEM",
    "DocumentKind",
    "DocumentSummary",
    "EntitiesResult",
    "ExtractedEntities",
    "build_result",
    "entities",
    "rank_key_points",
]

T = TypeVar("T")

DocumentType = Literal[
    "news_article",
    "press_release",
    "regulatory_notice",
    "financial_report",
    "contract",
    "audit_report",
    "correspondence",
    "other",
]
EventType = Literal[
    "accident",
    "natural_disaster",
    "labour_action",
    "sanctions",
    "financial_distress",
    "certification",
    "contract",
    "investment",
    "cyber_incident",
    "price_change",
    "esg",
    "recall",
    "quality",
    "regulatory",
    "logistics",
    "other",
]
OrganisationRole = Literal[
    "supplier", "customer", "regulator", "government", "financial", "industry_body", "other"
]

# -- what the LLM is asked for (strict-schema friendly: every field required, no defaults) ------


class DocumentKind(BaseModel):
    """Step ``classify``: what kind of document this is and what it reports."""

    document_type: DocumentType = Field(description="the kind of document")
    event: EventType = Field(description="the main event or subject the document reports")
    confidence: float = Field(ge=0, le=1, description="how sure the classification is, 0 to 1")


class Organisation(BaseModel):
    name: str = Field(description="the organisation's name as written")
    role: OrganisationRole = Field(description="its role in the story")


class Person(BaseModel):
    name: str
    title: str | None = Field(description="job title or role, if stated")


class Location(BaseModel):
    name: str = Field(description="the place: a city, site, province or country")
    country: str | None = Field(
        description="ISO 3166-1 alpha-2 code of the country the place is in, e.g. DE"
    )


class DateMention(BaseModel):
    date: str = Field(
        pattern=r"^\d{4}-\d{2}(-\d{2})?$",
        description="ISO date YYYY-MM-DD, or YYYY-MM when no day is given",
    )
    what: str = Field(description="what happens or happened on that date")


class Amount(BaseModel):
    value: float = Field(description="the number, in units of the currency")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR")
    what: str = Field(description="what the amount is (price, fine, contract value...)")


class Product(BaseModel):
    name: str
    category: str | None = Field(description="a short product category, if clear")


class ExtractedEntities(BaseModel):
    """Step ``extract``: the entities the document names."""

    organisations: list[Organisation]
    people: list[Person]
    locations: list[Location]
    dates: list[DateMention]
    amounts: list[Amount]
    products: list[Product]


class KeyPoint(BaseModel):
    statement: str = Field(description="one key point, one sentence")
    importance: int = Field(ge=1, le=5, description="5: most important for a buyer")


class DocumentSummary(BaseModel):
    """Step ``summarise``: a summary and the key points."""

    summary: str = Field(description="two or three sentences")
    key_points: list[KeyPoint]


# -- what the handler returns ------------------------------------------------------------------


class ResultLocation(BaseModel):
    name: str
    country_code: str | None
    """ISO 3166-1 alpha-2, or None when the country is unknown."""
    region: str


class RankedPoint(BaseModel):
    rank: int
    statement: str
    importance: int


class EntitiesResult(BaseModel):
    """The stored result of the ``entities`` handler."""

    title: str | None = None
    document_type: DocumentType
    event: EventType
    confidence: float
    organisations: list[Organisation]
    people: list[Person]
    locations: list[ResultLocation]
    dates: list[DateMention]
    amounts: list[Amount]
    products: list[Product]
    summary: str
    key_points: list[RankedPoint]
    unread_chars: int = 0
    """Characters at the end of a long document the model was not shown (the prompt keeps
    the first ``MAX_PROMPT_CHARS``); 0: it read the whole text."""


# -- prompts -----------------------------------------------------------------------------------

CLASSIFY_SYSTEM = (
    "You classify business documents for a procurement team. Read the document and answer "
    "with its type (a news article, press release, regulatory notice, financial report, "
    "contract, audit report, correspondence, or other), the main event it reports (for "
    "example an accident, natural disaster, strike, sanctions, financial distress, "
    "certification, contract, recall or cyber incident; 'other' if none fits), and your "
    "confidence between 0 and 1. Judge only from the text."
)
EXTRACT_SYSTEM = (
    "You extract named entities from business documents. List every organisation with its "
    "role in the story, every person with their title when stated, every location with the "
    "ISO 3166-1 alpha-2 code of its country (null if unknown), every date in ISO form with "
    "what happens on it, every money amount with its ISO 4217 currency and what it is, and "
    "every product or material named. Use the names as written in the document. Do not "
    "invent entities; return empty lists when there are none."
)
SUMMARISE_SYSTEM = (
    "You summarise business documents for a busy buyer. Write a neutral summary of two or "
    "three sentences, then up to five key points of one sentence each, each with an "
    "importance from 1 (background) to 5 (act on it now). Use only facts from the document."
)


@handler(topic="documents", subscription="entities", version="1")
async def entities(doc: Document, ctx: Context) -> EntitiesResult:
    """Classify, extract and summarise one document (three checkpointed LLM steps)."""
    llm = require_llm(ctx)
    prompt = document_prompt(doc)
    kind: DocumentKind = await ctx.step(
        "classify", llm.extract, DocumentKind, prompt, system=CLASSIFY_SYSTEM
    )
    classified = f"Classified as: {_words(kind.document_type)}, about {_words(kind.event)}."
    found: ExtractedEntities = await ctx.step(
        "extract",
        llm.extract,
        ExtractedEntities,
        document_prompt(doc, note=classified),
        system=EXTRACT_SYSTEM,
    )
    summary: DocumentSummary = await ctx.step(
        "summarise", llm.extract, DocumentSummary, prompt, system=SUMMARISE_SYSTEM
    )
    result = build_result(doc.metadata, kind, found, summary, unread=unread_chars(doc))
    if result.unread_chars:
        ctx.logger.warning("read the first %d characters only", MAX_PROMPT_CHARS)
    ctx.logger.info(
        "%s/%s: %d organisations, %d people, %d locations, %d amounts, %d key points",
        result.document_type,
        result.event,
        len(result.organisations),
        len(result.people),
        len(result.locations),
        len(result.amounts),
        len(result.key_points),
    )
    return result


def _words(identifier: str) -> str:
    return identifier.replace("_", " ")


def build_result(
    metadata: Mapping[str, Any],
    kind: DocumentKind,
    found: ExtractedEntities,
    summary: DocumentSummary,
    *,
    unread: int = 0,
) -> EntitiesResult:
    """The handler's output from its three steps' answers (pure: no I/O)."""
    title = metadata.get("title")
    locations = []
    for location in _unique(found.locations, lambda item: item.name.casefold()):
        code = country_code(location.country) or country_code(location.name)
        locations.append(
            ResultLocation(name=location.name, country_code=code, region=region_of(code))
        )
    amounts = [a.model_copy(update={"currency": a.currency.upper()}) for a in found.amounts]
    return EntitiesResult(
        title=str(title) if title else None,
        document_type=kind.document_type,
        event=kind.event,
        confidence=round(kind.confidence, 3),
        organisations=_unique(found.organisations, lambda item: item.name.casefold()),
        people=_unique(found.people, lambda item: item.name.casefold()),
        locations=locations,
        dates=_unique(found.dates, lambda item: (item.date, item.what.casefold())),
        amounts=_unique(amounts, lambda item: (item.value, item.currency, item.what.casefold())),
        products=_unique(found.products, lambda item: item.name.casefold()),
        summary=summary.summary.strip(),
        key_points=rank_key_points(summary.key_points),
        unread_chars=unread,
    )


def rank_key_points(points: list[KeyPoint], limit: int = 5) -> list[RankedPoint]:
    """Key points by importance (most important first; ties keep the model's order), deduped."""
    unique = _unique(points, lambda item: item.statement.strip().casefold())
    ordered = sorted((p for p in unique if p.statement.strip()), key=lambda item: -item.importance)
    return [
        RankedPoint(rank=rank, statement=point.statement.strip(), importance=point.importance)
        for rank, point in enumerate(ordered[:limit], start=1)
    ]


def _unique(items: list[T], key: Callable[[T], Hashable]) -> list[T]:
    seen: set[Hashable] = set()
    kept: list[T] = []
    for item in items:
        marker = key(item)
        if marker not in seen:
            seen.add(marker)
            kept.append(item)
    return kept
