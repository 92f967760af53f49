"""The built-in handlers, run with ``run_handler`` against the real offline LLM server and store.

The offline model answers every JSON schema validly but without understanding, so these tests
check what the handlers own — the steps and their checkpoints, the schemas the model must fill,
the normalisation and scoring done in code, prompts and logs — not the model's judgement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
from importlib.resources import files
from typing import Any

import pytest

from docbus.local.llm_server import LLMServer
from docbus.store import Store
from docbus.topology import load_topology
from handlers import DeadLetter, Document, SystemicFailure, run_handler
from handlers.builtin import (
    DIMENSIONS,
    EntitiesResult,
    SupplierRiskResult,
    country_code,
    entities,
    overall_score,
    region_of,
    supplier_risk,
)
from handlers.builtin.entities import (
    CLASSIFY_SYSTEM,
    EXTRACT_SYSTEM,
    SUMMARISE_SYSTEM,
    Amount,
    DateMention,
    DocumentKind,
    DocumentSummary,
    ExtractedEntities,
    KeyPoint,
    Location,
    Organisation,
    build_result,
    rank_key_points,
)
from handlers.builtin.prompting import MAX_PROMPT_CHARS, document_prompt
from handlers.builtin.supplier_risk import (
    ASSESS_SYSTEM,
    DimensionAssessment,
    RiskAssessment,
    normalise_keywords,
    risk_level,
)
from handlers.builtin.supplier_risk import build_result as build_risk
from handlers.runtime import discover_handlers
from tests.handlers.llm_support import chat_requests, make_client

SYSTEM_PROMPTS = {
    "classify": CLASSIFY_SYSTEM,
    "extract": EXTRACT_SYSTEM,
    "summarise": SUMMARISE_SYSTEM,
    "assess": ASSESS_SYSTEM,
}
SAMPLES = files("docbus") / "samples" / "supplier_news.jsonl"


def sample_documents() -> list[Document]:
    docs = []
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record.get("text"), str) or not record["text"].strip():
            continue
        metadata = {k: v for k, v in record.items() if k != "text"}
        docs.append(
            Document(
                doc_id=record["id"], batch_id="samples", text=record["text"], metadata=metadata
            )
        )
    return docs


FIRE = sample_documents()[0]  # the Hallbrook plant fire in Zwickau, Germany


# -- entities ----------------------------------------------------------------------------------


async def test_entities_runs_three_checkpointed_steps_and_a_redelivery_repeats_none(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        result = await run_handler(entities, FIRE, store=store, llm=client)
        assert isinstance(result, EntitiesResult)
        calls = await store.llm_calls("samples", doc_id=FIRE.doc_id)
        assert [c.step for c in calls] == ["classify", "extract", "summarise"]
        assert {c.handler for c in calls} == {"entities"}
        assert all(c.error_type is None and c.mode == "json_schema" for c in calls)
        before = chat_requests(llm_server)

        again = await run_handler(entities, FIRE, store=store, llm=client, delivery_count=2)
    assert chat_requests(llm_server) == before  # every step came from its checkpoint
    assert again == result


async def test_after_a_crash_before_the_last_checkpoint_only_summarise_runs_again(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        first = await run_handler(entities, FIRE, store=store, llm=client)
        # As if the worker died after step 2: the summarise checkpoint was never written.
        await store.database["checkpoints"].delete_many(
            {"doc_id": FIRE.doc_id, "step": "summarise"}
        )
        before = chat_requests(llm_server)
        resumed = await run_handler(entities, FIRE, store=store, llm=client, delivery_count=2)
    assert chat_requests(llm_server) == before + 1
    calls = await store.llm_calls("samples", doc_id=FIRE.doc_id)
    assert [(c.step, c.attempt) for c in calls][-1] == ("summarise", 2)
    assert resumed == first  # the offline model is deterministic


async def test_entities_result_is_normalised_from_what_the_model_named(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        result: EntitiesResult = await run_handler(entities, FIRE, store=store, llm=client)
    assert result.title == FIRE.metadata["title"]
    assert 0 <= result.confidence <= 1
    assert result.summary
    assert [p.rank for p in result.key_points] == list(range(1, len(result.key_points) + 1))
    importances = [p.importance for p in result.key_points]
    assert importances == sorted(importances, reverse=True)
    for location in result.locations:
        assert location.region == region_of(location.country_code)
    assert all(a.currency.isupper() and len(a.currency) == 3 for a in result.amounts)
    names = [o.name.casefold() for o in result.organisations]
    assert len(names) == len(set(names))


def test_build_result_maps_countries_to_codes_ranks_points_and_drops_duplicates() -> None:
    kind = DocumentKind(document_type="news_article", event="accident", confidence=0.9)
    found = ExtractedEntities(
        organisations=[
            Organisation(name="Hallbrook", role="supplier"),
            Organisation(name="HALLBROOK", role="supplier"),
        ],
        people=[],
        locations=[
            Location(name="Zwickau", country="Germany"),
            Location(name="Brno", country="CZ"),
            Location(name="Ivory Coast", country=None),
            Location(name="Atlantis", country=None),
        ],
        dates=[DateMention(date="2025-02", what="allocation ends")],
        amounts=[Amount(value=9_000_000, currency="EUR", what="damage")],
        products=[],
    )
    summary = DocumentSummary(
        summary=" A fire stopped caliper production. ",
        key_points=[
            KeyPoint(statement="Insurers are assessing.", importance=2),
            KeyPoint(statement="Production stops for three weeks.", importance=5),
            KeyPoint(statement="Stock covers eight days.", importance=5),
            KeyPoint(statement="production stops for three weeks.", importance=1),
        ],
    )
    result = build_result({"title": "Fire at Hallbrook"}, kind, found, summary)
    assert [o.name for o in result.organisations] == ["Hallbrook"]
    assert [(loc.name, loc.country_code, loc.region) for loc in result.locations] == [
        ("Zwickau", "DE", "Europe"),
        ("Brno", "CZ", "Europe"),
        ("Ivory Coast", "CI", "Africa"),
        ("Atlantis", None, "Unknown"),
    ]
    assert result.summary == "A fire stopped caliper production."
    assert [(p.rank, p.statement) for p in result.key_points] == [
        (1, "Production stops for three weeks."),
        (2, "Stock covers eight days."),
        (3, "Insurers are assessing."),
    ]


def test_key_points_are_capped() -> None:
    points = [KeyPoint(statement=f"point {n}", importance=1 + n % 5) for n in range(9)]
    ranked = rank_key_points(points, limit=5)
    assert len(ranked) == 5 and ranked[0].importance == 5


# -- supplier_risk ----------------------------------------------------------------------------


async def test_supplier_risk_scores_six_dimensions_with_the_feeds_supplier_and_country(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        result = await run_handler(supplier_risk, FIRE, store=store, llm=client)
    assert isinstance(result, SupplierRiskResult)
    assert (result.supplier, result.country, result.country_name, result.region) == (
        "Hallbrook Fahrzeugteile GmbH",
        "DE",
        "Germany",
        "Europe",
    )
    scores = {name: getattr(result, f"{name}_score") for name in DIMENSIONS}
    assert all(0 <= score <= 100 for score in scores.values())
    assert result.overall_score == overall_score(scores)
    assert result.risk_level == risk_level(result.overall_score)
    assert scores[result.primary_dimension] == max(scores.values())
    assert set(result.rationales) == set(DIMENSIONS)
    assert result.keywords and all(k == k.lower() for k in result.keywords)
    assert (result.published, result.source) == ("2025-01-14", "Supply Chain Wire")
    [call] = await store.llm_calls("samples", doc_id=FIRE.doc_id)
    assert (call.step, call.handler) == ("assess", "supplier_risk")


async def test_without_feed_metadata_the_country_comes_from_the_model(
    llm_server: LLMServer, store: Store
) -> None:
    async with make_client(llm_server, store) as client:
        result = await run_handler(supplier_risk, FIRE.text, store=store, llm=client)
    # The offline model names a country the text names: Germany or the Czech Republic.
    assert result.country in {"DE", "CZ"}
    assert result.region == "Europe"
    assert result.supplier  # read from the text


def assessment(**scores: int) -> RiskAssessment:
    dims = {
        name: DimensionAssessment(score=scores.get(name, 0), rationale=f" {name} reason ")
        for name in DIMENSIONS
    }
    return RiskAssessment(
        supplier="Model Name Ltd",
        country="Japan",
        headline=" Sanctions listing. ",
        keywords=["Sanctions", "export controls ", "sanctions", "", "Chips"],
        **dims,
    )


def test_build_result_prefers_the_feed_and_flattens_scores() -> None:
    result = build_risk(
        {"supplier": "Qingtai Microdevices", "country": "CN", "title": "T"},
        assessment(geopolitical=90, compliance=60),
    )
    assert (result.supplier, result.country, result.region) == (
        "Qingtai Microdevices",
        "CN",
        "East Asia",
    )
    assert (result.geopolitical_score, result.compliance_score, result.cyber_score) == (90, 60, 0)
    assert result.overall_score == round(0.6 * 90 + 0.4 * 150 / 6) == 64
    assert (result.risk_level, result.primary_dimension) == ("high", "geopolitical")
    assert result.keywords == ["sanctions", "export controls", "chips"]
    assert result.rationales["esg"] == "esg reason"
    assert result.headline == "Sanctions listing."
    fallback = build_risk({}, assessment(cyber=10))
    assert (fallback.supplier, fallback.country, fallback.region) == (
        "Model Name Ltd",
        "JP",
        "East Asia",
    )
    unknown = build_risk({"country": "Atlantis"}, assessment().model_copy(update={"country": None}))
    assert (unknown.country, unknown.region) == (None, "Unknown")


def test_overall_score_is_dominated_by_the_worst_dimension() -> None:
    assert overall_score({}) == 0
    assert overall_score(dict.fromkeys(DIMENSIONS, 0)) == 0
    assert overall_score(dict.fromkeys(DIMENSIONS, 100)) == 100
    one_severe = {**dict.fromkeys(DIMENSIONS, 0), "geopolitical": 100}
    broad = dict.fromkeys(DIMENSIONS, 50)
    assert overall_score(one_severe) == 67 > overall_score(broad) == 50
    assert [risk_level(s) for s in (0, 24, 25, 49, 50, 74, 75, 100)] == [
        "low", "low", "moderate", "moderate", "high", "high", "critical", "critical",
    ]  # fmt: skip
    assert normalise_keywords([f"k{n}" for n in range(12)]) == [f"k{n}" for n in range(8)]


# -- both --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [entities, supplier_risk], ids=["entities", "supplier_risk"])
async def test_a_worker_without_an_llm_is_a_systemic_failure_not_a_dead_letter(fn: Any) -> None:
    with pytest.raises(SystemicFailure) as caught:
        await run_handler(fn, FIRE)
    assert caught.value.reason == "LLMNotConfigured"


async def test_answers_that_never_fit_the_schema_dead_letter_in_the_first_step(
    llm_server: LLMServer, store: Store
) -> None:
    llm_server.configure(faults={"rate_schema": 1.0})
    async with make_client(llm_server, store) as client:
        with pytest.raises(DeadLetter) as caught:
            await run_handler(entities, FIRE, store=store, llm=client)
    assert caught.value.reason == "SchemaValidationFailed"
    assert getattr(caught.value, "step", None) == "classify"


async def test_every_sample_document_gets_valid_results_from_both_handlers(
    llm_server: LLMServer, store: Store
) -> None:
    docs = sample_documents()
    assert len(docs) == 71  # 70 valid lines plus the correction that reuses sn-005's id
    limit = asyncio.Semaphore(16)

    async def both(doc: Document) -> tuple[EntitiesResult, SupplierRiskResult]:
        async with limit:
            found = await run_handler(entities, doc, store=store, llm=client)
            risk = await run_handler(supplier_risk, doc, store=store, llm=client)
            return found, risk

    async with make_client(llm_server, store) as client:
        results = await asyncio.gather(*(both(doc) for doc in docs))
    for doc, (found, risk) in zip(docs, results, strict=True):
        assert found.title == doc.metadata["title"]
        assert risk.supplier == doc.metadata["supplier"]
        assert risk.country == doc.metadata["country"]
        assert risk.region != "Unknown", doc.metadata["country"]
    assert len(await store.llm_calls("samples")) == 4 * len(docs)


async def test_prompts_carry_the_document_and_logs_never_do(
    llm_server: LLMServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("handlers", "docbus"):  # docbus's own loggers (drivers log at DEBUG themselves)
        caplog.set_level(logging.DEBUG, logger=name)
    async with make_client(llm_server, store) as client:
        await run_handler(entities, FIRE, store=store, llm=client)
        await run_handler(supplier_risk, FIRE, store=store, llm=client)
    ours = [r for r in caplog.records if r.name.split(".")[0] in ("handlers", "docbus")]
    assert {r.name for r in ours} >= {"handlers.entities", "handlers.supplier_risk"}
    first_sentence = FIRE.text.split(". ")[0]
    assert not any(first_sentence in record.getMessage() for record in ours)
    for call in await store.llm_calls("samples", doc_id=FIRE.doc_id):
        system, user = call.messages[0], call.messages[-1]
        assert system == {"role": "system", "content": SYSTEM_PROMPTS[call.step]}
        assert FIRE.text in user["content"]


def test_document_prompt_puts_text_between_markers_then_feed_metadata_and_cuts_long_text() -> None:
    prompt = document_prompt(FIRE, note="Classified as: news article.")
    assert prompt.startswith("Document:\n<<<\n" + FIRE.text + "\n>>>")
    assert "- supplier: Hallbrook Fahrzeugteile GmbH" in prompt
    assert "- country: DE" in prompt and "- id:" not in prompt
    assert prompt.endswith("Classified as: news article.")
    long = Document(doc_id="x", batch_id="b", text="word " * 1000)
    cut = document_prompt(long, max_chars=100)
    assert "[... cut: the document continues for" in cut
    assert len(cut) < 250


@pytest.mark.parametrize("fn", [entities, supplier_risk])
async def test_a_result_drawn_from_part_of_a_long_document_says_how_much_was_unread(
    fn: Any, llm_server: LLMServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    long = dataclasses.replace(FIRE, doc_id="long", text=FIRE.text + " more" * 12_000)
    async with make_client(llm_server, store) as client:
        whole = await run_handler(fn, FIRE, store=store, llm=client)
        part = await run_handler(fn, long, store=store, llm=client)
    assert whole.unread_chars == 0
    assert part.unread_chars == len(long.text.strip()) - MAX_PROMPT_CHARS > 0
    assert any("first 48000 characters only" in r.getMessage() for r in caplog.records)


# -- package -----------------------------------------------------------------------------------


def test_the_package_offers_both_handlers_on_the_topologys_subscriptions() -> None:
    registered = {h.name: h.spec for h in discover_handlers("handlers.builtin")}
    assert set(registered) == {"entities", "supplier_risk"}
    topology = load_topology()
    subscriptions = {
        (topic.name, sub.name) for topic in topology.topics for sub in topic.subscriptions
    }
    for spec in registered.values():
        assert (spec.topic, spec.subscription) in subscriptions
        assert spec.version == "1"


def test_builtin_public_names_are_its_sorted_all() -> None:
    module = importlib.import_module("handlers.builtin")
    exported = list(module.__all__)

    def isort_key(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2), name

    assert exported == sorted(exported, key=isort_key)
    assert all(getattr(module, name) is not None for name in exported)


def test_regions_read_codes_names_and_aliases() -> None:
    assert [country_code(v) for v in ("de", "Germany", "Türkiye", "U.S.", "DR Congo", "GBR")] == [
        "DE", "DE", "TR", "US", "CD", "GB",
    ]  # fmt: skip
    assert country_code("Atlantis") is None and country_code(None) is None
    assert region_of("MX") == "North America" and region_of("zz") == "Unknown"
