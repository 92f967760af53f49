"""The local stack: the three stand-ins docbus needs, started by the project itself.

:class:`LocalStack` starts the Service Bus emulator (entities generated from the topology),
SecantusDB (a separate process: it is GPL and never imported here) and the offline
OpenAI-compatible LLM server, on free or given ports of 127.0.0.1, and exposes the
:class:`~docbus.settings.Settings` and environment variables that point docbus at them.
``docbus up`` runs it in the foreground; ``docbus demo`` (:mod:`docbus.cli.demo`) and tests use
it in-process. A stack keeping its state in a data directory holds a lock on it
(``stack.lock``, with its pid) while it runs, so a second stack on the same directory is refused
with :class:`StackInUse` rather than left to fail deep inside SecantusDB; ``docbus up`` also
checks its ports before starting anything. Neighbours: :mod:`docbus.local.emulator`,
:mod:`docbus.local.mongo`, :mod:`docbus.local.llm_server`, :mod:`docbus.topology`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import shlex
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

from docbus.errors import DocbusError
from docbus.settings import LLMSettings, MongoSettings, ServiceBusSettings, Settings
from docbus.topology import Topology, load_topology

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
    fcntl = None  # type: ignore[assignment]

OFFLINE_API_KEY = "offline-local-key"
LOCK_FILE = "stack.lock"

EXIT_CODES = {
    3: "a port or the data directory is in use (by another `docbus up`?): stop it, or choose "
    "other ports, --data-dir or --memory",
}


class StackInUse(DocbusError):
    """A port or the data directory the stack needs is taken; the message says by what."""

    transient = True  # it frees up once the other stack stops


def hold_data_dir(data_dir: Path) -> IO[str]:
    """Lock ``data_dir`` for this process (the returned file holds the lock until closed).

    Raises :class:`StackInUse` naming the other stack's pid when it is locked already.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+", encoding="utf-8")
    if fcntl is None:  # pragma: no cover
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StackInUse(
            f"data directory {data_dir} is in use by another docbus stack (pid {holder}): stop "
            "it (Ctrl-C in its shell), or give this one --data-dir DIR or --memory"
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or holds) ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not in use
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
        return False


@dataclass
class StackOptions:
    topology: Topology | None = None
    emulator_port: int = 0
    mongo_port: int | None = None
    llm_port: int = 0
    data_dir: Path | None = None
    """Keep broker messages and Mongo data here across restarts (default: in memory)."""
    database: str = "docbus"
    llm_latency: float = 0.0
    llm: bool = True
    extra_llm_config: dict[str, Any] = field(default_factory=dict)


