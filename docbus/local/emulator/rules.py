"""Subscription rules: which topic messages a subscription takes.

A :class:`Rule` holds either a :class:`CorrelationFilter` (equality on system properties and
application properties, as Microsoft's emulator Config.json writes them) or a SQL filter compiled
by :func:`parse_sql_filter` from the subset of Service Bus's SQL grammar that topologies use:
``1=1``, ``TRUE``/``FALSE``, comparisons of ``sys.*``/``user.*``/bare property names with literals,
``IS [NOT] NULL``, ``[NOT] IN``, ``[NOT] LIKE``, ``EXISTS(...)``, ``NOT``, ``AND``, ``OR`` and
parentheses, with SQL's three-valued logic (a missing property is unknown, never a match).
Anything else is a :class:`FilterSyntaxError`. The configuration loader
(:mod:`docbus.local.emulator.config`) compiles rules at load time; the topic
(:mod:`docbus.local.emulator.broker`) asks each subscription's rules about each message it fans out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .message import BrokeredMessage

if TYPE_CHECKING:
    from .config import RuleConfig

__all__ = ["CorrelationFilter", "FilterSyntaxError", "Rule", "parse_sql_filter"]

# A predicate answers True, False or None (SQL's "unknown").
Predicate = Callable[[BrokeredMessage], "bool | None"]
_Operand = Callable[[BrokeredMessage], Any]

# sys.<name> (case-insensitive) → BrokeredMessage attribute.
_SYSTEM_PROPERTIES = {
    "label": "subject",
    "subject": "subject",
    "messageid": "message_id",
    "correlationid": "correlation_id",
    "to": "to",
    "replyto": "reply_to",
    "sessionid": "session_id",
    "replytosessionid": "reply_to_session_id",
    "contenttype": "content_type",
    "size": "size",
    "deliverycount": "delivery_count",
    "sequencenumber": "sequence_number",
}


class FilterSyntaxError(ValueError):
    """A SQL filter uses syntax this emulator does not evaluate."""


@dataclass(frozen=True, slots=True)
class CorrelationFilter:
    """Matches when every field given equals the message's; ``properties`` match app properties."""

    correlation_id: str | None = None
    message_id: str | None = None
    to: str | None = None
    reply_to: str | None = None
    subject: str | None = None  # "Label" in Config.json
    session_id: str | None = None
    reply_to_session_id: str | None = None
    content_type: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, message: BrokeredMessage) -> bool:
        for name in (
            "correlation_id", "message_id", "to", "reply_to", "subject", "session_id",
            "reply_to_session_id", "content_type",
        ):  # fmt: skip
            wanted = getattr(self, name)
            if wanted is not None and _text(getattr(message, name)) != wanted:
                return False
        app = message.application_properties
        for key, wanted in self.properties.items():
            if key not in app or not _equal(app[key], wanted):
                return False
        return True


class Rule:
    """A named filter of a subscription."""

    def __init__(
        self,
        name: str,
        *,
        correlation: CorrelationFilter | None = None,
        sql_expression: str | None = None,
    ) -> None:
        if (correlation is None) == (sql_expression is None):
            raise ValueError(f"rule {name!r}: give exactly one of a correlation or a SQL filter")
        self.name = name
        self.correlation = correlation
        self.sql_expression = sql_expression
        if sql_expression is not None:
            try:
                self._sql: Predicate | None = parse_sql_filter(sql_expression)
            except FilterSyntaxError as exc:
                raise FilterSyntaxError(f"rule {name!r}: {exc}") from exc
        else:
            self._sql = None

    @classmethod
    def from_config(cls, config: RuleConfig) -> Rule:
        return cls(
            config.name, correlation=config.correlation, sql_expression=config.sql_expression
        )

    def matches(self, message: BrokeredMessage) -> bool:
        if self._sql is not None:
            return self._sql(message) is True
        assert self.correlation is not None
        return self.correlation.matches(message)

    def __repr__(self) -> str:
        what = self.sql_expression if self.sql_expression is not None else self.correlation
        return f"Rule({self.name!r}, {what!r})"


