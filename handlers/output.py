"""Handler output: turn what a handler returns into the JSON document stored as its result.

A handler returns a pydantic model or a dict of JSON values; :func:`serialize_output` makes that a
plain ``dict`` for :meth:`docbus.store.Store.write_result`, or raises
:class:`~handlers.errors.InvalidOutput` (a dead letter: the same code would fail again) saying
what is wrong and where. Nothing is stored that reads back as something else:

- a handler whose return annotation names pydantic models (:func:`declared_output`) must return
  one of them, or a dict that validates as one (stored as that model's JSON);
- a model is stored as its own JSON (``model_dump(mode="json")``), which its fields declare;
- a dict may hold only what JSON holds — text, integers (64-bit: what a document store keeps),
  finite floats, booleans, null, lists (tuples become lists) and objects with text keys — plus
  dates and datetimes, deliberately stored as ISO 8601 text (``2025-01-02T03:04:00Z``). A set,
  bytes, a Decimal, a UUID or any other object is refused, naming the field: JSON has no such
  value, and a silent conversion (a set's order, bytes as text) would not read back the same.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from handlers.errors import InvalidOutput

__all__ = ["declared_output", "serialize_output"]

INT64 = range(-(2**63), 2**63)

_HINTS: dict[type, str] = {
    set: "JSON has no sets: return a sorted list",
    frozenset: "JSON has no sets: return a sorted list",
    bytes: "JSON has no bytes: decode them, or base64-encode them",
    bytearray: "JSON has no bytes: decode them, or base64-encode them",
}


def serialize_output(
    value: object, declared: tuple[type[BaseModel], ...] | None = None
) -> dict[str, Any]:
    """The stored form of a handler's return value; ``declared`` is what its return annotation
    declares (:func:`declared_output`), None when it declares no model."""
    if isinstance(value, BaseModel):
        if declared and not isinstance(value, declared):
            raise InvalidOutput(
                f"handler returned {type(value).__name__}, declares {_names(declared)}: return "
                "the declared model, or change the return annotation"
            )
        return _model_json(value)
    if isinstance(value, Mapping):
        if declared:
            return _model_json(_validated(value, declared))
        return _json_object(value, "")
    raise InvalidOutput(
        f"handler returned {type(value).__name__}; return a pydantic model or a dict"
    )


@functools.cache
def declared_output(fn: object) -> tuple[type[BaseModel], ...] | None:
    """The pydantic models ``fn``'s return annotation names (``-> Model`` or ``-> A | B``), or
    None for any other annotation (a dict, ``Any``, none, or one that does not resolve)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a name imported only under TYPE_CHECKING, say: nothing to check against
        return None
    returned = hints.get("return")
    if _is_model(returned):
        return (returned,)
    if typing.get_origin(returned) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(returned) if a is not type(None)]
        if members and all(_is_model(member) for member in members):
            return tuple(members)
    return None


def _is_model(annotation: object) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _names(models: tuple[type[BaseModel], ...]) -> str:
    return " | ".join(model.__name__ for model in models)


def _validated(value: Mapping[Any, Any], declared: tuple[type[BaseModel], ...]) -> BaseModel:
    problems = []
    for model in declared:
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the output"
            problems.append(f"{where}: {first['msg']}")
    raise InvalidOutput(
        f"handler returned a dict that is not a valid {_names(declared)} ({'; '.join(problems)})"
    )


def _model_json(model: BaseModel) -> dict[str, Any]:
    try:
        plain = model.model_dump(mode="json")
    except PydanticSerializationError as exc:
        raise InvalidOutput(f"{type(model).__name__} cannot be stored as JSON: {exc}") from exc
    return _json_object(plain, "")


def _json_object(value: Mapping[Any, Any], path: str) -> dict[str, Any]:
    try:
        return _object(value, path)
    except RecursionError as exc:
        raise InvalidOutput("the output is nested too deeply to store") from exc


def _object(value: Mapping[Any, Any], path: str) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidOutput(
                f"handler returned a dict with non-string keys ({key!r} in {path or 'the output'})"
            )
        if "\x00" in key:
            raise InvalidOutput(f"key {key!r} in {path or 'the output'} holds a NUL character")
        plain[key] = _value(item, f"{path}.{key}" if path else key)
    return plain


def _value(value: object, path: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value not in INT64:
            raise InvalidOutput(
                f"field {path!r} holds an integer beyond 64 bits, which a document store cannot "
                "hold: return it as text"
            )
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidOutput(f"field {path!r} holds {value}, which JSON cannot hold")
        return float(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidOutput(
                f"field {path!r} holds text that is not valid Unicode (a lone surrogate)"
            ) from exc
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return _iso(value)
    if isinstance(value, Mapping):
        return _object(value, path)
    if isinstance(value, list | tuple):
        return [_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    hint = _HINTS.get(type(value), "convert it, or return a pydantic model that declares it")
    raise InvalidOutput(
        f"field {path!r} holds a {type(value).__name__}, which is not JSON-able: {hint}"
    )


def _iso(value: dt.datetime | dt.date | dt.time) -> str:
    """ISO 8601, with ``Z`` for UTC (what pydantic writes for a model's datetime field)."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
