"""Schema instances for the offline LLM server: a valid answer to a JSON schema, from the prompt.

:func:`generate_instance` walks a JSON schema (``$ref``/``$defs``, ``allOf``/``anyOf``/``oneOf``,
nullable types, ``const``, ``enum``, objects, arrays, strings with length, ``pattern`` and
``format``, numbers with inclusive or exclusive bounds and ``multipleOf``) and builds a value that
satisfies it. Every choice is drawn from a generator seeded by the request's hash and the JSON
path, so the same prompt always gives the same answer and one field's choice does not shift
another's. Strings come from the prompt's :class:`~docbus.local.llm_server.text.TextFacts` chosen by
the property's name (``summary`` gets an extractive summary, ``country`` a country the text
names, ``keywords`` its most frequent content words); enums prefer a member the text mentions.
:func:`violate` and :func:`malform` make the deliberately broken answers the fault knobs ask for;
:mod:`docbus.local.llm_server.schemas` checks the results.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any

from docbus.local.llm_server.patterns import sample_pattern
from docbus.local.llm_server.schemas import is_valid, number_bounds, resolved
from docbus.local.llm_server.text import COUNTRIES, REGIONS, TextFacts, summarise, word_set

_CATEGORIES: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (name, word_set(words))
    for name, words in (
        ("email", "email emails mail"),
        ("url", "url urls uri link links website homepage href"),
        ("date", "date dates day published timestamp deadline when dob birthday"),
        ("id", "id ids identifier uuid guid sku"),
        ("country", "country countries nation nationality"),
        ("region", "region regions continent"),
        ("city", "city cities location locations place places headquarters hq address"),
        (
            "keyword",
            "keyword keywords tag tags term terms keyphrase keyphrases topic topics "
            "phrase phrases label labels theme themes category categories type types "
            "kind kinds sector industry dimension",
        ),
        ("title", "title headline subject heading caption"),
        (
            "name",
            "name names person people persons company companies organization "
            "organizations organisation organisations org supplier suppliers vendor vendors "
            "manufacturer customer customers entity entities author authors party parties "
            "brand issuer counterparty",
        ),
        (
            "summary",
            "summary description abstract overview explanation reason reasons reasoning "
            "rationale justification text content body comment comments notes note "
            "details detail analysis context evidence quote snippet excerpt answer "
            "message sentence statement impact mitigation recommendation conclusion",
        ),
        ("language", "language lang locale"),
        ("currency", "currency"),
    )
)
# Precedence: a "company_type" is a kind word, not a company name.
_TYPE_WORDS = word_set("type types kind kinds category categories class")
_TEXT_NUMBER_HINTS = word_set(
    "amount price cost total value revenue sales year count quantity number age population "
    "employees units volume budget salary income profit loss balance fee tax"
)
_UNIT_HINTS = word_set("score confidence probability likelihood certainty weight ratio share")
_PERCENT_HINTS = word_set("percent percentage pct")
_FLAG_WORDS = word_set("is has was can should contains includes needs requires")
_WRONG_VALUES: tuple[Any, ...] = (12345, "unexpected text", True, None, [], {})


def hint_words(hint: str) -> list[str]:
    """``"companyName"``/``"company_name"`` -> ``["company", "name"]``."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", hint).lower()
    return [w for w in re.split(r"[^a-z0-9]+", snake) if w]


def singular(hint: str) -> str:
    if hint.endswith("ies") and len(hint) > 4:
        return hint[:-3] + "y"
    if hint.endswith(("sses", "xes")):
        return hint[:-2]
    if hint.endswith("s") and not hint.endswith("ss") and len(hint) > 3:
        return hint[:-1]
    return hint


def category_of(hint: str) -> str | None:
    words = hint_words(hint)
    if set(words) & _TYPE_WORDS:
        return "keyword"
    for name, vocabulary in _CATEGORIES:
        if vocabulary.intersection(words):
            return name
    return None


