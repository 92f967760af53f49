"""Chat completions of the offline LLM server: from an OpenAI request body to the answer.

:class:`ChatRequest` checks the request body the way OpenAI does (400 on what it would reject);
:func:`complete` builds the deterministic answer — an instance of the ``json_schema`` response
format (:mod:`docbus.local.llm_server.instances`), a JSON object for ``json_object`` (honouring a
JSON schema found in the prompt), or an extractive summary for plain text
(:mod:`docbus.local.llm_server.text`) — then applies ``max_tokens`` truncation and the content
faults, and counts usage (:mod:`docbus.local.llm_server.tokens`). :func:`completion_body` and
:func:`chunk_bodies` render the ``chat.completion`` and streamed ``chat.completion.chunk`` JSON.
No I/O: the server (:mod:`docbus.local.llm_server.server`) handles HTTP, limits and timing.
``tools``, ``logprobs`` and sampling parameters are accepted and ignored; ``seed`` and ``n``
are honoured (each choice has its own deterministic answer).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from docbus.local.llm_server import errors
from docbus.local.llm_server.instances import generate_instance, malform, violate
from docbus.local.llm_server.text import analyse, summarise
from docbus.local.llm_server.tokens import (
    content_text,
    count_tokens,
    prompt_tokens,
    split_tokens,
    truncate_to_tokens,
)

SYSTEM_FINGERPRINT = "fp_docbus_offline"
_MAX_SCHEMA_SCAN = 64  # '{' positions tried when looking for a JSON schema in a prompt

Mode = Literal["text", "json_schema", "json_object"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a ``POST /v1/chat/completions`` body the server acts on."""

    model: str
    messages: tuple[Mapping[str, Any], ...]
    mode: Mode = "text"
    schema: Mapping[str, Any] | None = None
    max_tokens: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None

    @classmethod
    def from_body(cls, body: Any, *, json_schema: bool = True) -> ChatRequest:
        """Validate ``body``; raises :class:`~docbus.local.llm_server.errors.APIError` (400).

        ``json_schema`` False rejects that response format as servers without it do.
        """
        if not isinstance(body, Mapping):
            raise errors.bad_request("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("you must provide a model parameter", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise errors.bad_request(
                "Invalid 'messages': expected a non-empty array of messages.", param="messages"
            )
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise errors.bad_request(
                    f"Invalid 'messages[{index}]': each message needs a 'role'.",
                    param=f"messages[{index}]",
                )
        mode: Mode = "text"
        schema = None
        response_format = body.get("response_format")
        if response_format is not None:
            kind = response_format.get("type") if isinstance(response_format, Mapping) else None
            if kind == "json_schema" and not json_schema:
                raise errors.bad_request(
                    "Invalid parameter: 'response_format' of type 'json_schema' is not supported "
                    "with this model.",
                    param="response_format",
                )
            if kind == "json_schema":
                spec = response_format.get("json_schema")
                if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
                    raise errors.bad_request(
                        "Missing required parameter: 'response_format.json_schema.name'.",
                        param="response_format.json_schema",
                    )
                schema = spec.get("schema", {})
                if not isinstance(schema, Mapping):
                    raise errors.bad_request(
                        "Invalid 'response_format.json_schema.schema': expected an object.",
                        param="response_format.json_schema.schema",
                    )
                mode = "json_schema"
            elif kind == "json_object":
                mode = "json_object"
            elif kind != "text":
                raise errors.bad_request(
                    f"Invalid value for 'response_format.type': {kind!r}. Supported values "
                    "are: 'json_object', 'json_schema', and 'text'.",
                    param="response_format.type",
                )
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise errors.bad_request(
                "Invalid 'max_tokens': expected an integer >= 1.", param="max_tokens"
            )
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            raise errors.bad_request("Invalid 'n': expected an integer in [1, 128].", param="n")
        stream_options = body.get("stream_options") or {}
        seed = body.get("seed")
        return cls(
            model=model,
            messages=tuple(messages),
            mode=mode,
            schema=schema,
            max_tokens=max_tokens,
            n=n,
            stream=bool(body.get("stream")),
            include_usage=bool(
                isinstance(stream_options, Mapping) and stream_options.get("include_usage")
            ),
            seed=seed if isinstance(seed, int) else None,
        )

    def source_text(self) -> str:
        """The text answers are drawn from: the last user message (else all messages)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                text = content_text(message.get("content"))
                if text.strip():
                    return text
        return "\n".join(content_text(m.get("content")) for m in self.messages)

    def digest(self) -> bytes:
        """The hash that seeds every content choice: same messages, same answer."""
        canonical = json.dumps([self.messages, self.seed], sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True, slots=True)
class Choice:
    content: str
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer to one request, before it is rendered."""

    choices: tuple[Choice, ...]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def truncated(self) -> bool:
        return any(choice.finish_reason == "length" for choice in self.choices)

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }


