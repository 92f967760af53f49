"""What the offline LLM server reads out of a prompt: sentences, keywords, names, places, dates.

:func:`analyse` turns the prompt's text into :class:`TextFacts` — plain lists in a deterministic
order (by frequency, then first appearance) — and :func:`summarise` builds a short extractive
summary from the highest-scoring sentences. The schema instance generator
(:mod:`docbus.local.llm_server.instances`) fills string, number and enum fields from these facts so
the offline answers look related to the document; the completion builder
(:mod:`docbus.local.llm_server.completions`) uses the summary for plain-text answers.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass


def word_set(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text`` (keeps long vocabularies readable)."""
    return frozenset(text.split())


STOPWORDS = word_set(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    may might must shall per via upon within without among across along around near since
    however therefore thus yet still even ever said says new one two three many much well
    please return json document text following given based using extract summarise summarize
    provide answer respond output field fields schema object
    """
)

# Country -> region, for country/region fields. Aliases map onto the canonical name.
COUNTRIES: dict[str, str] = {
    "Argentina": "South America",
    "Australia": "Oceania",
    "Austria": "Europe",
    "Bangladesh": "Asia",
    "Belgium": "Europe",
    "Brazil": "South America",
    "Canada": "North America",
    "Chile": "South America",
    "China": "Asia",
    "Colombia": "South America",
    "Czech Republic": "Europe",
    "Denmark": "Europe",
    "Egypt": "Africa",
    "Ethiopia": "Africa",
    "Finland": "Europe",
    "France": "Europe",
    "Germany": "Europe",
    "Ghana": "Africa",
    "Greece": "Europe",
    "Hungary": "Europe",
    "India": "Asia",
    "Indonesia": "Asia",
    "Iran": "Middle East",
    "Iraq": "Middle East",
    "Ireland": "Europe",
    "Israel": "Middle East",
    "Italy": "Europe",
    "Japan": "Asia",
    "Kenya": "Africa",
    "Malaysia": "Asia",
    "Mexico": "North America",
    "Morocco": "Africa",
    "Netherlands": "Europe",
    "New Zealand": "Oceania",
    "Nigeria": "Africa",
    "Norway": "Europe",
    "Pakistan": "Asia",
    "Peru": "South America",
    "Philippines": "Asia",
    "Poland": "Europe",
    "Portugal": "Europe",
    "Qatar": "Middle East",
    "Romania": "Europe",
    "Russia": "Europe",
    "Saudi Arabia": "Middle East",
    "Singapore": "Asia",
    "South Africa": "Africa",
    "South Korea": "Asia",
    "Spain": "Europe",
    "Sweden": "Europe",
    "Switzerland": "Europe",
    "Taiwan": "Asia",
    "Thailand": "Asia",
    "Turkey": "Middle East",
    "Ukraine": "Europe",
    "United Arab Emirates": "Middle East",
    "United Kingdom": "Europe",
    "United States": "North America",
    "Vietnam": "Asia",
}
_ALIASES = {
    "USA": "United States",
    "U.S.": "United States",
    "US": "United States",
    "America": "United States",
    "UK": "United Kingdom",
    "Britain": "United Kingdom",
    "England": "United Kingdom",
    "UAE": "United Arab Emirates",
    "Korea": "South Korea",
    "Holland": "Netherlands",
    "Czechia": "Czech Republic",
    "Türkiye": "Turkey",
}
REGIONS = ("Europe", "Asia", "North America", "South America", "Africa", "Middle East", "Oceania")

_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.MULTILINE)
_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]")
_PROPER = re.compile(r"\b[A-Z][\w&'.-]*[\w&](?:\s+(?:of\s+|&\s+|de\s+)?[A-Z][\w&'.-]*[\w&])*")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_URL = re.compile(r"\bhttps?://[^\s<>\"')\]]+")
_SIMPLE_WORD = re.compile(r"[^\W_]+")
# Longest names first, so "South Korea" wins over "Korea".
_COUNTRY = re.compile(
    r"(?<!\w)(?:"
    + "|".join(re.escape(n) for n in sorted([*COUNTRIES, *_ALIASES], key=len, reverse=True))
    + r")(?!\w)"
)
_CURRENCY = re.compile(r"\b(USD|EUR|GBP|JPY|CNY|CHF|CAD|AUD|INR)\b")


@dataclass(frozen=True, slots=True)
class TextFacts:
    """Facts read from a prompt, each list in a deterministic order."""

    text: str
    sentences: tuple[str, ...]
    words: tuple[str, ...]
    keywords: tuple[str, ...]
    names: tuple[str, ...]
    countries: tuple[str, ...]
    numbers: tuple[float, ...]
    dates: tuple[str, ...]
    emails: tuple[str, ...]
    urls: tuple[str, ...]
    currencies: tuple[str, ...]
    word_counts: Mapping[str, int]  # lower-cased \w+ runs

    def mentions(self, term: str) -> int:
        """How often ``term`` appears as a whole word or phrase (case-insensitive)."""
        term = term.strip()
        if not term:
            return 0
        if _SIMPLE_WORD.fullmatch(term):
            return self.word_counts.get(term.lower(), 0)
        pattern = r"(?<!\w)" + re.escape(term).replace(r"\_", "[_ ]") + r"(?!\w)"
        return len(re.findall(pattern, self.text, flags=re.IGNORECASE))


def _ranked(items: list[str]) -> tuple[str, ...]:
    counts = Counter(items)
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(item, index)
    return tuple(sorted(counts, key=lambda item: (-counts[item], first[item])))


@functools.lru_cache(maxsize=32)
def analyse(text: str) -> TextFacts:
    """Read :class:`TextFacts` out of ``text`` (cached: a request reads it many times)."""
    sentences = tuple(s.strip() for s in _SENTENCE.findall(text) if len(s.split()) >= 2)
    words = tuple(_WORD.findall(text))
    content = [w.lower() for w in words if len(w) > 2 and w.lower() not in STOPWORDS]

    countries = tuple(
        dict.fromkeys(_ALIASES.get(m.group(0), m.group(0)) for m in _COUNTRY.finditer(text))
    )

    found_names: list[tuple[str, bool]] = []
    for match in _PROPER.finditer(text):
        tokens = match.group(0).strip(".'-").split()
        while tokens and tokens[0].lower() in STOPWORDS:
            tokens.pop(0)
        phrase = " ".join(tokens)
        if not phrase or phrase in COUNTRIES or phrase in _ALIASES or _CURRENCY.fullmatch(phrase):
            continue
        # A lone capitalised word opening a sentence is usually an ordinary word.
        found_names.append((phrase, _opens_sentence(text, match.start()) and len(tokens) == 1))
    mid_sentence = {phrase for phrase, doubtful in found_names if not doubtful}
    names = [p for p, doubtful in found_names if not doubtful or p in mid_sentence]

    numbers = []
    for raw in _NUMBER.findall(_ISO_DATE.sub(" ", text)):
        try:
            numbers.append(float(raw.replace(",", "")))
        except ValueError:
            continue
    dates = tuple(m.group(0) for m in _ISO_DATE.finditer(text) if _is_date(m.group(0)))
    return TextFacts(
        text=text,
        sentences=sentences,
        words=words,
        keywords=_ranked(content),
        names=_ranked(names),
        countries=countries,
        numbers=tuple(dict.fromkeys(numbers)),
        dates=tuple(dict.fromkeys(dates)),
        emails=tuple(dict.fromkeys(_EMAIL.findall(text))),
        urls=tuple(dict.fromkeys(_URL.findall(text))),
        currencies=_ranked(_CURRENCY.findall(text)),
        word_counts=Counter(re.findall(r"\w+", text.lower())),
    )


def _opens_sentence(text: str, position: int) -> bool:
    """Whether ``position`` starts a line or follows sentence-ending punctuation."""
    index = position - 1
    while index >= 0 and text[index].isspace():
        if text[index] == "\n":
            return True
        index -= 1
    return index < 0 or text[index] in ".!?:"


def _is_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=32)
def summarise(text: str, max_sentences: int = 2, max_words: int = 60) -> str:
    """An extractive summary: the best-scoring sentences, in their original order.

    A sentence scores the mean document frequency of its content words, so sentences about what
    the document keeps mentioning win. Ties go to the earlier sentence.
    """
    facts = analyse(text)
    if not facts.sentences:
        words = text.split()
        return " ".join(words[:max_words]) or "No content."
    frequency = Counter(w.lower() for w in facts.words if w.lower() not in STOPWORDS)

    def score(sentence: str) -> float:
        terms = [w.lower() for w in _WORD.findall(sentence) if w.lower() not in STOPWORDS]
        return sum(frequency[t] for t in terms) / (len(terms) ** 0.5) if terms else 0.0

    ranked = sorted(range(len(facts.sentences)), key=lambda i: (-score(facts.sentences[i]), i))
    chosen = sorted(ranked[:max_sentences])
    summary = " ".join(facts.sentences[i] for i in chosen)
    words = summary.split()
    if len(words) > max_words:
        summary = " ".join(words[:max_words]).rstrip(",;:") + "..."
    return summary