def generate_instance(schema: Mapping[str, Any], facts: TextFacts, seed: bytes) -> Any:
    """A value valid against ``schema``, derived from ``facts`` and ``seed`` deterministically."""
    return _Generator(schema, facts, seed).generate()


class _Generator:
    max_depth = 6  # deeper than this, only what the schema requires
    give_up_depth = 24  # deeper than this, the schema is unsatisfiable (recursion it requires)

    def __init__(self, root: Mapping[str, Any], facts: TextFacts, seed: bytes) -> None:
        self.root = root
        self.facts = facts
        self.seed = seed

    def generate(self) -> Any:
        return self.value(self.root, "$", "", 0, 0)

    def rng(self, path: str) -> random.Random:
        return random.Random(hashlib.sha256(self.seed + path.encode()).digest())

    def value(self, schema: Any, path: str, hint: str, index: int, depth: int) -> Any:
        if schema is True or schema is None:
            schema = {}
        if schema is False:
            return None
        schema = self.flatten(resolved(schema, self.root))
        rng = self.rng(path)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.enum_member(list(schema["enum"]), rng, index)
        for keyword in ("anyOf", "oneOf"):
            if schema.get(keyword):
                return self.one_of(schema, keyword, path, hint, index, depth, rng)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self.pick_type(kind, rng, depth)
        if kind is None:
            kind = _infer_type(schema)
        if kind == "object":
            return self.object(schema, path, hint, index, depth)
        if kind == "array":
            return self.array(schema, path, hint, depth)
        if kind in ("integer", "number"):
            return self.number(schema, hint, rng, kind == "integer")
        if kind == "boolean":
            return self.boolean(hint, rng)
        if kind == "null":
            return None
        return self.string(schema, hint, index, rng)

    def flatten(self, schema: Any) -> Any:
        """Merge ``allOf`` members into one schema (properties and required are unioned)."""
        if not isinstance(schema, Mapping) or "allOf" not in schema:
            return schema
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self.flatten(resolved(part, self.root))
            if not isinstance(part, Mapping):
                continue
            for key, val in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **val}
                elif key == "required":
                    merged["required"] = list(dict.fromkeys([*merged.get("required", []), *val]))
                else:
                    merged.setdefault(key, val)
        return merged

    def is_null(self, schema: Any) -> bool:
        schema = resolved(schema, self.root)
        return isinstance(schema, Mapping) and schema.get("type") == "null"

    def one_of(
        self,
        schema: Mapping[str, Any],
        keyword: str,
        path: str,
        hint: str,
        index: int,
        depth: int,
        rng: random.Random,
    ) -> Any:
        options = list(schema[keyword])
        nulls = [o for o in options if self.is_null(o)]
        others = [o for o in options if not self.is_null(o)]
        if nulls and (not others or depth >= self.max_depth or rng.random() < 0.2):
            return None
        order = rng.sample(others, len(others))
        if depth >= self.max_depth:  # leaves first, so recursive models end
            order.sort(key=lambda o: "$ref" in o if isinstance(o, Mapping) else False)
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
        first: Any = None
        for number, option in enumerate(order):
            branch = resolved(option, self.root)
            merged = {**rest, **branch} if isinstance(branch, Mapping) else branch
            candidate = self.value(merged, f"{path}|{number}", hint, index, depth)
            if number == 0:
                first = candidate
            if keyword == "anyOf" or is_valid(schema, candidate, self.root):
                return candidate
        return first

    def pick_type(self, kinds: list[str], rng: random.Random, depth: int) -> str:
        others = [k for k in kinds if k != "null"]
        if not others or ("null" in kinds and (depth >= self.max_depth or rng.random() < 0.2)):
            return "null"
        return rng.choice(others)

    def enum_member(self, members: list[Any], rng: random.Random, index: int) -> Any:
        mentioned = [
            (self.facts.mentions(str(m)), position)
            for position, m in enumerate(members)
            if isinstance(m, str)
        ]
        ranked = [position for count, position in sorted(mentioned, key=lambda t: -t[0]) if count]
        if ranked:
            return members[ranked[index % len(ranked)]]
        return members[(rng.randrange(len(members)) + index) % len(members)]

    def object(
        self, schema: Mapping[str, Any], path: str, hint: str, index: int, depth: int
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if depth > self.give_up_depth:
            return result
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = [r for r in schema.get("required", []) if isinstance(r, str)]
        for name, sub in properties.items():
            if name in required or depth < self.max_depth:
                result[name] = self.value(sub, f"{path}.{name}", name, index, depth + 1)
        for name in required:
            if name not in result:
                result[name] = self.value({}, f"{path}.{name}", name, index, depth + 1)
        extra = schema.get("additionalProperties")
        wanted = schema.get("minProperties", 0)
        if not properties and isinstance(extra, Mapping):
            wanted = max(wanted, 1 if depth >= self.max_depth else 2)
        limit = schema.get("maxProperties")
        if limit is not None:
            wanted = min(wanted, limit)
        keywords = [*self.facts.keywords, *(f"key_{n}" for n in range(wanted))]
        for key in keywords:
            if len(result) >= wanted or extra is False:
                break
            if key not in result:
                sub = extra if isinstance(extra, Mapping) else {"type": "string"}
                result[key] = self.value(sub, f"{path}.{key}", key, index, depth + 1)
        return result

    def array(self, schema: Mapping[str, Any], path: str, hint: str, depth: int) -> list[Any]:
        rng = self.rng(path + "#len")
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):
            prefix, items = items, schema.get("additionalItems", {})
        prefix = list(prefix or [])
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        if depth > self.give_up_depth:
            return []
        if depth >= self.max_depth:
            count = low
        else:
            top = max(low, 3) if high is None else min(int(high), max(low, 3))
            count = rng.randint(min(max(low, 1), top), top)
        if items is False:
            count = min(count, len(prefix))
        item_hint = singular(hint)
        result: list[Any] = []
        seen: set[str] = set()
        attempt = 0
        while len(result) < count and attempt < count * 4 + 4:
            position = len(result)
            sub = prefix[position] if position < len(prefix) else items
            value = self.value(sub, f"{path}[{attempt}]", item_hint, attempt, depth + 1)
            attempt += 1
            if schema.get("uniqueItems"):
                key = json.dumps(value, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
            result.append(value)
        return result

    def number(  # noqa: C901 - one branch per JSON-Schema numeric keyword
        self, schema: Mapping[str, Any], hint: str, rng: random.Random, integer: bool
    ) -> int | float:
        words = set(hint_words(hint))
        low, low_ex, high, high_ex = number_bounds(schema)
        stated_low, stated_high = low, high
        default_low, default_high = 0.0, 100.0
        if words & _UNIT_HINTS:
            default_low, default_high = (0.0, 10.0) if integer else (0.0, 1.0)
        elif "rating" in words:
            default_low, default_high = 1.0, 5.0
        elif words & _PERCENT_HINTS:
            default_low, default_high = 0.0, 100.0
        elif "year" in words:
            default_low, default_high = 2000.0, 2030.0
        if low is None:
            low = default_low if high is None or default_low < high else high - 100
        if high is None:
            high = default_high if default_high > low else low + 100
        step = schema.get("multipleOf")
        step = step if isinstance(step, int | float) and step > 0 else None
        if integer:
            step = int(step) if step is not None and float(step).is_integer() else 1

        def within(x: float, low: float | None, high: float | None) -> bool:
            above = low is None or (x > low if low_ex else x >= low)
            return above and (high is None or (x < high if high_ex else x <= high))

        def fits(x: float) -> bool:
            return within(x, low, high)

        if words & _TEXT_NUMBER_HINTS:  # the document's own figures, within the stated bounds
            for candidate in self.facts.numbers:
                if (
                    within(candidate, stated_low, stated_high)
                    and (not integer or candidate.is_integer())
                    and (step is None or math.isclose(candidate / step, round(candidate / step)))
                ):
                    return int(candidate) if integer else candidate
        if step is not None:
            first = math.ceil(low / step)
            last = math.floor(high / step)
            if last - first < 1000:
                choices = list(range(first, last + 1))
            else:
                choices = [rng.randint(first + 1, last - 1), first, last]
            choices = [k for k in choices if fits(k * step)]
            if choices:
                k = rng.choice(choices)
                value = k * step
                if integer:
                    return round(value)
                decimals = max(0, -math.floor(math.log10(step))) + 2 if step < 1 else 0
                return round(value, decimals) if decimals else float(value)
            return math.ceil(low) if integer else low  # unsatisfiable bounds
        if low == high:
            return int(low) if integer else float(low)
        value = low + (high - low) * (0.05 + 0.9 * rng.random())
        rounded = round(value, 2)
        return rounded if fits(rounded) else value

    def boolean(self, hint: str, rng: random.Random) -> bool:
        words = [w for w in hint_words(hint) if w not in _FLAG_WORDS and len(w) > 2]
        if any(self.facts.mentions(w) for w in words):
            return True
        return rng.random() < 0.5

    def string(self, schema: Mapping[str, Any], hint: str, index: int, rng: random.Random) -> str:
        fmt = schema.get("format")
        pattern = schema.get("pattern")
        keys = ("minLength", "maxLength", "pattern", "format")
        check = {"type": "string", **{k: schema[k] for k in keys if k in schema}}
        base = self.formatted(str(fmt), index, rng) if fmt else None
        if base is None:
            base = self.by_hint(hint, index, rng)
        candidates = [base]
        if isinstance(pattern, str):
            try:
                found = [m.group(0) for m in re.finditer(pattern, self.facts.text) if m.group(0)]
            except re.error:
                found = []
            candidates += found[index:] + found[:index]
            candidates += [s for s in (sample_pattern(pattern, rng) for _ in range(8)) if s]
        fitted = [_fit_length(c, schema, self.facts) for c in candidates]
        for candidate in fitted:
            if is_valid(check, candidate):
                return candidate
        return fitted[0]

    def formatted(self, fmt: str, index: int, rng: random.Random) -> str | None:
        facts = self.facts
        day = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(730))
        if facts.dates:
            day = dt.date.fromisoformat(facts.dates[index % len(facts.dates)])
        clock = dt.time(rng.randrange(8, 18), rng.randrange(60), rng.randrange(60))
        if fmt == "date":
            return day.isoformat()
        if fmt == "date-time":
            return f"{day.isoformat()}T{clock.isoformat()}Z"
        if fmt == "time":
            return clock.isoformat()
        if fmt == "email":
            if facts.emails:
                return facts.emails[index % len(facts.emails)]
            person = self.pick(facts.names or facts.keywords, index, "contact")
            return f"{_slug(person)}@example.com"
        if fmt in ("uri", "url", "iri", "uri-reference", "iri-reference"):
            if facts.urls:
                return facts.urls[index % len(facts.urls)]
            return f"https://example.com/{_slug(self.pick(facts.keywords, index, 'document'))}"
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if fmt == "ipv4":
            return f"192.0.2.{rng.randrange(1, 255)}"
        if fmt == "ipv6":
            return f"2001:db8::{rng.randrange(1, 0xFFFF):x}"
        if fmt in ("hostname", "idn-hostname"):
            return f"{_slug(self.pick(facts.keywords, index, 'host'))}.example.com"
        if fmt == "duration":
            return f"PT{rng.randrange(1, 3600)}S"
        return None

    def country(self, index: int) -> str:
        """The index-th country the text names, else one drawn for this index (so a region
        field drawn beside it agrees with it)."""
        if self.facts.countries:
            return self.facts.countries[index % len(self.facts.countries)]
        return self.rng(f"country#{index}").choice(sorted(COUNTRIES))

    def pick(self, items: tuple[str, ...], index: int, default: str) -> str:
        return items[index % len(items)] if items else default

    def by_hint(self, hint: str, index: int, rng: random.Random) -> str:  # noqa: C901 - one branch per field-name hint
        facts = self.facts
        category = category_of(hint)
        if category in ("email", "date"):
            return self.formatted(category, index, rng) or ""
        if category == "url":
            return self.formatted("uri", index, rng) or ""
        if category == "id":
            stem = _slug(self.pick(facts.keywords, index, "item"))[:16]
            return f"{stem}-{rng.getrandbits(24):06x}"
        if category == "country":
            return self.country(index)
        if category == "region":
            named = tuple(r for r in REGIONS if facts.mentions(r))
            if named and not facts.countries:
                return self.pick(named, index, named[0])
            return COUNTRIES[self.country(index)]
        if category == "city":
            return self.pick(facts.names, index, "Headquarters")
        if category == "keyword":
            return self.pick(facts.keywords, index, "general")
        if category == "title":
            if facts.sentences:
                sentence = facts.sentences[index % len(facts.sentences)]
                return " ".join(sentence.rstrip(".!?").split()[:8])
            return self.pick(facts.keywords, index, "Untitled").title()
        if category == "name":
            fallback = self.pick(facts.keywords, index, "Unknown").title()
            return self.pick(facts.names, index, fallback)
        if category == "summary":
            if index == 0 or not facts.sentences:
                return summarise(facts.text)
            return facts.sentences[index % len(facts.sentences)]
        if category == "language":
            return "en"
        if category == "currency":
            return self.pick(facts.currencies, index, "USD")
        top = facts.keywords[:5]
        return self.pick(top, rng.randrange(max(len(top), 1)) + index, "n/a")


