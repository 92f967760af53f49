"""Strings that match a regular expression, for JSON schema ``pattern`` keywords.

:func:`sample_pattern` reads the pattern with a small parser of its own for the regex features
schemas use (literals and escapes, classes and ranges, ``\\d \\w \\s`` and their negations,
``.``, quantifiers, groups, alternation, anchors) and emits one random matching string, or
``None`` for what it cannot sample (back-references, look-arounds, flags, anything it does not
know). The instance generator (:mod:`docbus.local.llm_server.instances`) tries it after the
prompt's own matches, and checks every result with ``re.search`` as the JSON Schema spec does,
so a string the parser got wrong is never used.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

__all__ = ["sample_pattern"]

_POOL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.,"
_EXTRA_REPEATS = 3  # an open-ended repeat (``*``, ``+``, ``{m,}``) adds at most this many
_CLASSES: dict[str, Callable[[str], bool]] = {
    "d": str.isdigit,
    "w": lambda c: c.isalnum() or c == "_",
    "s": str.isspace,
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}

Emit = Callable[[random.Random, list[str]], None]


def sample_pattern(pattern: str, rng: random.Random) -> str | None:
    """A random string matching ``pattern``, for the regex features schemas use, or None."""
    try:
        re.compile(pattern)
        emit = _Parser(pattern).parse()
        out: list[str] = []
        emit(rng, out)
    except (re.error, _Unsupported, RecursionError):
        return None
    text = "".join(out)
    return text if re.search(pattern, text) else None


class _Unsupported(Exception):
    """A regex feature the sampler does not emit strings for."""


class _Parser:
    """Recursive descent over one pattern; each ``_*`` method returns an emitter."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.at = 0

    def parse(self) -> Emit:
        emit = self._alternation()
        if self.at != len(self.text):
            raise _Unsupported(f"unexpected {self.text[self.at]!r}")
        return emit

    def _peek(self) -> str | None:
        return self.text[self.at] if self.at < len(self.text) else None

    def _take(self) -> str:
        if self.at >= len(self.text):
            raise _Unsupported("unexpected end")
        char = self.text[self.at]
        self.at += 1
        return char

    def _alternation(self) -> Emit:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.at += 1
            branches.append(self._sequence())
        if len(branches) == 1:
            return branches[0]
        return lambda rng, out: rng.choice(branches)(rng, out)

    def _sequence(self) -> Emit:
        parts: list[Emit] = []
        while self._peek() not in (None, "|", ")"):
            parts.append(self._repeat(self._atom()))

        def emit(rng: random.Random, out: list[str]) -> None:
            for part in parts:
                part(rng, out)

        return emit

    def _repeat(self, atom: Emit) -> Emit:
        char = self._peek()
        if char == "*":
            low, high = 0, None
        elif char == "+":
            low, high = 1, None
        elif char == "?":
            low, high = 0, 1
        elif char == "{" and re.match(r"\{\d+(,\d*)?\}", self.text[self.at :]):
            end = self.text.index("}", self.at)
            low_text, comma, high_text = self.text[self.at + 1 : end].partition(",")
            low = int(low_text)
            high = int(high_text) if high_text else (None if comma else low)
            self.at = end
        else:
            return atom
        self.at += 1
        if self._peek() in ("?", "+"):  # lazy or possessive: the same strings match
            self.at += 1
        top = low + _EXTRA_REPEATS if high is None else min(high, low + _EXTRA_REPEATS)

        def emit(rng: random.Random, out: list[str]) -> None:
            for _ in range(rng.randint(low, top)):
                atom(rng, out)

        return emit

    def _atom(self) -> Emit:
        char = self._take()
        if char == "(":
            if self._peek() == "?":
                if self.text[self.at : self.at + 2] != "?:":
                    raise _Unsupported("look-around, named group or flags")
                self.at += 2
            inner = self._alternation()
            if self._take() != ")":
                raise _Unsupported("unbalanced group")
            return inner
        if char in "^$":
            return _nothing
        if char == ".":
            return _one_of("abcdefghijklmnopqrstuvwxyz")
        if char == "[":
            return self._class()
        if char == "\\":
            return self._escape()
        if char in "*+?{":
            raise _Unsupported(f"nothing to repeat at {char!r}")
        return _literal(char)

    def _escape(self) -> Emit:
        char = self._take()
        if char in "bBAZ":
            return _nothing  # word boundary and anchors emit nothing
        test = _CLASSES.get(char.lower())
        if test is not None:
            negate = char.isupper()
            return _one_of("".join(c for c in _POOL if test(c) != negate))
        if char.isdigit() or char in "xuUNpPk":
            raise _Unsupported(f"escape \\{char}")
        return _literal(_ESCAPES.get(char, char))

    def _class(self) -> Emit:
        negate = self._peek() == "^"
        if negate:
            self.at += 1
        tests: list[Callable[[str], bool]] = []
        pool = set(_POOL)
        first = True
        while True:
            char = self._take()
            if char == "]" and not first:
                break
            first = False
            if char == "\\":
                escaped = self._take()
                test = _CLASSES.get(escaped.lower())
                if test is not None:
                    tests.append(test if escaped.islower() else _negated(test))
                    continue
                if escaped.isdigit() or escaped in "xuUNpP":
                    raise _Unsupported(f"escape \\{escaped} in a class")
                char = _ESCAPES.get(escaped, escaped)
            if self._peek() == "-" and self.text[self.at + 1 : self.at + 2] not in ("", "]"):
                self.at += 1
                end = self._take()
                if end == "\\":
                    end = self._take()
                low, high = ord(char), ord(end)
                tests.append(_in_range(low, high))
                if not negate:
                    pool.update(chr(code) for code in range(low, min(high, low + 200) + 1))
            else:
                tests.append(char.__eq__)
                if not negate:
                    pool.add(char)
        choices = "".join(sorted(c for c in pool if any(t(c) for t in tests) != negate))
        if not choices:
            raise _Unsupported("empty character class")
        return _one_of(choices)


def _nothing(rng: random.Random, out: list[str]) -> None:
    return None


def _literal(char: str) -> Emit:
    return lambda rng, out: out.append(char)


def _one_of(choices: str) -> Emit:
    if not choices:
        raise _Unsupported("empty character class")
    return lambda rng, out: out.append(rng.choice(choices))


def _in_range(low: int, high: int) -> Callable[[str], bool]:
    return lambda c: low <= ord(c) <= high


def _negated(test: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda c: not test(c)
