"""Serving the console: bind it and hand back a uvicorn server to run.

:func:`listen` binds a socket (port 0: any free one), decides the action token — the one given,
or on loopback a generated one unless read-only; another interface without a token is refused
(:func:`docbus.console.security.refusal`) — and returns a :class:`Listening`: the server, its
socket and the line that says where it listens (with the token's log-in URL when generated).
``docbus console`` (:mod:`docbus.cli.console`) runs it until Ctrl-C; a caller with its own
event loop (``docbus demo --console``) can ``await listening.server.serve(sockets=[...])``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from docbus.console.security import Guard, loopback, new_token, refusal
from docbus.settings import Settings

if TYPE_CHECKING:
    from docbus.topology import Topology

__all__ = ["Listening", "listen"]


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
    listening.server.serve(sockets=[listening.socket])`` runs it on the caller's loop. On
    loopback without ``token`` one is generated, unless ``read_only``. Raises
    :class:`~docbus.errors.ConfigurationError` where :func:`~docbus.console.security.refusal`
    refuses, ``OSError`` when the port is taken."""
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
