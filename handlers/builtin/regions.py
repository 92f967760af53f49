"""Regions: ISO 3166-1 alpha-2 country codes, their names, and the region each belongs to.

A small table for aggregating supplier risk by geography, not a full ISO registry: about a
hundred countries that matter for industrial supply, grouped into nine regions a procurement
team reports by. :func:`country_code` reads a code, an English name or a common alias
("Türkiye", "Ivory Coast", "UK", "DR Congo") and returns the code, so the handlers can accept
what a feed or an LLM gives them; :func:`region_of` and :func:`country_name` look codes up.
Used by :mod:`handlers.builtin.supplier_risk` and :mod:`handlers.builtin.entities`.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["REGIONS", "UNKNOWN_REGION", "country_code", "country_name", "region_of"]

UNKNOWN_REGION = "Unknown"

EUROPE = "Europe"
NORTH_AMERICA = "North America"
LATIN_AMERICA = "Latin America"
EAST_ASIA = "East Asia"
SOUTH_SOUTHEAST_ASIA = "South & Southeast Asia"
MIDDLE_EAST = "Middle East"
AFRICA = "Africa"
OCEANIA = "Oceania"
CENTRAL_ASIA = "Central Asia"

REGIONS = (
    AFRICA,
    CENTRAL_ASIA,
    EAST_ASIA,
    EUROPE,
    LATIN_AMERICA,
    MIDDLE_EAST,
    NORTH_AMERICA,
    OCEANIA,
    SOUTH_SOUTHEAST_ASIA,
)

# code -> (English name, region). Mexico counts as North America (USMCA supply chains);
# Turkey as Europe (customs union, and where its suppliers sell).
_COUNTRIES: dict[str, tuple[str, str]] = {
    # Europe
    "AT": ("Austria", EUROPE),
    "BE": ("Belgium", EUROPE),
    "BG": ("Bulgaria", EUROPE),
    "BY": ("Belarus", EUROPE),
    "CH": ("Switzerland", EUROPE),
    "CY": ("Cyprus", EUROPE),
    "CZ": ("Czech Republic", EUROPE),
    "DE": ("Germany", EUROPE),
    "DK": ("Denmark", EUROPE),
    "EE": ("Estonia", EUROPE),
    "ES": ("Spain", EUROPE),
    "FI": ("Finland", EUROPE),
    "FR": ("France", EUROPE),
    "GB": ("United Kingdom", EUROPE),
    "GR": ("Greece", EUROPE),
    "HR": ("Croatia", EUROPE),
    "HU": ("Hungary", EUROPE),
    "IE": ("Ireland", EUROPE),
    "IS": ("Iceland", EUROPE),
    "IT": ("Italy", EUROPE),
    "LT": ("Lithuania", EUROPE),
    "LU": ("Luxembourg", EUROPE),
    "LV": ("Latvia", EUROPE),
    "MD": ("Moldova", EUROPE),
    "MT": ("Malta", EUROPE),
    "NL": ("Netherlands", EUROPE),
    "NO": ("Norway", EUROPE),
    "PL": ("Poland", EUROPE),
    "PT": ("Portugal", EUROPE),
    "RO": ("Romania", EUROPE),
    "RS": ("Serbia", EUROPE),
    "RU": ("Russia", EUROPE),
    "SE": ("Sweden", EUROPE),
    "SI": ("Slovenia", EUROPE),
    "SK": ("Slovakia", EUROPE),
    "TR": ("Turkey", EUROPE),
    "UA": ("Ukraine", EUROPE),
    # North America
    "CA": ("Canada", NORTH_AMERICA),
    "MX": ("Mexico", NORTH_AMERICA),
    "US": ("United States", NORTH_AMERICA),
    # Latin America
    "AR": ("Argentina", LATIN_AMERICA),
    "BO": ("Bolivia", LATIN_AMERICA),
    "BR": ("Brazil", LATIN_AMERICA),
    "CL": ("Chile", LATIN_AMERICA),
    "CO": ("Colombia", LATIN_AMERICA),
    "CR": ("Costa Rica", LATIN_AMERICA),
    "DO": ("Dominican Republic", LATIN_AMERICA),
    "EC": ("Ecuador", LATIN_AMERICA),
    "GT": ("Guatemala", LATIN_AMERICA),
    "HN": ("Honduras", LATIN_AMERICA),
    "PA": ("Panama", LATIN_AMERICA),
    "PE": ("Peru", LATIN_AMERICA),
    "PY": ("Paraguay", LATIN_AMERICA),
    "UY": ("Uruguay", LATIN_AMERICA),
    "VE": ("Venezuela", LATIN_AMERICA),
    # East Asia
    "CN": ("China", EAST_ASIA),
    "HK": ("Hong Kong", EAST_ASIA),
    "JP": ("Japan", EAST_ASIA),
    "KR": ("South Korea", EAST_ASIA),
    "MN": ("Mongolia", EAST_ASIA),
    "MO": ("Macao", EAST_ASIA),
    "TW": ("Taiwan", EAST_ASIA),
    # South & Southeast Asia
    "BD": ("Bangladesh", SOUTH_SOUTHEAST_ASIA),
    "ID": ("Indonesia", SOUTH_SOUTHEAST_ASIA),
    "IN": ("India", SOUTH_SOUTHEAST_ASIA),
    "KH": ("Cambodia", SOUTH_SOUTHEAST_ASIA),
    "LA": ("Laos", SOUTH_SOUTHEAST_ASIA),
    "LK": ("Sri Lanka", SOUTH_SOUTHEAST_ASIA),
    "MM": ("Myanmar", SOUTH_SOUTHEAST_ASIA),
    "MY": ("Malaysia", SOUTH_SOUTHEAST_ASIA),
    "NP": ("Nepal", SOUTH_SOUTHEAST_ASIA),
    "PH": ("Philippines", SOUTH_SOUTHEAST_ASIA),
    "PK": ("Pakistan", SOUTH_SOUTHEAST_ASIA),
    "SG": ("Singapore", SOUTH_SOUTHEAST_ASIA),
    "TH": ("Thailand", SOUTH_SOUTHEAST_ASIA),
    "VN": ("Vietnam", SOUTH_SOUTHEAST_ASIA),
    # Central Asia
    "KG": ("Kyrgyzstan", CENTRAL_ASIA),
    "KZ": ("Kazakhstan", CENTRAL_ASIA),
    "UZ": ("Uzbekistan", CENTRAL_ASIA),
    # Middle East
    "AE": ("United Arab Emirates", MIDDLE_EAST),
    "BH": ("Bahrain", MIDDLE_EAST),
    "IL": ("Israel", MIDDLE_EAST),
    "IQ": ("Iraq", MIDDLE_EAST),
    "IR": ("Iran", MIDDLE_EAST),
    "JO": ("Jordan", MIDDLE_EAST),
    "KW": ("Kuwait", MIDDLE_EAST),
    "LB": ("Lebanon", MIDDLE_EAST),
    "OM": ("Oman", MIDDLE_EAST),
    "QA": ("Qatar", MIDDLE_EAST),
    "SA": ("Saudi Arabia", MIDDLE_EAST),
    "YE": ("Yemen", MIDDLE_EAST),
    # Africa
    "AO": ("Angola", AFRICA),
    "CD": ("Democratic Republic of the Congo", AFRICA),
    "CI": ("Côte d'Ivoire", AFRICA),
    "CM": ("Cameroon", AFRICA),
    "DZ": ("Algeria", AFRICA),
    "EG": ("Egypt", AFRICA),
    "ET": ("Ethiopia", AFRICA),
    "GH": ("Ghana", AFRICA),
    "KE": ("Kenya", AFRICA),
    "MA": ("Morocco", AFRICA),
    "MG": ("Madagascar", AFRICA),
    "MZ": ("Mozambique", AFRICA),
    "NG": ("Nigeria", AFRICA),
    "RW": ("Rwanda", AFRICA),
    "SN": ("Senegal", AFRICA),
    "TN": ("Tunisia", AFRICA),
    "TZ": ("Tanzania", AFRICA),
    "UG": ("Uganda", AFRICA),
    "ZA": ("South Africa", AFRICA),
    "ZM": ("Zambia", AFRICA),
    "ZW": ("Zimbabwe", AFRICA),
    # Oceania
    "AU": ("Australia", OCEANIA),
    "FJ": ("Fiji", OCEANIA),
    "NZ": ("New Zealand", OCEANIA),
    "PG": ("Papua New Guinea", OCEANIA),
}

_ALIASES: dict[str, str] = {
    "america": "US",
    "britain": "GB",
    "burma": "MM",
    "congo drc": "CD",
    "czechia": "CZ",
    "dr congo": "CD",
    "drc": "CD",
    "england": "GB",
    "great britain": "GB",
    "holland": "NL",
    "ivory coast": "CI",
    "korea": "KR",
    "republic of korea": "KR",
    "scotland": "GB",
    "turkiye": "TR",
    "u k": "GB",
    "u s": "US",
    "u s a": "US",
    "uae": "AE",
    "uk": "GB",
    "united states of america": "US",
    "usa": "US",
    "viet nam": "VN",
    "wales": "GB",
}


# The alpha-3 codes feeds use most; others are looked up by name.
_ALPHA3 = {
    "ARE": "AE",
    "BRA": "BR",
    "CAN": "CA",
    "CHN": "CN",
    "DEU": "DE",
    "FRA": "FR",
    "GBR": "GB",
    "IND": "IN",
    "ITA": "IT",
    "JPN": "JP",
    "KOR": "KR",
    "MEX": "MX",
    "USA": "US",
}


def _key(text: str) -> str:
    """Lower case, no accents, punctuation as spaces: "Côte d'Ivoire" -> "cote d ivoire"."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(re.split(r"[^a-z0-9]+", plain.lower())).strip()


_BY_NAME: dict[str, str] = {
    **{_key(name): code for code, (name, _) in _COUNTRIES.items()},
    **_ALIASES,
}


def country_code(value: str | None) -> str | None:
    """The ISO alpha-2 code for a code, name or alias in the table; None if not known."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if len(text) == 2 and text.upper() in _COUNTRIES:
        return text.upper()
    if len(text) == 3 and text.upper() in _ALPHA3:
        return _ALPHA3[text.upper()]
    key = _key(text)
    if key.startswith("the "):
        key = key[4:]
    return _BY_NAME.get(key)


def country_name(code: str | None) -> str | None:
    """The English name of a code in the table."""
    entry = _COUNTRIES.get((code or "").upper())
    return entry[0] if entry else None


def region_of(code: str | None) -> str:
    """The region of a code in the table, else :data:`UNKNOWN_REGION`."""
    entry = _COUNTRIES.get((code or "").upper())
    return entry[1] if entry else UNKNOWN_REGION
