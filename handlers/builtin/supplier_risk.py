"""The ``supplier_risk`` handler: score a supplier news item by risk dimension, for aggregation.

One checkpointed LLM step, ``assess`` (``ctx.llm.extract``), reads the item into a
:class:`RiskAssessment`: the supplier it is about, the country of the affected site, a headline,
keywords, and for each of the six :data:`DIMENSIONS` — operational, financial, geopolitical,
compliance, ESG, cyber — a score from 0 to 100 with a one-sentence rationale. The rest is
deterministic and testable without an LLM: the overall score (:func:`overall_score`), the risk
level, the country as an ISO 3166-1 alpha-2 code and its region (:mod:`handlers.builtin.regions`),
with the feed's own ``supplier`` and ``country`` metadata preferred over the model's reading.

The result (:class:`SupplierRiskResult`) is flat — one field per dimension score, plus supplier,
country, region and overall score — so results aggregate with a plain group-by (average or worst
score per supplier, region or dimension).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from handlers.builtin.prompting import (
    MAX_PROMPT_CHARS,
    document_prompt,
    require_llm,
    unread_chars,
)
from handlers.builtin.regions import country_code, country_name, region_of
from handlers.context import Context
from handlers.decorator import handler
from handlers.document import Document

__all__ = [
    "ASSESS_SYSTEM",
    "DIMENSIONS",
    "DimensionAssessment",
    "RiskAssessment",
    "SupplierRiskResult",
    "build_result",
    "normalise_keywords",
    "overall_score",
    "risk_level",
    "supplier_risk",
]

Dimension = Literal["operational", "financial", "geopolitical", "compliance", "esg", "cyber"]
DIMENSIONS: tuple[Dimension, ...] = (
    "operational",
    "financial",
    "geopolitical",
    "compliance",
    "esg",
    "cyber",
)
RiskLevel = Literal["low", "moderate", "high", "critical"]
MAX_KEYWORDS = 8


class DimensionAssessment(BaseModel):
    score: int = Field(ge=0, le=100, description="0: no risk signal; 100: supply stops")
    rationale: str = Field(description="one sentence grounded in the document")


class RiskAssessment(BaseModel):
    """Step ``assess``: what the model reads from the news item (every field required)."""

    supplier: str = Field(description="the supplier the item is mainly about, as named")
    country: str | None = Field(
        description="ISO 3166-1 alpha-2 code of the country of the affected site, e.g. DE"
    )
    headline: str = Field(description="the risk event in one sentence")
    operational: DimensionAssessment
    financial: DimensionAssessment
    geopolitical: DimensionAssessment
    compliance: DimensionAssessment
    esg: DimensionAssessment
    cyber: DimensionAssessment
    keywords: list[str] = Field(description="3 to 8 short lower-case keywords")


class SupplierRiskResult(BaseModel):
    """The stored result of ``supplier_risk``: flat fields, one row per news item."""

    supplier: str
    country: str | None
    """ISO 3166-1 alpha-2 code, or None when the country could not be determined."""
    country_name: str | None
    region: str
    overall_score: int
    risk_level: RiskLevel
    primary_dimension: Dimension
    operational_score: int
    financial_score: int
    geopolitical_score: int
    compliance_score: int
    esg_score: int
    cyber_score: int
    headline: str
    keywords: list[str]
    rationales: dict[str, str]
    title: str | None = None
    published: str | None = None
    source: str | None = None
    unread_chars: int = 0
    """Characters at the end of a long document the model was not shown (the prompt keeps
    the first ``MAX_PROMPT_CHARS``); 0: it read the whole text."""


ASSESS_SYSTEM = (
    "You assess supplier risk for a procurement team. Read one news item about a supplier and "
    "score the risk it signals for a buyer that depends on this supplier, on six dimensions, "
    "each from 0 to 100: 0 = no signal, 25 = minor (monitor), 50 = material (plan "
    "mitigation), 75 = severe (supply or compliance at risk now), 100 = supply stopped or "
    "supplier unusable. Dimensions: operational (production, capacity, quality, logistics); "
    "financial (insolvency, liquidity, credit, price increases); geopolitical (sanctions, "
    "export controls, tariffs, conflict, unrest); compliance (laws, regulators, "
    "certifications, bribery, product safety); esg (environment, labour and human rights, "
    "governance); cyber (attacks, breaches, software vulnerabilities). Good news scores low. "
    "Give each score a one-sentence rationale from the item. If the item names the supplier "
    "and country in its header, assess that supplier. Also give a one-sentence headline and "
    "3 to 8 lower-case keywords."
)


@handler(topic="documents", subscription="supplier-risk", version="1")
async def supplier_risk(doc: Document, ctx: Context) -> SupplierRiskResult:
    """Score one supplier news item by risk dimension (one checkpointed LLM step)."""
    llm = require_llm(ctx)
    assessment: RiskAssessment = await ctx.step(
        "assess", llm.extract, RiskAssessment, document_prompt(doc), system=ASSESS_SYSTEM
    )
    result = build_result(doc.metadata, assessment, unread=unread_chars(doc))
    if result.unread_chars:
        ctx.logger.warning("read the first %d characters only", MAX_PROMPT_CHARS)
    ctx.logger.info(
        "%s (%s, %s): overall %d (%s), worst %s",
        result.supplier,
        result.country or "?",
        result.region,
        result.overall_score,
        result.risk_level,
        result.primary_dimension,
    )
    return result


def overall_score(scores: Mapping[str, int]) -> int:
    """The overall risk: 60 % the worst dimension, 40 % the mean of all of them.

    One severe dimension dominates (a sanctions listing is critical however sound the rest),
    while broad exposure across dimensions still raises the score.
    """
    if not scores:
        return 0
    values = [max(0, min(100, int(v))) for v in scores.values()]
    return round(0.6 * max(values) + 0.4 * sum(values) / len(values))


def risk_level(score: int) -> RiskLevel:
    """``low`` below 25, ``moderate`` below 50, ``high`` below 75, else ``critical``."""
    if score < 25:
        return "low"
    if score < 50:
        return "moderate"
    if score < 75:
        return "high"
    return "critical"


def build_result(
    metadata: Mapping[str, Any], assessment: RiskAssessment, *, unread: int = 0
) -> SupplierRiskResult:
    """The handler's output from the model's assessment and the feed's metadata (pure)."""
    scores: dict[str, int] = {name: getattr(assessment, name).score for name in DIMENSIONS}
    overall = overall_score(scores)
    primary = max(DIMENSIONS, key=lambda name: scores[name])  # ties: the first in DIMENSIONS
    given_supplier = _text(metadata.get("supplier"))
    supplier = given_supplier or assessment.supplier.strip() or "unknown"
    code = country_code(_text(metadata.get("country"))) or country_code(assessment.country)
    return SupplierRiskResult(
        supplier=supplier,
        country=code,
        country_name=country_name(code),
        region=region_of(code),
        overall_score=overall,
        risk_level=risk_level(overall),
        primary_dimension=primary,
        operational_score=scores["operational"],
        financial_score=scores["financial"],
        geopolitical_score=scores["geopolitical"],
        compliance_score=scores["compliance"],
        esg_score=scores["esg"],
        cyber_score=scores["cyber"],
        headline=assessment.headline.strip(),
        keywords=normalise_keywords(assessment.keywords),
        rationales={name: getattr(assessment, name).rationale.strip() for name in DIMENSIONS},
        title=_text(metadata.get("title")),
        published=_text(metadata.get("published")),
        source=_text(metadata.get("source")),
        unread_chars=unread,
    )


def normalise_keywords(keywords: list[str], limit: int = MAX_KEYWORDS) -> list[str]:
    """Lower-case, trimmed, without duplicates or empties, at most ``limit``."""
    kept: list[str] = []
    for keyword in keywords:
        word = " ".join(keyword.split()).lower()
        if word and word not in kept:
            kept.append(word)
    return kept[:limit]


def _text(value: Any) -> str | None:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value).strip()
        return text or None
    return None
