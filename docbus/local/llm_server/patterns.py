"""Strings that match a regular expression, for JSON schema ``pattern`` keywords.

:func:`sample_pattern` walks the standard library's parse of the pattern (literals, classes,
categories, repeats, groups, alternation, anchors) and emits one random matching string, or ``None``
for what it cannot sample (back-references, look-arounds that constrain). The instance generator
(:mod:`docbus.local.llm_server.instances`) tries it after the prompt's own matches, and checks every
result with ``re.search`` as the JSON Schema spec does.
"""

from __future__ import annotations

import importlib
import random
import re
from typing import Any

_sre: Any = importlib.import_module("re._parser")  # the stdlib regex parser (no public API)


def sample_pattern(pattern: str, rng: random.Random) -> str | None:
    """A random string matching ``pattern``, for the regex features schemas use, or None."""
    try:
        parsed = _sre.parse(pattern)
    except (re.error, RecursionError, ValueError):
        return None
    out: list[str] = []
    try:
        _emit(parsed, rng, out)
    except (_Unsupported, RecursionError):
        return None
    text = "".join(out)
    return text if re.search(pattern, text) else None


class _Unsupported(Exception):
    pass


_POOL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,"


def _emit(items: Any, rng: random.Random, out: list[str]) -> None:
    for op, arg in items:
        if op is _sre.LITERAL:
            out.append(chr(arg))
        elif op is _sre.NOT_LITERAL:
            out.append(next(c for c in _POOL if ord(c) != arg))
        elif op is _sre.ANY:
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyz"))
        elif op is _sre.IN:
            out.append(_pick_in(arg, rng))
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            top = low + 3 if high is _sre.MAXREPEAT else min(high, low + 3)
            for _ in range(rng.randint(low, top)):
                _emit(sub, rng, out)
        elif op is _sre.SUBPATTERN:
            _emit(arg[-1], rng, out)
        elif op is _sre.BRANCH:
            _emit(rng.choice(arg[1]), rng, out)
        elif op is _sre.ATOMIC_GROUP:
            _emit(arg, rng, out)
        elif op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            continue
        else:
            raise _Unsupported(str(op))


def _pick_in(items: Any, rng: random.Random) -> str:
    negate = bool(items) and items[0][0] is _sre.NEGATE
    members = items[1:] if negate else items

    def contains(char: str) -> bool:
        for op, arg in members:
            if op is _sre.LITERAL and ord(char) == arg:
                return True
            if op is _sre.RANGE and arg[0] <= ord(char) <= arg[1]:
                return True
            if op is _sre.CATEGORY and _in_category(char, arg):
                return True
        return False

    pool = set(_POOL)
    if not negate:
        for op, arg in members:
            if op is _sre.LITERAL:
                pool.add(chr(arg))
            elif op is _sre.RANGE:
                pool.update(chr(c) for c in range(arg[0], min(arg[1], arg[0] + 200) + 1))
    choices = sorted(c for c in pool if contains(c) != negate)
    if not choices:
        raise _Unsupported("empty character class")
    return rng.choice(choices)


def _in_category(char: str, category: Any) -> bool:
    name = str(category)
    negated = "NOT_" in name
    if "DIGIT" in name:
        hit = char.isdigit()
    elif "SPACE" in name:
        hit = char.isspace()
    elif "WORD" in name:
        hit = char.isalnum() or char == "_"
    else:
        raise _Unsupported(name)
    return hit != negated
