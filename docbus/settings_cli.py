"""``docbus config``: print the effective settings, every secret masked.

Reads :class:`~docbus.settings.Settings` the way every other command does (``DOCBUS_*`` variables,
then ``MONGODB_URI``, ``OPENAI_API_KEY`` and the other ecosystem variables, then defaults) and
prints :func:`~docbus.settings.masked` as a table — one row per setting with the variable it came
from — or as JSON (``--json``). Settings that do not validate become one readable line per
problem, naming the variable to fix, and exit code 2; the offending values are never echoed,
since they may be secrets.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from docbus.settings import Settings, masked

__all__ = ["add_arguments", "describe_validation_error", "run", "settings_table"]

ENV_PREFIX = "DOCBUS_"

# The ecosystem variables Settings honours, by (group, field); see docbus.settings._EcosystemEnv.
_ECOSYSTEM: dict[tuple[str, str], str] = {
    ("mongodb", "uri"): "MONGODB_URI",
    ("llm", "api_key"): "OPENAI_API_KEY",
    ("llm", "base_url"): "OPENAI_BASE_URL",
    ("llm", "azure_api_version"): "OPENAI_API_VERSION",
    ("llm", "azure_endpoint"): "AZURE_OPENAI_ENDPOINT",
    ("llm", "azure_api_key"): "AZURE_OPENAI_API_KEY",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the settings as JSON instead of a table"
    )


def run(args: argparse.Namespace, *, console: Console | None = None) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        err = console or Console(stderr=True)
        err.print("[bold red]invalid docbus settings:[/]", highlight=False)
        for line in describe_validation_error(exc):
            err.print(f"  {line}", highlight=False, markup=False)
        return 2
    console = console or Console()
    data = masked(settings)
    if args.json:
        # out(), not print(): no wrapping, so long values stay valid JSON when piped
        console.out(json.dumps(data, indent=2, default=str), highlight=False)
    else:
        console.print(settings_table(data, settings))
    return 0


def variable_name(loc: tuple[int | str, ...]) -> str:
    """The ``DOCBUS_`` variable for a settings location: ``("worker", "prefetch")`` →
    ``DOCBUS_WORKER__PREFETCH``; a whole group → ``DOCBUS_WORKER__*``."""
    parts = [str(p).upper() for p in loc]
    if len(parts) == 1:
        return f"{ENV_PREFIX}{parts[0]}__*"
    return ENV_PREFIX + "__".join(parts)


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem, naming the variable to fix; input values are left out (secrets)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        where = variable_name(loc) if loc else "settings"
        lines.append(f"{where}: {message}")
    return lines


def load_settings(console: Console) -> Settings | None:
    """The settings from the environment, or None after printing what is wrong with them."""
    try:
        return Settings()
    except ValidationError as exc:
        console.print("[bold red]invalid docbus settings:[/]")
        for line in describe_validation_error(exc):
            console.print(f"  {line}", markup=False, highlight=False)
        return None


def _source(group: str, field: str, value: Any, default: Any) -> str:
    """Which variable a setting came from, as far as the environment tells."""
    name = f"{ENV_PREFIX}{group}__{field}".upper()
    environ = {key.upper() for key in os.environ}
    if name in environ:
        return name
    ecosystem = _ECOSYSTEM.get((group, field))
    if ecosystem is not None and os.environ.get(ecosystem):
        return ecosystem
    return "default" if value == default else "environment"


def settings_table(data: Mapping[str, Any], settings: Settings) -> Table:
    """The masked settings as a table: setting, value, and where it came from."""
    table = Table(title="docbus settings (secrets masked)")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold", ratio=3, min_width=16)
    table.add_column("from", overflow="fold", ratio=2, min_width=8)
    for number, (group, fields) in enumerate(data.items()):
        if number:
            table.add_section()
        if not isinstance(fields, Mapping):  # a top-level setting outside any group
            table.add_row(group, Text("-" if fields is None else str(fields)), "")
            continue
        defaults = Settings.model_fields[group].get_default(call_default_factory=True)
        for field, value in fields.items():
            raw = getattr(getattr(settings, group), field)
            shown = "-" if value is None else str(value)
            source = _source(group, field, raw, getattr(defaults, field, None))
            table.add_row(f"{group}.{field}", Text(shown), source)
    return table