def count_prompt(request: ChatRequest, context_tokens: int) -> int:
    """Prompt tokens of ``request``; raises 400 ``context_length_exceeded`` over the limit."""
    tokens = prompt_tokens(request.messages, request.schema)
    if tokens + (request.max_tokens or 0) > context_tokens:
        raise errors.context_length_exceeded(context_tokens, tokens, request.max_tokens)
    return tokens


def complete(
    request: ChatRequest, *, context_tokens: int, content_fault: str | None = None
) -> Completion:
    """The deterministic answer to ``request`` (``content_fault``: ``malformed``/``schema``)."""
    prompt = count_prompt(request, context_tokens)
    choices = []
    for index in range(request.n):
        seed = request.digest() + index.to_bytes(4, "big")
        content = _content(request, seed, content_fault)
        finish: Literal["stop", "length"] = "stop"
        if request.max_tokens is not None and count_tokens(content) > request.max_tokens:
            content = truncate_to_tokens(content, request.max_tokens)
            finish = "length"
        choices.append(Choice(content, finish, count_tokens(content)))
    return Completion(tuple(choices), prompt)


def _content(request: ChatRequest, seed: bytes, fault: str | None) -> str:
    text = request.source_text()
    if request.mode == "text":
        return summarise(text)
    facts = analyse(text)
    schema = request.schema
    if request.mode == "json_object" and schema is None:
        schema = find_schema("\n".join(content_text(m.get("content")) for m in request.messages))
    if schema is not None:
        value: Any = generate_instance(schema, facts, seed)
    else:
        value = {"summary": summarise(text), "keywords": list(facts.keywords[:5])}
    fault_rng = random.Random(seed + b"fault")
    if fault == "schema":
        value = violate(schema, value, fault_rng) if schema is not None else [value]
    rendered = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if fault == "malformed":
        rendered = malform(rendered, fault_rng)
    return rendered


def find_schema(text: str) -> Mapping[str, Any] | None:
    """The largest JSON object in ``text`` that looks like a JSON schema, if any."""
    decoder = json.JSONDecoder()
    best: Mapping[str, Any] | None = None
    best_size = 0
    position = text.find("{")
    tried = 0
    while position != -1 and tried < _MAX_SCHEMA_SCAN:
        tried += 1
        try:
            value, end = decoder.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, Mapping) and _looks_like_schema(value) and end - position > best_size:
            best, best_size = value, end - position
        position = text.find("{", end if isinstance(value, Mapping) else position + 1)
    return best


def _looks_like_schema(value: Mapping[str, Any]) -> bool:
    if "$schema" in value or "properties" in value:
        return True
    return value.get("type") in ("object", "array") and ("items" in value or "$defs" in value)


def completion_body(
    completion: Completion, *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """The ``chat.completion`` JSON for a non-streamed answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
        "choices": [
            {
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": choice.content,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(completion.choices)
        ],
        "usage": completion.usage(),
    }


def chunk_bodies(
    completion: Completion,
    *,
    model: str,
    completion_id: str,
    created: int,
    include_usage: bool,
    tokens_per_chunk: int = 4,
) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` JSON objects of a streamed answer, in order."""
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body = {
            **base,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
        if include_usage:
            body["usage"] = None
        return body

    for index, choice in enumerate(completion.choices):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
        pieces = split_tokens(choice.content)
        for start in range(0, len(pieces), tokens_per_chunk):
            yield chunk(index, {"content": "".join(pieces[start : start + tokens_per_chunk])})
        yield chunk(index, {}, choice.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": completion.usage()}
