"""The ``docbus`` command line: every command, and the one way each is run.

:mod:`~docbus.cli.runner` parses ``docbus COMMAND``, loads the settings, runs the command on an
event loop and turns whatever escapes it into one line on stderr and an exit code
(:class:`ExitCode`). One module per command parses its options, calls the library or an operator
query (:mod:`docbus.ops`) and renders the answer — rich tables, or ``--json`` — and only these
modules print: :mod:`~docbus.cli.publish`, :mod:`~docbus.cli.worker`, :mod:`~docbus.cli.status`,
:mod:`~docbus.cli.report`, :mod:`~docbus.cli.audit`, :mod:`~docbus.cli.dlq`,
:mod:`~docbus.cli.parked`, :mod:`~docbus.cli.replay`, :mod:`~docbus.cli.results`,
:mod:`~docbus.cli.rollback`, :mod:`~docbus.cli.config`, :mod:`~docbus.cli.topology`,
:mod:`~docbus.cli.demo` (``up``, ``emulator`` and ``llm-server`` live with the stand-ins they
start, under :mod:`docbus.local`); :mod:`~docbus.cli.confirm` and
:mod:`~docbus.cli.dead_letter_filter` are what several commands share. This package is the
composition root: a command's module, and the ``publisher``/``subscriber``/``handlers`` code it
drives, is imported only when that command runs.
"""

from __future__ import annotations

from docbus.cli.runner import (
    COMMANDS,
    ExitCode,
    brief,
    build_parser,
    describe_failure,
    exit_code_rows,
    main,
    print_json,
    run_async,
    run_command,
    say_error,
)

__all__ = [
    "COMMANDS",
    "ExitCode",
    "brief",
    "build_parser",
    "describe_failure",
    "exit_code_rows",
    "main",
    "print_json",
    "run_async",
    "run_command",
    "say_error",
]
