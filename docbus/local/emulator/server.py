"""The emulator as a server: listening socket, lifecycle, connection string.

:class:`Emulator` owns a :class:`~docbus.local.emulator.broker.Broker` (entities from a
Microsoft-emulator-style config, :mod:`docbus.local.emulator.config`) and accepts AMQP connections
(:mod:`docbus.local.emulator.connection`). Use it in-process (``async with Emulator(config) as
emu``), from another thread (:class:`EmulatorThread`, for sync SDK clients and pytest fixtures) or
as ``docbus emulator`` in the foreground.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from docbus.local.emulator.broker import Broker
from docbus.local.emulator.config import NamespaceConfig
from docbus.local.emulator.connection import AmqpConnection

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"


class Emulator:
    """A local Azure Service Bus namespace that the real ``azure-servicebus`` SDK talks to.

    ``port=0`` picks a free port. ``data_dir`` keeps messages across restarts (SQLite).
    ``sas_keys`` (key name → key) turns on signature checks of CBS tokens; by default any
    token is accepted, as Microsoft's emulator does.
    """

    def __init__(
        self,
        config: NamespaceConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        sas_keys: dict[str, str] | None = None,
        session_wait_default: float = 60.0,
    ) -> None:
        self.config = config
        self.host = host
        self.requested_port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.sas_keys = dict(sas_keys or {})
        self.session_wait_default = session_wait_default
        self.connections: set[AmqpConnection] = set()
        self._broker: Broker | None = None
        self._server: asyncio.Server | None = None
        self._store: Any = None

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("the emulator is not started")
        return self._broker

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connection_string(self) -> str:
        key_name, key = next(iter(self.sas_keys.items()), (DEFAULT_KEY_NAME, DEFAULT_KEY))
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={key_name};"
            f"SharedAccessKey={key};UseDevelopmentEmulator=true;"
        )

    async def start(self) -> None:
        store = None
        if self.data_dir is not None:
            from docbus.local.emulator.persistence import SqliteStore

            self.data_dir.mkdir(parents=True, exist_ok=True)
            store = SqliteStore(self.data_dir / "emulator.sqlite3")
            self._store = store
        self._broker = Broker(self.config, store=store) if store else Broker(self.config)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AmqpConnection(self), self.host, self.requested_port, reuse_address=True
        )
        logger.info("Service Bus emulator listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        if self._broker is not None:
            self._broker.close()
        if self._store is not None:
            self._store.close()
            self._store = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class EmulatorThread:
    """An :class:`Emulator` on its own event loop in a background thread.

    Lets synchronous SDK clients (and tests on any loop) use the emulator; ``call`` runs a
    function on the emulator's loop, which is the only thread that may touch the broker.
    """

    def __init__(self, config: NamespaceConfig | None = None, **options: Any) -> None:
        self.emulator = Emulator(config, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> EmulatorThread:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def main() -> None:
                self._stopped = asyncio.Event()
                try:
                    await self.emulator.start()
                except BaseException as exc:
                    ready.set_exception(exc)
                    return
                ready.set_result(None)
                await self._stopped.wait()
                await self.emulator.stop()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=run, name="docbus-emulator", daemon=True)
        self._thread.start()
        ready.result(timeout=30)
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the emulator's loop and return its result."""
        assert self._loop is not None

        async def invoke() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def connection_string(self) -> str:
        return self.emulator.connection_string

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
