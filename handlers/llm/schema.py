"""Response schemas: from a pydantic model to what the LLM is asked for, and back.

:meth:`ResponseSchema.of` turns a pydantic model class into the JSON schema sent as an OpenAI
``response_format`` of type ``json_schema``, with ``strict: true`` where the schema allows it:
every object lists all its properties as required, has no free-form ``additionalProperties``
(``dict[str, X]`` fields), and uses only keywords strict mode accepts. The strict form closes
every object (``additionalProperties: false``) and inlines ``$ref``\\s that carry sibling keys
(a described nested model). Any other schema is sent non-strict, unchanged, rather than
rewritten into something that means less. For servers without structured outputs the same
schema goes into the prompt (:meth:`ResponseSchema.instructions`) with JSON mode or plain text.

:func:`parse_answer` validates an answer (code fences tolerated) and :func:`describe_errors`
renders a validation error compactly for a re-ask and for the dead letter. No I/O.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = ["ResponseSchema", "describe_errors", "parse_answer"]

M = TypeVar("M", bound=BaseModel)

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)

# Keywords OpenAI's strict structured outputs accept; a schema using others is sent non-strict.
_STRICT_KEYWORDS = frozenset(
    {
        "$defs",
        "$ref",
        "additionalProperties",
        "anyOf",
        "const",
        "description",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "items",
        "maxItems",
        "maximum",
        "minItems",
        "minimum",
        "multipleOf",
        "pattern",
        "properties",
        "required",
        "title",
        "type",
    }
)


class _NotStrict(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ResponseSchema:
    """The JSON schema of a pydantic model as sent to an LLM."""

    name: str
    schema: dict[str, Any]
    strict: bool

    @classmethod
    def of(cls, model: type[BaseModel]) -> ResponseSchema:
        """The (cached) response schema of ``model``."""
        return _schema_of(model)

    def response_format(self) -> dict[str, Any]:
        """The ``response_format`` parameter for structured outputs."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.schema, "strict": self.strict},
        }

    def instructions(self) -> str:
        """What to tell a model that cannot be given the schema as a parameter."""
        return (
            "Answer with one JSON object, and nothing else, that is valid against this JSON "
            f"schema:\n{json.dumps(self.schema, separators=(',', ':'))}"
        )


@functools.lru_cache(maxsize=256)
def _schema_of(model: type[BaseModel]) -> ResponseSchema:
    raw = model.model_json_schema()
    name = _NAME_UNSAFE.sub("_", model.__name__)[:64] or "response"
    try:
        strict = _strict_form(raw)
    except _NotStrict:
        return ResponseSchema(name, raw, strict=False)
    return ResponseSchema(name, strict, strict=True)


def _strict_form(schema: dict[str, Any]) -> dict[str, Any]:
    root = copy.deepcopy(schema)
    if root.get("type") != "object":
        raise _NotStrict("the root must be an object")
    return _close(root, root)


def _close(node: Any, root: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_close(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    unknown = set(node) - _STRICT_KEYWORDS
    if unknown:
        raise _NotStrict(f"keywords {sorted(unknown)}")
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        resolved = _resolve(root, ref)
        merged = {**resolved, **{k: v for k, v in node.items() if k != "$ref"}}
        return _close(merged, root)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            result[key] = {name: _close(sub, root) for name, sub in value.items()}
        elif key in ("items", "anyOf", "additionalProperties"):
            result[key] = _close(value, root)
        else:
            result[key] = value
    if node.get("type") == "object" or "properties" in node:
        properties = node.get("properties", {})
        if node.get("additionalProperties") not in (None, False):
            raise _NotStrict("free-form additionalProperties")
        if set(node.get("required", [])) != set(properties):
            raise _NotStrict("optional properties")
        result["additionalProperties"] = False
        result["required"] = list(properties)
    return result


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise _NotStrict(f"external $ref {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, dict) or part not in node:
            raise _NotStrict(f"unresolvable $ref {ref}")
        node = node[part]
    if not isinstance(node, dict):
        raise _NotStrict(f"$ref {ref} is not a schema")
    return node


def parse_answer(model: type[M], text: str) -> M:
    """Validate an LLM's answer against ``model``; raises pydantic's ``ValidationError``."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    return model.model_validate_json(stripped)


def describe_errors(error: ValidationError, limit: int = 600) -> str:
    """``loc: message; ...`` for the first errors of ``error``, within ``limit`` characters."""
    parts = []
    for item in error.errors(include_url=False)[:8]:
        location = ".".join(str(part) for part in item.get("loc", ())) or "(answer)"
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    more = error.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"
