"""Subscription rules: correlation filters and the SQL filter subset."""

from __future__ import annotations

import pytest

from docbus.local.emulator.message import BrokeredMessage
from docbus.local.emulator.rules import CorrelationFilter, FilterSyntaxError, Rule, parse_sql_filter


def message(**facts: object) -> BrokeredMessage:
    m = BrokeredMessage()
    for key, value in facts.items():
        setattr(m, key, value)
    return m


SAMPLE = message(
    subject="invoice",
    message_id="m-1",
    correlation_id="c-1",
    to="billing",
    reply_to="replies",
    session_id="s-1",
    reply_to_session_id="rs-1",
    content_type="application/json",
    application_properties={"tier": "gold", "count": 3, "ratio": 0.5, "flag": True, "raw": b"b"},
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1=1", True),
        ("1 = 0", False),
        ("TRUE", True),
        ("false", False),
        ("tier = 'gold'", True),
        ("user.tier = 'gold'", True),
        ("[tier] <> 'gold'", False),
        ("sys.Label = 'invoice'", True),
        ("sys.label = 'invoice' AND tier = 'silver'", False),
        ("sys.Label = 'x' OR tier = 'gold'", True),
        ("NOT (tier = 'gold')", False),
        ("count > 2 AND ratio < 1", True),
        ("count >= 3 and count <= 3", True),
        ("count = 3.0", True),
        ("flag = TRUE", True),
        ("raw = 'b'", True),
        ("missing = 'x'", False),
        ("NOT missing = 'x'", False),  # unknown stays unknown
        ("missing = 'x' OR 1=1", True),
        ("missing IS NULL", True),
        ("tier IS NOT NULL", True),
        ("EXISTS(tier)", True),
        ("EXISTS(missing)", False),
        ("tier IN ('silver', 'gold')", True),
        ("tier NOT IN ('silver', 'gold')", False),
        ("sys.To LIKE 'bill%'", True),
        ("sys.ContentType LIKE 'application/_son'", True),
        ("sys.CorrelationId NOT LIKE 'c-%'", False),
        ("sys.MessageId = 'm-1' AND sys.SessionId = 's-1' AND sys.ReplyTo = 'replies'", True),
        ("sys.ReplyToSessionId = 'rs-1'", True),
        ("tier = 'it''s'", False),
        ("count = '3'", False),  # no implicit conversion between text and numbers
    ],
)
def test_sql_filter_evaluates(expression: str, expected: bool) -> None:
    rule = Rule("r", sql_expression=expression)
    assert rule.matches(SAMPLE) is expected


@pytest.mark.parametrize(
    "expression",
    [
        "tier = ",
        "tier",
        "tier == 'gold'",
        "tier = 'gold' AND",
        "(tier = 'gold'",
        "sys.Nope = 'x'",
        "other.tier = 'x'",
        'tier = "gold"',
        "SET sys.Label = 'x'",
    ],
)
def test_unsupported_sql_is_a_clear_error(expression: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_sql_filter(expression)


def test_rule_errors_name_the_rule() -> None:
    with pytest.raises(FilterSyntaxError, match="rule 'bad'"):
        Rule("bad", sql_expression="tier ==")


def test_correlation_filter_needs_every_field_to_match() -> None:
    both = CorrelationFilter(subject="invoice", properties={"tier": "gold", "count": 3})
    assert both.matches(SAMPLE)
    assert not CorrelationFilter(subject="invoice", properties={"tier": "silver"}).matches(SAMPLE)
    assert not CorrelationFilter(properties={"absent": "x"}).matches(SAMPLE)
    assert CorrelationFilter(correlation_id="c-1", to="billing").matches(SAMPLE)
    assert not CorrelationFilter(content_type="text/plain").matches(SAMPLE)
    assert CorrelationFilter(properties={"flag": True}).matches(SAMPLE)
    assert not CorrelationFilter(properties={"count": True}).matches(SAMPLE)


def test_correlation_filter_compares_undecoded_strings_as_text() -> None:
    raw = message(subject=b"invoice", application_properties={"tier": b"gold"})
    assert CorrelationFilter(subject="invoice", properties={"tier": "gold"}).matches(raw)


def test_a_rule_has_exactly_one_filter() -> None:
    with pytest.raises(ValueError):
        Rule("none")
    with pytest.raises(ValueError):
        Rule("both", correlation=CorrelationFilter(subject="x"), sql_expression="1=1")
