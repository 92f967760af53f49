"""JSON Schema reading for the offline LLM server: ``$ref`` resolution and validation.

:func:`resolved` follows a local ``$ref`` chain for the instance generator
(:mod:`docbus.local.llm_server.instances`), which reads keywords to build an answer;
:func:`schema_errors` validates with the ``jsonschema`` library (draft 2020-12, the common
``format`` values checked, ``multipleOf`` with a float tolerance). The generator checks its own
output with it (to keep ``oneOf`` exclusive and to prove injected violations really violate);
tests use it to check answers to hand-written schemas.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

Schema = Mapping[str, Any] | bool

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s]*$")
_MAX_REF_HOPS = 64


def resolve_ref(root: Mapping[str, Any], ref: str) -> Any:
    """The schema a local ``$ref`` (``#/$defs/Name``) points at inside ``root``."""
    if ref in ("#", ""):
        return root
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ValueError(f"unresolvable $ref {ref!r}")
    return node


def resolved(schema: Any, root: Mapping[str, Any]) -> Any:
    """``schema`` with any ``$ref`` chain followed; sibling keywords override the target's."""
    hops = 0
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
        hops += 1
        if hops > _MAX_REF_HOPS:
            raise ValueError("$ref cycle")
        target = resolve_ref(root, schema["$ref"])
        if not isinstance(target, Mapping):
            return target
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}
    return schema


def json_type(value: Any) -> str:
    """The JSON type name of a Python value (``integer`` for whole numbers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _format_ok(fmt: str, value: object) -> bool:
    if not isinstance(value, str):
        return True  # format constrains strings only
    try:
        if fmt == "date":
            dt.date.fromisoformat(value)
        elif fmt == "date-time":
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return "T" in value or " " in value
        elif fmt == "time":
            dt.time.fromisoformat(value.replace("Z", "+00:00"))
        elif fmt == "email":
            return bool(_EMAIL.match(value))
        elif fmt in ("uri", "url", "iri"):
            return bool(_URI.match(value))
        elif fmt == "uuid":
            uuid.UUID(value)
    except ValueError:
        return False
    return True


def _formats() -> FormatChecker:
    """The ``format`` values checked (jsonschema's own checkers for some of them need optional
    packages)."""
    checker = FormatChecker(formats=())
    for fmt in ("date", "date-time", "time", "email", "uri", "url", "iri", "uuid"):
        checker.checks(fmt)(functools.partial(_format_ok, fmt))
    return checker


def _multiple_of(
    validator: Any, step: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    """``multipleOf`` with a float tolerance: 0.3 is a multiple of 0.1 (a strict division says
    2.9999999999999996 is not a whole number)."""
    if not validator.is_type(instance, "number") or not _is_number(step) or step <= 0:
        return
    ratio = instance / step
    if not math.isclose(ratio, round(ratio), rel_tol=1e-9, abs_tol=1e-9):
        yield ValidationError(f"{instance} is not a multiple of {step}")


_Validator = validators.extend(Draft202012Validator, {"multipleOf": _multiple_of})
_FORMATS = _formats()


@functools.lru_cache(maxsize=256)
def _root_validator(root_json: str) -> Any:
    return _Validator(json.loads(root_json), format_checker=_FORMATS)


def schema_errors(
    schema: Schema, instance: Any, root: Mapping[str, Any] | None = None
) -> list[str]:
    """Why ``instance`` does not satisfy ``schema`` (empty when it does); a ``$ref`` in it
    resolves inside ``root`` (default: ``schema`` itself)."""
    if root is None:
        root = schema if isinstance(schema, Mapping) else {}
    validator = _root_validator(json.dumps(root, sort_keys=True, default=str))
    if schema is not root:
        # the same reference resolver (rooted at ``root``), another schema to check
        validator = validator.evolve(schema=schema)
    return [_describe(error) for error in validator.iter_errors(instance)]


def is_valid(schema: Schema, instance: Any, root: Mapping[str, Any] | None = None) -> bool:
    return not schema_errors(schema, instance, root)


def _describe(error: ValidationError) -> str:
    return f"{error.json_path}: {error.message}"


def number_bounds(schema: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """``(low, low_exclusive, high, high_exclusive)`` from either draft's bound keywords."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_ex = high_ex = False
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_min is True:  # draft 4: a flag on minimum
        low_ex = True
    elif _is_number(ex_min) and (low is None or ex_min >= low):
        low, low_ex = ex_min, True
    if ex_max is True:
        high_ex = True
    elif _is_number(ex_max) and (high is None or ex_max <= high):
        high, high_ex = ex_max, True
    return low, low_ex, high, high_ex


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