def _infer_type(schema: Mapping[str, Any]) -> str:
    if {"properties", "additionalProperties", "required", "minProperties"} & schema.keys():
        return "object"
    if {"items", "prefixItems", "minItems", "maxItems"} & schema.keys():
        return "array"
    numeric = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    if numeric & schema.keys():
        return "number"
    return "string"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"


def _fit_length(text: str, schema: Mapping[str, Any], facts: TextFacts) -> str:
    low = int(schema.get("minLength", 0))
    high = schema.get("maxLength")
    if len(text) < low:
        filler = " ".join(facts.words) or "lorem ipsum dolor sit amet"
        while len(text) < low:
            text = f"{text} {filler}".strip()
    if high is not None and len(text) > high:
        cut = text[: int(high)]
        if " " in cut and len(cut.rsplit(" ", 1)[0]) >= max(low, 1):
            cut = cut.rsplit(" ", 1)[0]
        text = cut.rstrip(" ,;:") if len(cut.rstrip(" ,;:")) >= low else cut
    return text


def violate(schema: Mapping[str, Any], instance: Any, rng: random.Random) -> Any:
    """Valid JSON that breaks ``schema``: a required property dropped, or a wrongly typed value."""
    root = resolved(schema, schema)
    if isinstance(instance, dict):
        required = [name for name in root.get("required", ()) if name in instance]
        if required and rng.random() < 0.5:
            name = required[rng.randrange(len(required))]
            broken = {k: v for k, v in instance.items() if k != name}
            if not is_valid(schema, broken):
                return broken
        for name in rng.sample(list(instance), len(instance)):
            for wrong in _WRONG_VALUES:
                broken = {**instance, name: wrong}
                if not is_valid(schema, broken):
                    return broken
        for name in required:
            broken = {k: v for k, v in instance.items() if k != name}
            if not is_valid(schema, broken):
                return broken
    for wrong in ([], "unexpected text", 0, None, {}):
        if not is_valid(schema, wrong):
            return wrong
    return {"__unsatisfiable__": True}


def malform(text: str, rng: random.Random) -> str:
    """``text`` cut short so it no longer parses as JSON (a truncated answer)."""
    if len(text) < 2:
        return text + "{"
    cut = text[: rng.randint(max(1, len(text) // 3), len(text) - 1)]
    try:
        json.loads(cut)
    except ValueError:
        return cut
    return cut + '{"'
