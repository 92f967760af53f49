"""Local MongoDB: a SecantusDB server run as a separate process, for ``docbus up``, demos and tests.

SecantusDB speaks the MongoDB wire protocol over a real TCP socket, so pymongo (and therefore
:class:`docbus.store.Store`) talks to it unchanged. It is GPL-2.0 and an optional extra
(``pip install 'docbus[local]'``): docbus never imports it, it only runs its ``__main__``
in a child process (one that ends with its starter) and waits until a ``ping`` answers.
Neighbours: the pytest fixture in :mod:`docbus.testing` wraps :class:`LocalMongo`; the emulator
and the offline LLM server are the other local stand-ins.

Durability: SecantusDB runs with its journal on and without a sync on every commit (its
``sync_on_commit`` is off), like mongod's default; a write that must survive a crash asks for it
with ``j: true`` and SecantusDB syncs that commit's journal before acknowledging it. The store
asks so for every write docbus must not lose (:mod:`docbus.store._base`), so a SIGKILL of the
server (:meth:`LocalMongo.kill_sync`) loses no acknowledged result, while the writes behind a
handler do not each pay for a sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import PyMongoError

from docbus.errors import DocbusError

__all__ = ["LocalMongo", "LocalMongoError"]

logger = logging.getLogger(__name__)

_PORT_ATTEMPTS = 3
_PROBE_TIMEOUT = 0.5
_PROBE_INTERVAL = 0.05
_STDERR_TAIL = 2000
_ORPHAN_GRACE = 10

# What the child runs instead of ``python -m secantus``: the same server, plus a thread that
# reads its stdin, a pipe only this process writes to. The pipe ends when this process does,
# however it ends (a SIGKILL too, which runs no clean-up), and the server is then stopped as
# :meth:`LocalMongo.stop_sync` would stop it (SIGTERM, then an exit after a grace period):
# a test run or ``docbus up`` killed outright leaves no server on its port. Plain Python, so
# any interpreter with SecantusDB runs it (``python=``), docbus installed there or not.
_GUARDED_SERVER = f"""
import os, runpy, signal, sys, threading, time

def watch():
    try:
        sys.stdin.buffer.read()
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep({_ORPHAN_GRACE})
    os._exit(1)

