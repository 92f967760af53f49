"""The offline LLM server's answers, through the real openai SDK: schemas, text, usage, streams."""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import uuid
from typing import Any, Literal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, Field

from docbus.local.llm_server import (
    OFFLINE_MODEL,
    LLMServer,
    LLMServerConfig,
    count_tokens,
    schema_errors,
)
from docbus.local.llm_server.text import COUNTRIES
from tests.local.llm_server.llm_samples import FIRE, INVOICE, STRIKE, TEXTS


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class RiskScore(BaseModel):
    dimension: Literal["financial", "operational", "geopolitical", "logistics"]
    score: float = Field(ge=0, le=1)
    severity: Severity
    country: str
    region: str
    keywords: list[str] = Field(min_length=2, max_length=4)


class SupplierRisk(BaseModel):
    supplier: str
    summary: str = Field(max_length=200)
    risks: list[RiskScore] = Field(min_length=1, max_length=3)
    published: dt.date | None
    confidence: float = Field(gt=0, lt=1)
    priority: int = Field(ge=1, le=5)


class Entity(BaseModel):
    name: str
    kind: Literal["person", "organization", "location"]
    mentions: int = Field(gt=0, le=100)


class Node(BaseModel):
    label: str
    children: list[Node]


class Extraction(BaseModel):
    title: str
    document_type: Literal["invoice", "news", "contract", "report"]
    entities: list[Entity]
    amount: float | None = Field(ge=0, multiple_of=0.01)
    tree: Node
    counts: dict[str, int]
    created: dt.datetime
    contact: str | None


MODELS = (SupplierRisk, Extraction, Entity)

HAND_WRITTEN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "contact": {"type": "string", "format": "email"},
        "link": {"type": "string", "format": "uri"},
        "sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "step": {"type": "number", "minimum": 1, "maximum": 2, "multipleOf": 0.25},
        "count": {"type": "integer", "minimum": 3, "maximum": 3},
        "kind": {"const": "report"},
        "status": {"enum": ["open", "closed"]},
        "tags": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 2,
            "uniqueItems": True,
        },
        "owner": {"$ref": "#/$defs/Person"},
        "alt": {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
        "maybe": {"type": ["string", "null"]},
        "short": {"type": "string", "minLength": 5, "maxLength": 8},
    },
    "required": [
        "id",
        "when",
        "day",
        "contact",
        "link",
        "sku",
        "ratio",
        "step",
        "count",
        "kind",
        "status",
        "tags",
        "owner",
        "alt",
        "maybe",
        "short",
    ],
    "additionalProperties": False,
    "$defs": {
        "Person": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 18, "maximum": 99},
            },
            "required": ["name", "age"],
            "additionalProperties": False,
        }
    },
}


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": "Extract the requested fields from the document."},
        {"role": "user", "content": text},
    ]


def json_schema_format(schema: dict[str, Any], name: str = "answer") -> ResponseFormatJSONSchema:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("text", TEXTS, ids=("fire", "strike", "invoice"))
def test_parse_returns_valid_pydantic_instances(
    client: openai.OpenAI, model: type[BaseModel], text: str
) -> None:
    completion = client.chat.completions.parse(
        model="gpt-4o-mini", messages=ask(text), response_format=model
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, model)
    assert completion.model == "gpt-4o-mini"  # any requested name is echoed back


async def test_plain_json_schema_from_pydantic_is_valid(aclient: openai.AsyncOpenAI) -> None:
    for text in TEXTS:
        schema = SupplierRisk.model_json_schema()  # not strict: $defs, anyOf, defaults
        completion = await aclient.chat.completions.create(
            model=OFFLINE_MODEL,
            messages=ask(text),
            response_format=json_schema_format(schema),
        )
        content = completion.choices[0].message.content or ""
        SupplierRisk.model_validate_json(content)
        assert schema_errors(schema, json.loads(content)) == []


@pytest.mark.parametrize("text", TEXTS, ids=("fire", "strike", "invoice"))
def test_hand_written_schema_keywords_are_honoured(client: openai.OpenAI, text: str) -> None:
    completion = client.chat.completions.create(
        model=OFFLINE_MODEL,
        messages=ask(text),
        response_format=json_schema_format(HAND_WRITTEN_SCHEMA),
    )
    value = json.loads(completion.choices[0].message.content or "")
    assert set(value) == set(HAND_WRITTEN_SCHEMA["properties"])
    uuid.UUID(value["id"])
    assert dt.datetime.fromisoformat(value["when"].replace("Z", "+00:00")).tzinfo is not None
    dt.date.fromisoformat(value["day"])
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.\w+", value["contact"])
    assert value["link"].startswith(("http://", "https://"))
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{4}", value["sku"])
    assert 0 < value["ratio"] < 1
    assert 1 <= value["step"] <= 2 and (value["step"] * 4).is_integer()
    assert value["count"] == 3 and isinstance(value["count"], int)
    assert value["kind"] == "report"
    assert value["status"] in ("open", "closed")
    assert len(value["tags"]) == 2 and len(set(value["tags"])) == 2
    assert set(value["owner"]) == {"name", "age"} and 18 <= value["owner"]["age"] <= 99
    assert isinstance(value["alt"], int) or len(value["alt"]) <= 3
    assert value["maybe"] is None or isinstance(value["maybe"], str)
    assert 5 <= len(value["short"]) <= 8
    assert schema_errors(HAND_WRITTEN_SCHEMA, value) == []