class LocalStack:
    """Emulator + SecantusDB + offline LLM server; ``async with LocalStack() as stack``."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.topology = self.options.topology or load_topology()
        self._emulator: Any = None
        self._mongo: Any = None
        self._llm: Any = None
        self._llm_cm: Any = None
        self._lock: IO[str] | None = None

    async def start(self) -> None:
        from docbus.local.emulator import EmulatorThread, parse_config
        from docbus.local.mongo import LocalMongo

        options = self.options
        data = options.data_dir
        if data is not None:
            self._lock = hold_data_dir(data)
        try:
            self._mongo = LocalMongo(
                port=options.mongo_port, data_dir=str(data / "mongo") if data else None
            )
            await self._mongo.start()
            config = parse_config(self.topology.emulator_config())
            self._emulator = await asyncio.to_thread(
                EmulatorThread(
                    config,
                    port=options.emulator_port,
                    data_dir=data / "servicebus" if data else None,
                ).start
            )
            if options.llm:
                from docbus.local.llm_server import Latency, LLMServer, LLMServerConfig

                llm_config = LLMServerConfig(
                    port=options.llm_port,
                    latency=Latency.fixed(options.llm_latency),
                    **options.extra_llm_config,
                )
                self._llm_cm = LLMServer(llm_config).in_thread()
                self._llm = self._llm_cm.__enter__()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._llm_cm is not None:
            with contextlib.suppress(Exception):
                self._llm_cm.__exit__(None, None, None)
            self._llm_cm = self._llm = None
        if self._emulator is not None:
            await asyncio.to_thread(self._emulator.stop)
            self._emulator = None
        if self._mongo is not None:
            await self._mongo.stop()
            self._mongo = None
        if self._lock is not None:
            self._lock.close()  # releases the data directory
            self._lock = None

    async def __aenter__(self) -> LocalStack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- where things are -------------------------------------------------------------------
    @property
    def connection_string(self) -> str:
        return str(self._emulator.connection_string)

    @property
    def mongo_uri(self) -> str:
        return str(self._mongo.uri)

    @property
    def llm_base_url(self) -> str | None:
        return str(self._llm.base_url) if self._llm is not None else None

    @property
    def llm_server(self) -> Any:
        return self._llm

    def settings(self, base: Settings | None = None) -> Settings:
        """Settings pointing at this stack (other knobs from ``base`` or the environment)."""
        base = base or Settings()
        llm = base.llm
        if self._llm is not None:
            llm = LLMSettings(
                **{
                    **llm.model_dump(),
                    "api_key": SecretStr(OFFLINE_API_KEY),
                    "base_url": self.llm_base_url,
                    "azure_endpoint": None,
                    "model": "docbus-offline",
                }
            )
        return base.model_copy(
            update={
                "servicebus": ServiceBusSettings(
                    connection_string=SecretStr(self.connection_string)
                ),
                "mongodb": MongoSettings(
                    uri=SecretStr(self.mongo_uri), database=self.options.database
                ),
                "llm": llm,
            }
        )

    def environment(self) -> dict[str, str]:
        env = {
            "DOCBUS_SERVICEBUS__CONNECTION_STRING": self.connection_string,
            "DOCBUS_MONGODB__URI": self.mongo_uri,
            "DOCBUS_MONGODB__DATABASE": self.options.database,
        }
        if self._llm is not None:
            env |= {
                "DOCBUS_LLM__BASE_URL": str(self.llm_base_url),
                "DOCBUS_LLM__API_KEY": OFFLINE_API_KEY,
                "DOCBUS_LLM__MODEL": "docbus-offline",
            }
        return env


# ----------------------------------------------------------------------------------------------
# CLI: `docbus up`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topology", type=Path, help="topology file (default infra/topology.toml)")
    parser.add_argument("--servicebus-port", type=int, default=5672, help="emulator port (5672)")
    parser.add_argument("--mongo-port", type=int, default=27017, help="SecantusDB port (27017)")
    parser.add_argument("--llm-port", type=int, default=8089, help="offline LLM port (8089)")
    parser.add_argument("--llm-latency", type=float, default=0.0, help="seconds per LLM call")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".docbus"), help="state kept here (.docbus)"
    )
    parser.add_argument("--memory", action="store_true", help="keep nothing across restarts")


_PORTS = (
    ("servicebus_port", "Service Bus emulator", "--servicebus-port"),
    ("mongo_port", "SecantusDB", "--mongo-port"),
    ("llm_port", "offline LLM server", "--llm-port"),
)


def busy_port(args: argparse.Namespace) -> str | None:
    """What to say about the first of ``docbus up``'s ports that is taken, or None."""
    for attribute, what, flag in _PORTS:
        port = getattr(args, attribute)
        if port and port_in_use(port):
            return (
                f"port {port} ({what}) is in use — is `docbus up` already running? Stop it, or "
                f"choose another port with {flag}"
            )
    return None


def run(args: argparse.Namespace) -> int:
    options = StackOptions(
        topology=load_topology(args.topology) if args.topology else None,
        emulator_port=args.servicebus_port,
        mongo_port=args.mongo_port,
        llm_port=args.llm_port,
        llm_latency=args.llm_latency,
        data_dir=None if args.memory else args.data_dir,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with LocalStack(options) as stack:
            print("# docbus local stack is up; in another shell run:")
            for name, value in stack.environment().items():
                print(f"export {name}={shlex.quote(value)}")
            print("# Ctrl-C stops it.", flush=True)
            await stop.wait()

    # The data directory first: its lock names the stack that holds it, the likelier story.
    lock = hold_data_dir(options.data_dir) if options.data_dir is not None else None
    if lock is not None:
        lock.close()
    busy = busy_port(args)
    if busy is not None:
        raise StackInUse(busy)
    try:
        asyncio.run(main())
    except OSError as exc:  # a port taken between the check and the start
        if exc.errno == errno.EADDRINUSE:
            raise StackInUse(f"a port is in use ({exc}): is `docbus up` already running?") from exc
        raise
    return 0