def _text(value: Any) -> Any:
    # The wire layer may hand over AMQP strings/symbols undecoded; compare them as text.
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _equal(value: Any, wanted: Any) -> bool:
    value = _text(value)
    if isinstance(wanted, bool) or isinstance(value, bool):
        return isinstance(wanted, bool) and isinstance(value, bool) and value == wanted
    return bool(value == wanted)


# --- SQL filter -------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<string>'(?:[^']|'')*')
      | (?P<op><>|!=|<=|>=|=|<|>|\(|\)|,)
      | (?P<ident>\[[^\]]+\]|[A-Za-z_$@][\w$@]*(?:\.(?:\[[^\]]+\]|[A-Za-z_$@][\w$@]*))?)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "TRUE", "FALSE", "EXISTS", "ESCAPE"}


def parse_sql_filter(expression: str) -> Predicate:
    """Compile a Service Bus SQL filter expression into a three-valued predicate."""
    tokens = _tokenize(expression)
    parser = _Parser(tokens, expression)
    predicate = parser.parse_or()
    if parser.peek() is not None:
        raise FilterSyntaxError(
            f"unexpected {parser.peek()[1]!r} in {expression!r}"  # type: ignore[index]
        )
    return predicate


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _TOKEN_RE.match(text, position)
        if match is None or match.end() == position:
            raise FilterSyntaxError(
                f"cannot read {text[position:].strip()[:20]!r} in {expression!r}"
            )
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        if kind == "ident" and value.upper() in _KEYWORDS:
            kind, value = "keyword", value.upper()
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], expression: str) -> None:
        self.tokens = tokens
        self.expression = expression
        self.index = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FilterSyntaxError(f"{self.expression!r} ends too early")
        self.index += 1
        return token

    def accept(self, kind: str, value: str) -> bool:
        token = self.peek()
        if token is not None and token == (kind, value):
            self.index += 1
            return True
        return False

    def expect(self, kind: str, value: str) -> None:
        if not self.accept(kind, value):
            found = self.peek()
            raise FilterSyntaxError(
                f"expected {value!r} but found {found[1] if found else 'the end'!r} "
                f"in {self.expression!r}"
            )

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while self.accept("keyword", "OR"):
            left = _or(left, self.parse_and())
        return left

    def parse_and(self) -> Predicate:
        left = self.parse_not()
        while self.accept("keyword", "AND"):
            left = _and(left, self.parse_not())
        return left

    def parse_not(self) -> Predicate:
        if self.accept("keyword", "NOT"):
            inner = self.parse_not()
            return lambda m: None if (v := inner(m)) is None else not v
        return self.parse_predicate()

    def parse_predicate(self) -> Predicate:
        if self.accept("op", "("):
            inner = self.parse_or()
            self.expect("op", ")")
            return inner
        if self.accept("keyword", "EXISTS"):
            self.expect("op", "(")
            kind, name = self.take()
            if kind != "ident":
                raise FilterSyntaxError(f"EXISTS needs a property name in {self.expression!r}")
            self.expect("op", ")")
            getter = _property(name, self.expression)
            return lambda m: getter(m) is not None
        token = self.peek()
        if token in (("keyword", "TRUE"), ("keyword", "FALSE")):
            following = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else None
            if following is None or following[0] == "keyword" or following == ("op", ")"):
                self.index += 1
                constant = token == ("keyword", "TRUE")
                return lambda m: constant
        left = self.parse_operand()
        if self.accept("keyword", "IS"):
            negate = self.accept("keyword", "NOT")
            self.expect("keyword", "NULL")
            return lambda m: (left(m) is None) != negate
        negate = self.accept("keyword", "NOT")
        if self.accept("keyword", "IN"):
            self.expect("op", "(")
            options = [self.parse_operand()]
            while self.accept("op", ","):
                options.append(self.parse_operand())
            self.expect("op", ")")
            return _negated(_in(left, options), negate)
        if self.accept("keyword", "LIKE"):
            kind, pattern = self.take()
            if kind != "string":
                raise FilterSyntaxError(f"LIKE needs a quoted pattern in {self.expression!r}")
            escape = None
            if self.accept("keyword", "ESCAPE"):
                kind, escape = self.take()
                if kind != "string" or len(escape) != 3:
                    raise FilterSyntaxError(
                        f"ESCAPE needs one quoted character in {self.expression!r}"
                    )
                escape = escape[1]
            return _negated(_like(left, _unquote(pattern), escape), negate)
        if negate:
            raise FilterSyntaxError(f"NOT must precede IN or LIKE here in {self.expression!r}")
        token = self.peek()
        if token is None or token[0] != "op" or token[1] in ("(", ")", ","):
            raise FilterSyntaxError(
                f"expected a comparison (=, <>, <, <=, >, >=, IS, IN, LIKE) after an operand "
                f"in {self.expression!r}"
            )
        operator = self.take()[1]
        right = self.parse_operand()
        return _compare(operator, left, right)

    def parse_operand(self) -> _Operand:
        kind, value = self.take()
        if kind == "number":
            number: float | int = float(value) if any(c in value for c in ".eE") else int(value)
            return lambda m: number
        if kind == "string":
            text = _unquote(value)
            return lambda m: text
        if kind == "keyword" and value in ("TRUE", "FALSE"):
            flag = value == "TRUE"
            return lambda m: flag
        if kind == "keyword" and value == "NULL":
            return lambda m: None
        if kind == "ident":
            return _property(value, self.expression)
        raise FilterSyntaxError(f"unexpected {value!r} in {self.expression!r}")