threading.Thread(target=watch, name="orphan-guard", daemon=True).start()
sys.argv[0] = "secantus"
runpy.run_module("secantus", run_name="__main__", alter_sys=True)
"""


class LocalMongoError(DocbusError):
    """The local SecantusDB could not be started (or is not installed)."""


def _port_in_use(port: int) -> bool:
    """Whether something listens on ``port``. Connections a killed server left in TIME_WAIT
    do not count: SecantusDB listens with ``SO_REUSEADDR`` and can take the port at once, so
    a restart on the same port (a crash test, ``docbus up`` after a kill) is not refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalMongo:
    """A SecantusDB child process on 127.0.0.1.

    ``port=None`` picks a free port; ``data_dir=None`` keeps the data in memory (gone on stop),
    a directory keeps it across restarts. Use ``async with LocalMongo() as mongo:`` (or
    ``with`` in synchronous code such as a session-scoped pytest fixture), then ``mongo.uri``.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float = 30.0,
        python: str | None = None,
    ) -> None:
        self._requested_port = port
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._startup_timeout = startup_timeout
        self._python = python or sys.executable
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._workdir: str | None = None
        self._log: IO[bytes] | None = None
        self._guard: IO[bytes] | None = None  # the child's stdin (see _GUARDED_SERVER)

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalMongoError("the local MongoDB is not started")
        return self._port

    @property
    def uri(self) -> str:
        """``mongodb://127.0.0.1:PORT/?retryWrites=false`` once started.

        One local node has nothing to retry a write against, and SecantusDB slows down with
        every retryable write it remembers, so the local URI turns them off."""
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false"

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs (to signal it, e.g. SIGSTOP in fault tests)."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._port else "stopped"
        return f"LocalMongo({state})"

    # -- synchronous lifecycle -------------------------------------------------------------

    def start_sync(self) -> None:
        """Start the server and block until it answers ``ping``."""
        self._check_not_running()
        try:
            self._start_sync()
        except BaseException:
            self.stop_sync()  # never leave a half-started server behind
            raise

    def _start_sync(self) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            self._spawn()
            deadline = time.monotonic() + self._startup_timeout
            while True:
                if self._exited_with_port_clash(attempt):
                    break
                self._check_alive()
                if self._listening() and self._ping_sync():
                    return
                if time.monotonic() > deadline:
                    self._fail(f"did not answer ping within {self._startup_timeout:g} s")
                time.sleep(_PROBE_INTERVAL)

    def stop_sync(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace`` seconds) and clean up."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                # Give the signal handler time to run before knocking (see below).
                process.wait(min(0.2, grace))
            except subprocess.TimeoutExpired:
                self._wake_accept_loop(process, time.monotonic() + grace)
            try:
                process.wait(max(0.0, grace))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._cleanup()

    def kill_sync(self) -> None:
        """SIGKILL the server, as a crash or a power cut of its process would, and clean up.

        The data directory stays as the crash left it: :meth:`start_sync` again on the same
        ``data_dir`` shows what survived (for tests of durability and for chaos runs)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._cleanup()

    async def kill(self) -> None:
        """:meth:`kill_sync` without blocking the event loop."""
        await asyncio.to_thread(self.kill_sync)

    def _wake_accept_loop(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        # SecantusDB's shutdown joins its accept thread with a 2 s timeout, and a thread
        # blocked in accept() only notices the stop when a connection arrives: knock until
        # the process has exited, turning a 2 s stop into ~0.3 s. Knocking only starts once
        # the SIGTERM handler had time to run; knocks that race it were seen to leave the
        # server running until the grace period ran out.
        while process.poll() is None and time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                pass
            try:
                process.wait(0.02)
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> Self:
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_sync()

    # -- asynchronous lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start the server and wait (without blocking the loop) until it answers ``ping``."""
        self._check_not_running()
        try:
            await self._start()
        except BaseException:
            await asyncio.shield(self.stop())  # never leave a half-started server behind
            raise

    async def _start(self) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            self._spawn()
            deadline = time.monotonic() + self._startup_timeout
            while True:
                if self._exited_with_port_clash(attempt):
                    break
                self._check_alive()
                if self._listening() and await self._ping_async():
                    return
                if time.monotonic() > deadline:
                    await asyncio.to_thread(
                        self._fail, f"did not answer ping within {self._startup_timeout:g} s"
                    )
                await asyncio.sleep(_PROBE_INTERVAL)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace`` seconds) and clean up."""
        await asyncio.to_thread(self.stop_sync, grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- internals -------------------------------------------------------------------------

    def _check_not_running(self) -> None:
        if self.running:
            raise LocalMongoError(f"already running on port {self._port}")

    def _spawn(self) -> None:
        if importlib.util.find_spec("secantus") is None:
            raise LocalMongoError(
                "SecantusDB is not installed; install the local extra: pip install 'docbus[local]'"
            )
        self._cleanup()
        if self._requested_port is not None and _port_in_use(self._requested_port):
            raise LocalMongoError(f"port {self._requested_port} is already in use")
        self._port = self._requested_port or _free_port()
        # A private working directory and an empty config file: SecantusDB would otherwise
        # pick up a secantusd.toml from the current directory or the user's home.
        self._workdir = tempfile.mkdtemp(prefix="docbus-mongo-")
        config = Path(self._workdir, "secantusd.toml")
        config.write_text("")
        storage = ":memory:"
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            storage = str(self._data_dir.resolve())
        self._log = open(Path(self._workdir, "secantus.log"), "w+b")  # noqa: SIM115
        command = [
            self._python, "-c", _GUARDED_SERVER,
            "--config", str(config),
            "--host", "127.0.0.1",
            "--port", str(self._port),
            "--storage-path", storage,
            "--log-level", "INFO",
        ]  # fmt: skip
        logger.debug("starting SecantusDB on port %d (%s)", self._port, storage)
        self._process = subprocess.Popen(
            command,
            cwd=self._workdir,
            stdin=subprocess.PIPE,  # never written to: its end is the end of this process
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._guard = self._process.stdin

    def _exited_with_port_clash(self, attempt: int) -> bool:
        """True if the process died because its (self-picked) port was taken: try another."""
        if self._process is None or self._process.poll() is None:
            return False
        if self._requested_port is not None or attempt == _PORT_ATTEMPTS - 1:
            return False
        if "Address already in use" not in self._output_tail():
            return False
        logger.debug("port %s was taken meanwhile; trying another", self._port)
        self._process = None
        return True

    def _listening(self) -> bool:
        """Our own child says it listens (a ping alone could reach another server)."""
        if self._log is None:
            return False
        self._log.flush()
        self._log.seek(0)
        return f"listening on 127.0.0.1:{self._port}".encode() in self._log.read()

    def _check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._fail(f"exited with status {self._process.returncode}")

    def _fail(self, what: str) -> None:
        tail = self._output_tail()
        self.stop_sync()
        raise LocalMongoError(
            f"SecantusDB on port {self._port} {what}."
            + (f"\nIts output ends:\n{tail}" if tail else "")
        )

    def _output_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - _STDERR_TAIL))
        return self._log.read().decode("utf-8", "replace").strip()

    def _ping_sync(self) -> bool:
        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=int(_PROBE_TIMEOUT * 1000)
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    async def _ping_async(self) -> bool:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            self.uri, serverSelectionTimeoutMS=int(_PROBE_TIMEOUT * 1000)
        )
        try:
            await client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            await client.close()

    def _cleanup(self) -> None:
        if self._guard is not None:
            with contextlib.suppress(OSError):
                self._guard.close()
            self._guard = None
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
