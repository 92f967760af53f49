"""The umbrella command line: ``docbus <command>``.

Each command lives with the code it drives and contributes ``add_arguments(parser)`` and
``run(args) -> int``; this module only wires them. The module of a command is imported only when
that command runs, so ``docbus`` imports none of ``publisher``, ``subscriber`` or ``handlers``
until a command needs them, and a broken optional part cannot stop the others. The CLI is the
one place that configures logging (``--log-level``, ``DOCBUS_LOG_LEVEL``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# command → (module providing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("docbus.stack", "start the local stack (emulator, SecantusDB, offline LLM) and wait"),
    "demo": ("docbus.demo", "run the main job on the embedded local stack and print a summary"),
    "publish": ("publisher.cli", "publish documents (files, JSONL, CSV) to a topic as a batch"),
    "worker": ("subscriber.cli", "run handlers on the messages of their subscriptions"),
    "status": ("docbus.status", "show batches: published, done, retrying, dead-lettered, pending"),
    "report": ("docbus.report", "a batch's outcomes, LLM calls, tokens, cost and latency"),
    "audit": ("docbus.audit", "export a batch's LLM prompt/response pairs for review"),
    "dlq": ("subscriber.dlq_cli", "dead letters: list, show, sync from the broker"),
    "parked": ("subscriber.parked_cli", "parked messages: list them and why, ask to resume them"),
    "replay": ("publisher.replay_cli", "re-publish dead letters or a whole batch, with filters"),
    "results": ("docbus.results_cli", "result versions of a document"),
    "rollback": ("docbus.rollback", "withdraw the result versions a batch or replay wrote"),
    "config": ("docbus.settings_cli", "print the effective settings, secrets masked"),
    "topology": ("docbus.topology_cli", "print the emulator config or Bicep parameters"),
    "emulator": ("docbus.emulator.server", "run the local Service Bus emulator in the foreground"),
    "llm-server": ("docbus.llm_server", "run the offline OpenAI-compatible LLM server"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="docbus",
        description="Batch LLM work on documents, on Azure Service Bus.",
        epilog="commands:\n" + "\n".join(lines) + "\n\nRun 'docbus COMMAND --help' for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"docbus {command}", description=help_text)
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    if not any(action.dest == "log_level" for action in parser._actions):
        parser.add_argument(
            "--log-level",
            default=os.environ.get("DOCBUS_LOG_LEVEL", "warning"),
            choices=["debug", "info", "warning", "error"],
            help="logging verbosity (default: warning; DOCBUS_LOG_LEVEL)",
        )
    parser.set_defaults(_module=module)
    return parser


def _hoist_log_level(args: list[str]) -> list[str]:
    """Accept ``--log-level X`` anywhere, also after a command's own subcommand."""
    for index, arg in enumerate(args):
        if arg.startswith("--log-level="):
            return [arg, *args[:index], *args[index + 1 :]]
        if arg == "--log-level" and index + 1 < len(args):
            return [arg, args[index + 1], *args[:index], *args[index + 2 :]]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        top = _top_parser()
        if not argv:
            top.print_help()
            return 2
        top.parse_args(argv[:1])  # prints the usage error for an unknown command
        return 2
    command, rest = argv[0], argv[1:]
    rest = _hoist_log_level(rest)
    args = build_parser(command).parse_args(rest)
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
