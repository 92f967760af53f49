"""``docbus console``: serve the operator console on this machine.

Reads the settings every command reads (``DOCBUS_*``; ``DOCBUS_CONSOLE__HOST``, ``__PORT`` and
``__TOKEN`` for the console), checks MongoDB answers, and serves the console
(:func:`docbus.console.listen`) until Ctrl-C. The action token comes from ``--token``, then
``DOCBUS_CONSOLE__TOKEN``; on loopback without one a token is generated and the URL that logs
in with it is printed; ``--read-only`` serves no actions at all. Binding to another interface
without a token is refused (exit 2, one line): :func:`docbus.console.security.refusal`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING

from docbus.cli.arguments import port
from docbus.console.security import refusal
from docbus.settings import Settings

if TYPE_CHECKING:
    from docbus.topology import Topology

__all__ = ["EXIT_CODES", "add_arguments", "run"]

EXIT_CODES = {
    2: "usage or configuration error, or another interface than loopback without a token",
    3: "MongoDB could not be reached, or the port is in use",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to listen on (127.0.0.1; DOCBUS_CONSOLE__HOST)")
    parser.add_argument(
        "--port", type=port, help="port to listen on (8765; 0: any free one; DOCBUS_CONSOLE__PORT)"
    )
    access = parser.add_mutually_exclusive_group()
    access.add_argument(
        "--token",
        help="action token for replays and rollbacks (DOCBUS_CONSOLE__TOKEN; on loopback one "
        "is generated and printed when none is set)",
    )
    access.add_argument(
        "--read-only",
        action="store_true",
        help="no actions: nothing can be replayed or rolled back",
    )
    parser.add_argument(
        "--topology",
        help="topology file, to peek the broker before a batch is shown complete "
        "(default: infra/topology.toml when present)",
    )


def _token(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.read_only:
        return None
    if args.token:
        return str(args.token)
    if settings.console.token is not None:
        return settings.console.token.get_secret_value()
    return None


def run(args: argparse.Namespace) -> int:
    from docbus.cli import ExitCode, say_error
    from docbus.cli.config import load_settings
    from docbus.console import listen
    from docbus.errors import ConfigurationError

    settings = load_settings()
    host = args.host or settings.console.host
    port = args.port if args.port is not None else settings.console.port
    token = _token(args, settings)
    try:
        # A console that must not start says so before anything is asked of MongoDB.
        why = refusal(host, token)
        if why is not None:
            raise ConfigurationError(why)
        topology = _topology(args.topology)
        asyncio.run(_check_store(settings))
        listening = listen(
            settings, host=host, port=port, token=token, read_only=args.read_only,
            topology=topology,
        )  # fmt: skip
    except ConfigurationError as exc:
        say_error("console", str(exc))
        return ExitCode.USAGE
    except OSError as exc:
        say_error("console", f"cannot listen on {host}:{port} ({exc.strerror}); use --port")
        return ExitCode.UNAVAILABLE
    print(listening.announcement, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        listening.server.run(sockets=[listening.socket])
    sys.stdout.flush()
    return ExitCode.OK


def _topology(path: str | None) -> Topology | None:
    from docbus.topology import TopologyError, load_topology

    if path is not None:
        return load_topology(path)  # asked for: a bad file is an error
    try:
        return load_topology()
    except TopologyError:
        return None  # none shipped here: batches are shown without asking the broker


async def _check_store(settings: Settings) -> None:
    """Fail fast, on one line (the CLI's runner), when MongoDB does not answer."""
    from docbus.store import Store

    async with Store.from_settings(settings):
        pass
