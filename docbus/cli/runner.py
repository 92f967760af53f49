"""The runner: ``docbus <command>``, and the one way every command is run.

Each command's module (one per command in :mod:`docbus.cli`; ``up``, ``emulator`` and
``llm-server`` in :mod:`docbus.local`) contributes ``add_arguments(parser)`` and
``run(args) -> int`` — optionally ``EXIT_CODES``, ``{code: meaning}`` for the codes it gives
a meaning of its own, which ``--help`` lists with the common ones (:func:`exit_code_rows`);
this module wires them. The module of a command is imported only when that command runs, so
``docbus`` imports none of ``publisher``, ``subscriber`` or ``handlers`` until a command needs
them, and a broken optional part cannot stop the others. The CLI is the one place that
configures logging (``--log-level``, ``DOCBUS_LOG_LEVEL``).

:func:`run_command` is the safety net around every command: whatever escapes it becomes one
line on stderr — ``docbus COMMAND: error: what is wrong; what to do`` — and an exit code
(:class:`ExitCode`): settings that do not validate and other configuration errors 2, a service
that cannot be reached 3, Ctrl-C 130, any other docbus error 1, and anything unexpected 1 with
a pointer to ``--log-level debug``, the only level that shows a traceback. Commands still print
their own, more specific messages; :func:`run_async` is how a command loads the settings and
runs its coroutine. Neighbours: :mod:`docbus.cli.config` (the settings' one-line
explanation), :mod:`docbus.errors` (the exception tree mapped here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NoReturn

from docbus.text import one_line

if TYPE_CHECKING:
    from rich.console import Console

    from docbus.settings import Settings

__all__ = [
    "COMMANDS",
    "ExitCode",
    "brief",
    "build_parser",
    "describe_failure",
    "exit_code_rows",
    "main",
    "print_json",
    "rounded_money",
    "run_async",
    "run_command",
    "say_error",
]

# command → (module providing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "docbus.cli.up",
        "start the local stack (emulator, SecantusDB, offline LLM) and wait",
    ),
    "demo": ("docbus.cli.demo", "run the main job on the embedded local stack and print a summary"),
    "publish": (
        "docbus.cli.publish",
        "publish documents (files, JSONL, CSV) to a topic as a batch",
    ),
    "worker": ("docbus.cli.worker", "run handlers on the messages of their subscriptions"),
    "status": (
        "docbus.cli.status",
        "show batches: published, done, retrying, dead-lettered, pending",
    ),
    "report": ("docbus.cli.report", "a batch's outcomes, LLM calls, tokens, cost and latency"),
    "audit": ("docbus.cli.audit", "export a batch's LLM prompt/response pairs for review"),
    "dlq": ("docbus.cli.dlq", "dead letters: list, show, sync from the broker"),
    "parked": ("docbus.cli.parked", "parked messages: list them and why, ask to resume them"),
    "llm-batches": (
        "docbus.cli.llm_batches",
        "provider batches of batch-mode LLM calls: list, show, cancel, resume",
    ),
    "replay": ("docbus.cli.replay", "re-publish dead letters or a whole batch, with filters"),
    "results": (
        "docbus.cli.results",
        "a document's result versions; export a handler's current results",
    ),
    "rollback": ("docbus.cli.rollback", "withdraw the result versions a batch or replay wrote"),
    "console": ("docbus.cli.console", "serve the operator console (web UI) on 127.0.0.1"),
    "config": ("docbus.cli.config", "print the effective settings, secrets masked"),
    "topology": ("docbus.cli.topology", "print the emulator config or Bicep parameters"),
    "emulator": (
        "docbus.cli.emulator",
        "run the local Service Bus emulator in the foreground",
    ),
    "llm-server": ("docbus.cli.llm_server", "run the offline OpenAI-compatible LLM server"),
}

LOG_LEVELS = ("debug", "info", "warning", "error")


class ExitCode(IntEnum):
    """What a docbus command's exit status means, for scripts."""

    OK = 0
    ATTENTION = 1
    """Something needs attention: dead letters, skipped or failed documents, nothing found —
    each command's ``--help`` says which — or an unexpected error."""
    USAGE = 2
    """The command line or the settings are wrong: fix them and run again."""
    UNAVAILABLE = 3
    """A service docbus needs (MongoDB, Service Bus) could not be reached, or a port or data
    directory is in use: try again once it is available."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (SIGINT)."""


