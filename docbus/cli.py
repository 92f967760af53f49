"""The umbrella command line: ``docbus <command>``.

Each command lives with the code it drives and contributes ``add_arguments(parser)`` and
``run(args) -> int``; this module only wires them, importing each lazily so that ``docbus``
imports none of ``publisher``, ``subscriber`` or ``handlers`` until a command needs them. The CLI
is the one place that configures logging.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command → (module providing add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "emulator": ("docbus.emulator.server", "run the local Service Bus emulator in the foreground"),
    "llm-server": ("docbus.llm_server", "run the offline OpenAI-compatible LLM server"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="docbus",
        description="Batch LLM work on documents, on Azure Service Bus.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
