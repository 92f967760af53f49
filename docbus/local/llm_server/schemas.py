"""JSON Schema reading for the offline LLM server: ``$ref`` resolution and a small validator.

Covers the subset structured outputs use and pydantic emits: ``$ref``/``$defs``, ``allOf``,
``anyOf``, ``oneOf``, ``not``, ``const``, ``enum``, ``type`` (lists too), object, array, string
and number keywords, and the common ``format`` values. The instance generator
(:mod:`docbus.local.llm_server.instances`) checks its own output with :func:`schema_errors` (to keep
``oneOf`` exclusive and to prove injected violations really violate); tests use it to check
answers to hand-written schemas. Unknown keywords are ignored, as JSON Schema prescribes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

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


def _type_matches(value: Any, expected: str) -> bool:
    actual = json_type(value)
    return actual == expected or (expected == "number" and actual == "integer")


def _format_ok(fmt: str, value: str) -> bool:
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


def schema_errors(
    schema: Schema, instance: Any, root: Mapping[str, Any] | None = None
) -> list[str]:
    """Why ``instance`` does not satisfy ``schema`` (empty when it does)."""
    if root is None:
        root = schema if isinstance(schema, Mapping) else {}
    errors: list[str] = []
    _check(schema, instance, root, "$", errors)
    return errors


def is_valid(schema: Schema, instance: Any, root: Mapping[str, Any] | None = None) -> bool:
    return not schema_errors(schema, instance, root)


def _check(schema: Any, value: Any, root: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if schema is True or schema is None:
        return
    if schema is False:
        errors.append(f"{path}: no value is allowed here")
        return
    schema = resolved(schema, root)
    if not isinstance(schema, Mapping):
        return
    for sub in schema.get("allOf", ()):
        _check(sub, value, root, path, errors)
    if "anyOf" in schema and all(schema_errors(s, value, root) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema:
        matches = sum(1 for s in schema["oneOf"] if not schema_errors(s, value, root))
        if matches != 1:
            errors.append(f"{path}: matches {matches} of oneOf, expected exactly 1")
    if "not" in schema and not schema_errors(schema["not"], value, root):
        errors.append(f"{path}: matches the schema under 'not'")
    if "const" in schema and not _equal(value, schema["const"]):
        errors.append(f"{path}: expected const {schema['const']!r}")
    if "enum" in schema and not any(_equal(value, member) for member in schema["enum"]):
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    types = schema.get("type")
    if types is not None:
        options = [types] if isinstance(types, str) else list(types)
        if not any(_type_matches(value, t) for t in options):
            errors.append(f"{path}: expected {'/'.join(options)}, got {json_type(value)}")
            return
    kind = json_type(value)
    if kind == "object":
        _check_object(schema, value, root, path, errors)
    elif kind == "array":
        _check_array(schema, value, root, path, errors)
    elif kind == "string":
        _check_string(schema, value, path, errors)
    elif kind in ("integer", "number"):
        _check_number(schema, value, path, errors)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _check_object(
    schema: Mapping[str, Any],
    value: Mapping[str, Any],
    root: Mapping[str, Any],
    path: str,
    errors: list[str],
) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    patterns = schema.get("patternProperties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        matched = False
        if name in properties:
            matched = True
            _check(properties[name], item, root, f"{path}.{name}", errors)
        for pattern, sub in patterns.items():
            if re.search(pattern, name):
                matched = True
                _check(sub, item, root, f"{path}.{name}", errors)
        if not matched:
            if extra is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, Mapping):
                _check(extra, item, root, f"{path}.{name}", errors)
    if len(value) < schema.get("minProperties", 0):
        errors.append(f"{path}: fewer than {schema['minProperties']} properties")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{path}: more than {schema['maxProperties']} properties")


def _check_array(
    schema: Mapping[str, Any],
    value: list[Any],
    root: Mapping[str, Any],
    path: str,
    errors: list[str],
) -> None:
    prefix = schema.get("prefixItems")
    items = schema.get("items")
    if isinstance(items, list):  # draft 4-7 tuple form
        prefix, items = items, schema.get("additionalItems", True)
    prefix = prefix or []
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else items
        _check(sub, item, root, f"{path}[{index}]", errors)
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    if schema.get("uniqueItems"):
        seen = [repr(sorted(v.items()) if isinstance(v, Mapping) else v) for v in value]
        if len(set(seen)) != len(seen):
            errors.append(f"{path}: items are not unique")


def _check_string(schema: Mapping[str, Any], value: str, path: str, errors: list[str]) -> None:
    if len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: shorter than {schema['minLength']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']}")
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not re.search(pattern, value):
        errors.append(f"{path}: does not match pattern {pattern!r}")
    fmt = schema.get("format")
    if isinstance(fmt, str) and not _format_ok(fmt, value):
        errors.append(f"{path}: not a valid {fmt}")


def _check_number(schema: Mapping[str, Any], value: float, path: str, errors: list[str]) -> None:
    low, low_exclusive, high, high_exclusive = number_bounds(schema)
    if low is not None and (value < low or (low_exclusive and value == low)):
        errors.append(f"{path}: {value} is below the minimum {low}")
    if high is not None and (value > high or (high_exclusive and value == high)):
        errors.append(f"{path}: {value} is above the maximum {high}")
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        ratio = value / step
        if not math.isclose(ratio, round(ratio), rel_tol=1e-9, abs_tol=1e-9):
            errors.append(f"{path}: {value} is not a multiple of {step}")


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