_MEANINGS: dict[int, str] = {
    ExitCode.OK: "success",
    ExitCode.ATTENTION: "something needs attention, or an unexpected error",
    ExitCode.USAGE: "usage or configuration error: fix the command line or the DOCBUS_* settings",
    ExitCode.UNAVAILABLE: "MongoDB or Service Bus could not be reached, or a port or data "
    "directory is in use: try again once it is available",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_code_rows(own: Mapping[int, str] | None = None) -> list[tuple[int, str]]:
    """Exit codes and their meanings, a command's ``own`` wording taking precedence (code 1
    keeps "or an unexpected error": any command can meet one)."""
    meanings = dict(_MEANINGS)
    for code, meaning in (own or {}).items():
        unexpected = code == ExitCode.ATTENTION and "unexpected" not in meaning
        meanings[code] = f"{meaning}; or an unexpected error" if unexpected else meaning
    return sorted(meanings.items())


def _exit_code_epilog(own: Mapping[int, str] | None) -> str:
    lines = [
        textwrap.fill(meaning, width=78, initial_indent=f"  {code:<4}", subsequent_indent=" " * 6)
        for code, meaning in exit_code_rows(own)
    ]
    return "exit codes:\n" + "\n".join(lines)


# Codes only one command gives, listed by `docbus --help` with the common ones.
_ONE_COMMAND_CODES: dict[int, str] = {4: "docbus worker only: messages are left parked"}


# -- the runner ---------------------------------------------------------------------------------


def run_async(main: Callable[[Settings], Coroutine[Any, Any, int]]) -> int:
    """Load the settings and run ``main(settings)`` on a fresh event loop; its exit code.

    Settings that do not validate raise :class:`~docbus.cli.config.InvalidSettings`, which
    :func:`run_command` turns into one line and exit code 2.
    """
    from docbus.cli.config import load_settings

    settings = load_settings()
    return asyncio.run(main(settings))


def run_command(command: str, body: Callable[[], int], *, debug: bool = False) -> int:
    """Run one command's ``body``; what escapes it becomes one line on stderr and an exit code.

        ``debug`` (``--log-level debug``) prints the traceback before the line; without it, the line
    of an unexpected error says how to get one.
    """
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        _say(f"docbus {command}: interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # stdout's reader went away (`docbus ... | head`): nothing to say, and nowhere to say it
        _silence_stdout()
        return ExitCode.ATTENTION
    except Exception as exc:
        code, message = describe_failure(exc)
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        elif code == ExitCode.ATTENTION and not _known(exc):
            message += " (run with --log-level debug for the traceback)"
        _say(f"docbus {command}: error: {message}")
        return code


def _known(exc: BaseException) -> bool:
    from docbus.errors import DocbusError
    from docbus.topology import TopologyError

    return isinstance(exc, DocbusError | TopologyError)


_NO_STORE = (
    "set DOCBUS_MONGODB__URI (or MONGODB_URI) and DOCBUS_MONGODB__DATABASE, or start the "
    "local stack with `docbus up` and export what it prints"
)
_NO_BROKER = (
    "check DOCBUS_SERVICEBUS__CONNECTION_STRING (or DOCBUS_SERVICEBUS__NAMESPACE), or start "
    "the local stack with `docbus up` and export what it prints"
)


def describe_failure(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message (without the ``docbus COMMAND:`` prefix) for an
    exception that escaped a command."""
    from docbus.errors import ConfigurationError, DocbusError
    from docbus.servicebus import MessagingAuthError, MessagingEntityNotFound, MessagingError
    from docbus.store import StoreError, StoreUnavailable
    from docbus.topology import TopologyError

    settings_problem = _settings_problem(exc)
    if settings_problem is not None:
        return ExitCode.USAGE, settings_problem
    text = brief(str(exc))
    if isinstance(exc, StoreUnavailable):
        text = text.replace(": MongoDB unavailable:", ":")
        return ExitCode.UNAVAILABLE, f"cannot reach MongoDB ({text}); {_NO_STORE}"
    if isinstance(exc, StoreError):
        return ExitCode.ATTENTION, f"MongoDB refused the operation: {text}"
    if isinstance(exc, MessagingAuthError):
        return ExitCode.USAGE, f"Service Bus refused the credentials ({text}); {_NO_BROKER}"
    if isinstance(exc, MessagingEntityNotFound):
        return ExitCode.USAGE, (
            f"{text}; create the entity from the topology (`docbus topology`), or fix the "
            "topic or subscription name"
        )
    if isinstance(exc, MessagingError):
        if exc.transient:
            if "docbus up" in text:  # the message already says what to do (probe_endpoint)
                return ExitCode.UNAVAILABLE, text
            return ExitCode.UNAVAILABLE, f"cannot reach Service Bus ({text}); {_NO_BROKER}"
        return ExitCode.ATTENTION, f"Service Bus: {text}"
    if isinstance(exc, ConfigurationError | TopologyError):
        return ExitCode.USAGE, text
    if isinstance(exc, DocbusError):
        if getattr(exc, "transient", False):
            return ExitCode.UNAVAILABLE, text
        return ExitCode.ATTENTION, text
    return ExitCode.ATTENTION, f"unexpected {type(exc).__name__}: {text}"


def _settings_problem(exc: BaseException) -> str | None:
    """The one-line explanation when ``exc`` is :class:`~docbus.settings.Settings` refusing the
    environment (a command that built ``Settings()`` itself), else None."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from docbus import settings as settings_module
    from docbus.cli.config import describe_settings_error, describe_validation_error

    if isinstance(exc, SettingsError):
        return "invalid settings: " + describe_settings_error(exc)
    if isinstance(exc, ValidationError):
        model = getattr(settings_module, exc.title, None)
        if isinstance(model, type) and model.__module__ == settings_module.__name__:
            return "invalid settings: " + "; ".join(describe_validation_error(exc))
    return None


# What foreign messages carry after their useful part (pymongo appends its topology, timeouts).
_NOISE = re.compile(r"\s*(?:\(configured timeouts:|, Timeout: |, Topology Description: ).*$", re.S)


def brief(text: str, limit: int = 300) -> str:
    """An error message on one line: whitespace folded, driver internals dropped, bounded."""
    return one_line(_NOISE.sub("", text), limit)


def print_json(console: Console, data: Any) -> None:
    """A command's ``--json`` output: one document on ``console`` (stdout), never wrapped;
    amounts of money rounded (:func:`rounded_money`)."""
    text = json.dumps(rounded_money(data), indent=2, ensure_ascii=False, default=str)
    console.out(text, highlight=False)


_MONEY_KEY = re.compile(r"cost|usd|budget|spent|price", re.IGNORECASE)
_MONEY_DECIMALS = 10
"""Dollars in JSON keep 10 decimals: a millionth of a cent is kept, float noise
(0.005686649999999999) is not."""


def rounded_money(data: Any, *, money: bool = False) -> Any:
    """``data`` with the floats under money keys (``cost_usd``, ``budget``, ...) rounded to
    :data:`_MONEY_DECIMALS`; everything else as it is."""
    if isinstance(data, float):
        return round(data, _MONEY_DECIMALS) if money else data
    if isinstance(data, dict):
        return {
            key: rounded_money(value, money=money or bool(_MONEY_KEY.search(str(key))))
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [rounded_money(value, money=money) for value in data]
    return data


def say_error(command: str, message: str) -> None:
    """Print a command's own error the way the runner prints the ones that escape it."""
    _say(f"docbus {command}: error: {brief(message, limit=1000)}")


def _say(line: str) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # stderr closed: nowhere to say it
        print(line, file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests): nothing to flush later
        pass


# -- parsing ------------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("docbus")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line: what is wrong and where to read more
    (argparse's own prints the whole usage first). Subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        _say(f"{self.prog}: error: {brief(message, limit=1000)} (see `{self.prog} --help`)")
        raise SystemExit(ExitCode.USAGE)


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    parser = _Parser(
        prog="docbus",
        description="Batch LLM work on documents, on Azure Service Bus.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'docbus COMMAND --help' for details."
        "\n\n" + _exit_code_epilog(_ONE_COMMAND_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"docbus {_version()}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    own = getattr(module, "EXIT_CODES", None)
    parser = _Parser(
        prog=f"docbus {command}",
        description=help_text,
        epilog=_exit_code_epilog(own if isinstance(own, Mapping) else None),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)  # a command may still write its whole epilog itself
    if not any(action.dest == "log_level" for action in parser._actions):
        parser.add_argument(
            "--log-level",
            type=str.lower,
            default=os.environ.get("DOCBUS_LOG_LEVEL", "warning"),
            choices=LOG_LEVELS,
            help="logging verbosity (default: warning; DOCBUS_LOG_LEVEL)",
        )
    for subparser in _subparsers(parser):
        # `docbus dlq list --help` tells the same truth as `docbus dlq --help`
        if subparser.epilog is None:
            subparser.epilog = parser.epilog
            subparser.formatter_class = argparse.RawDescriptionHelpFormatter
        if not any(action.dest == "log_level" for action in subparser._actions):
            subparser.add_argument(
                "--log-level",
                type=str.lower,
                # SUPPRESS: the value parsed before the subcommand (_hoist_log_level) stands
                default=argparse.SUPPRESS,
                choices=LOG_LEVELS,
                help="logging verbosity (default: warning; DOCBUS_LOG_LEVEL)",
            )
    parser.set_defaults(_module=module)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of ``parser``'s subcommands (``dlq list``, ``results show``, ...)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.extend(dict.fromkeys(action.choices.values()))  # aliases: once each
    return found


def command_label(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """What errors call the command: ``publish``, or with its subcommand, ``dlq show``."""
    label = parser.prog.removeprefix("docbus ")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and action.dest:
            chosen = getattr(args, action.dest, None)
            if isinstance(chosen, str):
                label = f"{label} {chosen}"
    return label


def _hoist_log_level(args: list[str]) -> list[str]:
    """Accept ``--log-level X`` anywhere, also after a command's own subcommand."""
    for index, arg in enumerate(args):
        if arg.startswith("--log-level="):
            return [arg, *args[:index], *args[index + 1 :]]
        if arg == "--log-level" and index + 1 < len(args):
            return [arg, args[index + 1], *args[:index], *args[index + 2 :]]
    return args


def _log_level(args: argparse.Namespace) -> str | None:
    """The level to log at, or None when ``DOCBUS_LOG_LEVEL`` names no level (argparse checks
    ``--log-level`` itself, but not a default taken from the environment)."""
    level = str(args.log_level).lower()
    return level if level in LOG_LEVELS or level in ("critical", "notset") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in COMMANDS:
            top = _top_parser()
            if not argv:
                top.print_help()
                return ExitCode.USAGE
            top.parse_args(argv[:1])  # --version, --help, or the usage error of a bad command
            return ExitCode.USAGE
        command, rest = argv[0], _hoist_log_level(argv[1:])
        parser = build_parser(command)
        args = parser.parse_args(rest)
    except SystemExit as exit_:  # argparse: --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else ExitCode.USAGE
    command = command_label(parser, args)
    level = _log_level(args)
    if level is None:
        _say(
            f"docbus {command}: error: DOCBUS_LOG_LEVEL={str(args.log_level)!r} is not a log "
            f"level; use one of {', '.join(LOG_LEVELS)} (or --log-level)"
        )
        return ExitCode.USAGE
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Log lines carry ids, reasons and errors from documents: none may act on the terminal.
    from docbus.cli.render import install_log_escaping

    install_log_escaping()
    return run_command(command, lambda: args._module.run(args), debug=level == "debug")


if __name__ == "__main__":
    sys.exit(main())