def _unquote(literal: str) -> str:
    return literal[1:-1].replace("''", "'")


def _property(name: str, expression: str) -> _Operand:
    scope, _, rest = name.partition(".")
    if not rest:
        scope, rest = "user", name
    scope = scope.lower()
    rest = rest[1:-1] if rest.startswith("[") and rest.endswith("]") else rest
    if scope == "sys":
        attribute = _SYSTEM_PROPERTIES.get(rest.lower())
        if attribute is None:
            raise FilterSyntaxError(
                f"unknown system property sys.{rest} in {expression!r}; known: "
                f"{', '.join(sorted(_SYSTEM_PROPERTIES))}"
            )
        return lambda m: _text(getattr(m, attribute))
    if scope == "user":
        return lambda m: _text(m.application_properties.get(rest))
    raise FilterSyntaxError(
        f"unknown property scope {scope!r} in {expression!r} (use sys. or user.)"
    )


def _comparable(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool)
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return True
    return type(left) is type(right)


def _compare(operator: str, left: _Operand, right: _Operand) -> Predicate:
    def predicate(message: BrokeredMessage) -> bool | None:
        a, b = left(message), right(message)
        if a is None or b is None or not _comparable(a, b):
            return None
        try:
            if operator == "=":
                return bool(a == b)
            if operator in ("<>", "!="):
                return bool(a != b)
            if operator == "<":
                return bool(a < b)
            if operator == "<=":
                return bool(a <= b)
            if operator == ">":
                return bool(a > b)
            return bool(a >= b)
        except TypeError:
            return None

    return predicate


def _in(left: _Operand, options: list[_Operand]) -> Predicate:
    def predicate(message: BrokeredMessage) -> bool | None:
        value = left(message)
        if value is None:
            return None
        return any(_comparable(value, o) and value == o for o in (opt(message) for opt in options))

    return predicate


def _like(left: _Operand, pattern: str, escape: str | None) -> Predicate:
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if escape is not None and char == escape and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
        index += 1
    regex = re.compile("".join(parts), re.DOTALL)

    def predicate(message: BrokeredMessage) -> bool | None:
        value = left(message)
        if not isinstance(value, str):
            return None
        return regex.fullmatch(value) is not None

    return predicate


def _negated(predicate: Predicate, negate: bool) -> Predicate:
    if not negate:
        return predicate
    return lambda m: None if (v := predicate(m)) is None else not v


def _and(left: Predicate, right: Predicate) -> Predicate:
    def predicate(message: BrokeredMessage) -> bool | None:
        a = left(message)
        if a is False:
            return False
        b = right(message)
        if b is False:
            return False
        return None if a is None or b is None else True

    return predicate


def _or(left: Predicate, right: Predicate) -> Predicate:
    def predicate(message: BrokeredMessage) -> bool | None:
        a = left(message)
        if a is True:
            return True
        b = right(message)
        if b is True:
            return True
        return None if a is None or b is None else False

    return predicate
