"""Handler output: turn what a handler returns into the JSON document stored as its result.

A handler returns a pydantic model or a dict of JSON-able values; :func:`serialize_output` makes
that a plain ``dict`` for :meth:`docbus.store.Store.write_result`, or raises
:class:`~handlers.errors.InvalidOutput` (a dead letter: the same code would fail again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from handlers.errors import InvalidOutput

__all__ = ["serialize_output"]


def serialize_output(value: object) -> dict[str, Any]:
    """The stored form of a handler's return value."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise InvalidOutput("handler returned a dict with non-string keys")
        try:
            plain = to_jsonable_python(dict(value))
        except PydanticSerializationError as exc:
            raise InvalidOutput(f"handler returned a dict that is not JSON-able: {exc}") from exc
        return dict(plain)
    raise InvalidOutput(
        f"handler returned {type(value).__name__}; return a pydantic model or a dict"
    )
