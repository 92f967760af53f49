"""``docbus console``: serve the operator console on this machine.

Reads the settings every command reads (``DOCBUS_*``; ``DOCBUS_CONSOLE__HOST``, ``__PORT`` and
``__TOKEN`` for the console), checks MongoDB answers, and serves :func:`docbus.console.app.
create_app` with uvicorn until Ctrl-C. The action token comes from ``--token``, then
``DOCBUS_CONSOLE__TOKEN``; on loopback without one a token is generated and the URL that logs
in with it is printed; ``--read-only`` serves no actions at all. Binding to another interface
without a token is refused (exit 2, one line): :func:`docbus.console.security.refusal`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from docbus.console.security import Guard, loopback, new_token, refusal
from docbus.settings import Settings

if TYPE_CHECKING:
    from docbus.topology import Topology

__all__ = ["EXIT_CODES", "Listening", "add_arguments", "listen", "run"]

EXIT_CODES = {
    2: "usage or configuration error, or another interface than loopback without a token",
    3: "MongoDB could not be reached, or the port is in use",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to listen on (127.0.0.1; DOCBUS_CONSOLE__HOST)")
    parser.add_argument(
        "--port", type=int, help="port to listen on (8765; 0: any free one; DOCBUS_CONSOLE__PORT)"
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


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class Listening:
    """A console ready to serve: its bound socket, the server, and the line that says where."""

    server: Any
    socket: socket.socket
    announcement: str


def listen(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    read_only: bool = False,
    topology: Topology | None = None,
) -> Listening:
    """Bind a console to ``host:port`` (``port`` 0: any free one); ``await
    listening.server.serve(sockets=[listening.socket])`` runs it on the caller's loop (what
    ``docbus demo --console`` can do). On loopback without ``token`` one is generated, unless
    ``read_only``. Raises :class:`~docbus.errors.ConfigurationError` where
    :func:`~docbus.console.security.refusal` refuses, ``OSError`` when the port is taken."""
    import uvicorn

    from docbus.console.app import ConsoleConfig, create_app
    from docbus.errors import ConfigurationError

    if read_only:
        token = None
    why = refusal(host, token)  # read-only off loopback too: nobody could log in to read
    if why is not None:
        raise ConfigurationError(why)
    generated = token is None and not read_only
    if generated:
        token = new_token()  # loopback only: refusal() stopped the rest
    sock = _bind(host, port)
    guard = Guard(token, reads_need_session=not loopback(host))
    config = ConsoleConfig(settings, guard, host=host, topology=topology)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/"
    if token is None:
        line = f"docbus console: {url} (read-only)"
    elif generated:
        line = (
            f"docbus console: {url}?token={token}\n"
            "  (the token enables replay and rollback; it was generated for this run)"
        )
    else:
        line = f"docbus console: {url} (log in with the configured action token)"
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", access_log=False, lifespan="on")
    )
    return Listening(server, sock, line)


def run(args: argparse.Namespace) -> int:
    from docbus.cli import ExitCode, say_error
    from docbus.errors import ConfigurationError
    from docbus.settings_cli import load_settings

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
