"""handlers.builtin: the handlers docbus ships — ``entities`` and ``supplier_risk``.

- :func:`entities` (subscription ``entities``): classify → extract typed entities → summarise and
  rank, three checkpointed LLM steps, returning :class:`EntitiesResult`.
- :func:`supplier_risk` (subscription ``supplier-risk``): risk scores by dimension with country,
  region and keywords, flat for aggregation, returning :class:`SupplierRiskResult`.

Run them with ``docbus worker --handlers handlers.builtin`` (``docbus demo`` does). Both need
``ctx.llm``: any OpenAI-compatible model, or the offline ``docbus llm-server``.
"""

from __future__ import annotations

from handlers.builtin.entities import (
    DocumentKind,
    DocumentSummary,
    EntitiesResult,
    ExtractedEntities,
    entities,
)
from handlers.builtin.regions import country_code, region_of
from handlers.builtin.supplier_risk import (
    DIMENSIONS,
    RiskAssessment,
    SupplierRiskResult,
    overall_score,
    supplier_risk,
)

__all__ = [
    "DIMENSIONS",
    "DocumentKind",
    "DocumentSummary",
    "EntitiesResult",
    "ExtractedEntities",
    "RiskAssessment",
    "SupplierRiskResult",
    "country_code",
    "entities",
    "overall_score",
    "region_of",
    "supplier_risk",
]
