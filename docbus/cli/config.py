"""``docbus config``: print the effective settings, every secret masked; and the settings'
explanation when they are wrong.

Reads :class:`~docbus.settings.Settings` the way every other command does (``DOCBUS_*`` variables,
then ``MONGODB_URI``, ``OPENAI_API_KEY`` and the other ecosystem variables, then defaults) and
prints :func:`~docbus.settings.masked` as a table — one row per setting with the variable it came
from — or as JSON (``--json``). :func:`load_settings` is how every command reads them: settings
that do not validate raise :class:`InvalidSettings`, whose message is one line naming each
variable to fix and what it expects (a JSON variable that does not parse included); the CLI's
runner (:mod:`docbus.cli`) prints it and exits 2. The offending values are never echoed, since
they may be secrets.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.text import Text

from docbus.cli.render import Table, make_console, untrusted
from docbus.errors import ConfigurationError
from docbus.settings import Settings, masked

__all__ = [
    "InvalidSettings",
    "add_arguments",
    "describe_settings_error",
    "describe_validation_error",
    "load_settings",
    "run",
    "settings_table",
    "variable_name",
]

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
    settings = load_settings()
    console = console or make_console()
    data = masked(settings)
    if args.json:
        from docbus.cli import print_json

        print_json(console, data)
    else:
        console.print(settings_table(data, settings))
    return 0


class InvalidSettings(ConfigurationError):
    """The ``DOCBUS_*`` (or ecosystem) variables do not make valid settings; the message is one
    line naming each variable to fix and what it expects."""


def load_settings(console: Console | None = None) -> Settings:
    """The settings from the environment; raises :class:`InvalidSettings` when they are wrong.

    ``console`` is ignored (kept for the commands that still pass one): the message reaches
    the user through the CLI's runner (:func:`docbus.cli.run_command`), on stderr.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettings(
            "invalid settings: " + "; ".join(describe_validation_error(exc))
        ) from exc
    except SettingsError as exc:  # a variable that must hold JSON does not
        raise InvalidSettings("invalid settings: " + describe_settings_error(exc)) from exc


def variable_name(
    loc: tuple[int | str, ...], environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The variable behind a settings location, and the path inside its value.

    ``("worker", "prefetch")`` → ``("DOCBUS_WORKER__PREFETCH", "")``; with
    ``DOCBUS_LLM__PRICING`` set, ``("llm", "pricing", "m", "input")`` →
    ``("DOCBUS_LLM__PRICING", "m.input")`` (the problem is inside its JSON); an ecosystem
    variable (``MONGODB_URI``) when that is where the value came from; a whole group →
    ``("DOCBUS_WORKER__*", "")``.
    """
    environ = os.environ if environ is None else environ
    present = {key.upper() for key, value in environ.items() if value}
    parts = [str(p) for p in loc]
    for size in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(p.upper() for p in parts[:size])
        inside = ".".join(parts[size:])
        if name in present:
            return name, inside
        ecosystem = _ECOSYSTEM.get((parts[0], parts[1])) if size == 2 else None
        if ecosystem is not None and ecosystem in present:
            return ecosystem, inside
    if len(parts) == 1:
        return f"{ENV_PREFIX}{parts[0].upper()}__*", ""
    return ENV_PREFIX + "__".join(p.upper() for p in parts), ""


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One entry per variable, naming it and each problem in it; input values are left out
    (they may be secrets)."""
    problems: dict[str, list[str]] = {}
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        where, inside = variable_name(loc) if loc else ("settings", "")
        problems.setdefault(where, []).append(f"{inside}: {message}" if inside else message)
    return [f"{where}: {'; '.join(messages)}" for where, messages in problems.items()]


# Examples of the variables that take JSON, for the message when their value is not JSON.
_JSON_EXAMPLES: dict[tuple[str, str], str] = {
    ("llm", "pricing"): '{"my-deployment": {"input": 0.15, "output": 0.6}}',
    ("llm", "rate_limits"): '{"gpt-4o": {"rpm": 500, "tpm": 30000}}',
}


def describe_settings_error(exc: SettingsError, environ: Mapping[str, str] | None = None) -> str:
    """Which variable held JSON that does not parse (pydantic-settings names only the group)."""
    environ = os.environ if environ is None else environ
    for key, value in sorted(environ.items()):
        parts = key.upper().removeprefix(ENV_PREFIX).lower().split("__")
        if not key.upper().startswith(ENV_PREFIX) or not _takes_json(parts):
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as error:
            example = _JSON_EXAMPLES.get((parts[0], parts[1])) if len(parts) == 2 else None
            expected = f"; expected e.g. {example}" if example else "; expected JSON"
            return f"{key.upper()}: not valid JSON ({error.msg} at character {error.pos}){expected}"
    return str(exc)


def _takes_json(parts: list[str]) -> bool:
    """Whether the setting at ``parts`` (group, field...) is read as JSON from the environment."""
    annotation: Any = Settings
    for part in parts:
        fields = getattr(annotation, "model_fields", None)
        if fields is None or part not in fields:
            return False
        annotation = fields[part].annotation
    return (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or (
        get_origin(annotation) in (dict, list, set, tuple)
    )


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
            table.add_row(f"{group}.{field}", untrusted(shown), source)
    return table