def test_fields_are_drawn_from_the_document(client: openai.OpenAI) -> None:
    parsed = (
        client.chat.completions.parse(
            model=OFFLINE_MODEL, messages=ask(FIRE), response_format=SupplierRisk
        )
        .choices[0]
        .message.parsed
    )
    assert parsed is not None
    assert parsed.supplier in FIRE
    assert parsed.published == dt.date(2024, 3, 5)
    assert parsed.summary.split()[0] in FIRE
    words = FIRE.lower()
    for risk in parsed.risks:
        assert risk.country in ("Taiwan", "Germany")
        assert risk.region == COUNTRIES[risk.country]
        assert all(keyword in words for keyword in risk.keywords)
        assert risk.severity is Severity.HIGH  # the only severity the text mentions

    invoice = (
        client.chat.completions.parse(
            model=OFFLINE_MODEL, messages=ask(INVOICE), response_format=Extraction
        )
        .choices[0]
        .message.parsed
    )
    assert invoice is not None
    assert invoice.document_type == "invoice"
    assert invoice.entities[0].name in INVOICE


def test_same_input_same_output_and_different_input_different_output(
    client: openai.OpenAI, llm_server: LLMServer
) -> None:
    def answer(text: str) -> str:
        completion = client.chat.completions.create(
            model=OFFLINE_MODEL,
            messages=ask(text),
            response_format=json_schema_format(SupplierRisk.model_json_schema()),
        )
        return completion.choices[0].message.content or ""

    first = answer(FIRE)
    assert answer(FIRE) == first
    with (
        LLMServer(LLMServerConfig(seed=99)).in_thread() as other,
        openai.OpenAI(base_url=other.base_url, api_key="x", max_retries=0) as other_client,
    ):
        again = other_client.chat.completions.create(
            model=OFFLINE_MODEL,
            messages=ask(FIRE),
            response_format=json_schema_format(SupplierRisk.model_json_schema()),
        )
    assert again.choices[0].message.content == first  # content depends on the request only
    assert answer(STRIKE) != first
    assert answer(FIRE + " Update: the plant reopened.") != first


def test_usage_counts_prompt_and_completion_tokens(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=OFFLINE_MODEL, messages=[{"role": "user", "content": "Hello, world!"}]
    )
    usage = completion.usage
    assert usage is not None
    # 3 to prime the reply + 3 per message + "user" + "Hello" "," "world" "!"
    assert usage.prompt_tokens == 3 + 3 + 1 + 4
    content = completion.choices[0].message.content or ""
    assert usage.completion_tokens == count_tokens(content) > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    longer = client.chat.completions.create(model=OFFLINE_MODEL, messages=ask(FIRE))
    assert longer.usage is not None and longer.usage.prompt_tokens > usage.prompt_tokens


def test_plain_text_is_an_extractive_summary(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=OFFLINE_MODEL, messages=ask(FIRE))
    content = completion.choices[0].message.content or ""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", FIRE)]
    assert content and all(s.strip() in sentences for s in re.split(r"(?<=[.!?])\s+", content))
    assert len(content) < len(FIRE)


def test_json_object_honours_a_schema_in_the_prompt(client: openai.OpenAI) -> None:
    schema = Entity.model_json_schema()
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": f"Answer with JSON matching: {json.dumps(schema)}"},
        {"role": "user", "content": STRIKE},
    ]
    completion = client.chat.completions.create(
        model=OFFLINE_MODEL, messages=messages, response_format={"type": "json_object"}
    )
    Entity.model_validate_json(completion.choices[0].message.content or "")

    bare = client.chat.completions.create(
        model=OFFLINE_MODEL, messages=ask(STRIKE), response_format={"type": "json_object"}
    )
    value = json.loads(bare.choices[0].message.content or "")
    assert isinstance(value, dict) and value


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=OFFLINE_MODEL,
        messages=ask(FIRE),
        response_format=json_schema_format(SupplierRisk.model_json_schema()),
        max_completion_tokens=5,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content or "")
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model=OFFLINE_MODEL, messages=ask(FIRE), response_format=SupplierRisk, max_tokens=5
        )


async def test_stream_yields_the_same_content_and_usage(aclient: openai.AsyncOpenAI) -> None:
    whole = await aclient.chat.completions.create(model=OFFLINE_MODEL, messages=ask(STRIKE))
    stream = await aclient.chat.completions.create(
        model=OFFLINE_MODEL,
        messages=ask(STRIKE),
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 2 and finish == "stop"
    assert usage is not None and usage.total_tokens == (whole.usage and whole.usage.total_tokens)


async def test_in_loop_server_and_models_endpoints() -> None:
    async with LLMServer(LLMServerConfig(strict_model=True)) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.base_url)
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk:
            models = await sdk.models.list()
            assert [m.id for m in models.data] == [OFFLINE_MODEL]
            assert (await sdk.models.retrieve(OFFLINE_MODEL)).id == OFFLINE_MODEL
            with pytest.raises(openai.NotFoundError):
                await sdk.models.retrieve("gpt-4o")
            with pytest.raises(openai.NotFoundError) as caught:
                await sdk.chat.completions.create(model="gpt-4o", messages=ask(FIRE))
            assert caught.value.code == "model_not_found"
            ok = await sdk.chat.completions.create(model=OFFLINE_MODEL, messages=ask(FIRE))
            assert ok.model == OFFLINE_MODEL


def test_n_choices_each_get_their_own_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=OFFLINE_MODEL,
        messages=ask(FIRE),
        response_format=json_schema_format(SupplierRisk.model_json_schema()),
        n=3,
    )
    contents = [choice.message.content or "" for choice in completion.choices]
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert len(set(contents)) == 3
    for content in contents:
        SupplierRisk.model_validate_json(content)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == sum(count_tokens(c) for c in contents)
