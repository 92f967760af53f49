"""The processes the chaos suite runs, kills, freezes and restarts.

Every component is a child process of its own, with one log file per incarnation (the log
scan reads them all):

- :class:`LLMServer`: the offline OpenAI-compatible server (``python -m docbus.local.llm_server``),
  with an API key and fault rates; never killed (its counters are what the audit is checked
  against);
- :class:`EmulatorProcess`: ``python -m docbus emulator --data-dir ... --sas-key ...``; killed
  with SIGKILL and restarted on the same port with the same data, so messages survive and
  clients reconnect;
- :class:`MongoProcess`: SecantusDB through :class:`docbus.local.mongo.LocalMongo` on a data
  directory; frozen (SIGSTOP/SIGCONT), killed and restarted on the same port;
- :class:`WorkerPool`: ``docbus worker`` processes running the built-in handlers, SIGKILLed and
  restarted at random.

First stdout lines are read with ``bench/_support.first_line``, as the other benchmarks do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from _support import first_line

from docbus.local.mongo import LocalMongo

STARTUP_TIMEOUT = 60.0
PYTHON = sys.executable


def clean_environment() -> dict[str, str]:
    """This process's environment without any docbus, OpenAI, Azure or Mongo setting, so a
    developer's own configuration cannot leak into the children."""
    prefixes = ("DOCBUS_", "OPENAI_", "AZURE_", "MONGODB_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@dataclass
class Child:
    """A child process that can be killed and started again; one log file per incarnation."""

    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    _log: IO[bytes] | None = None

    def start(self, ready: str | None = None) -> str:
        """Start it; with ``ready``, wait for a first stdout line holding it and return it."""
        if self._log is not None:
            self._log.close()
        log = self.log_dir / f"{self.name}.{len(self.logs)}.log"
        self.logs.append(log)
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else self._log,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
        )
        if ready is None:
            return ""
        line = first_line(self.process, STARTUP_TIMEOUT)
        if ready not in line:
            self.kill()
            raise RuntimeError(
                f"{self.name} did not start: {line!r}\n" + log.read_text(errors="replace")[-2000:]
            )
        # Keep draining stdout into the log: a full pipe would block the child.
        assert self.process.stdout is not None
        _pump(self.process.stdout, self._log)
        return line

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, grace: float) -> bool:
        """SIGTERM, then SIGKILL after ``grace`` seconds; True if it exited by itself."""
        clean = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                clean = False
                self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        return clean


def _pump(source: IO[bytes], sink: IO[bytes]) -> None:
    """Copy ``source`` into ``sink`` line by line on a daemon thread."""

    def copy() -> None:
        for chunk in iter(lambda: source.readline(), b""):
            sink.write(chunk)
            sink.flush()

    threading.Thread(target=copy, daemon=True).start()


class LLMServer:
    """The offline LLM server with an API key and ~``fault_rate`` injected faults."""

    def __init__(
        self, log_dir: Path, *, api_key: str, seed: int, latency: float, fault_rate: float
    ) -> None:
        # Split the fault rate over the kinds a real endpoint shows: 429s (with Retry-After),
        # 500s, 503s and answers whose JSON is cut short.
        share = fault_rate / 5
        self.child = Child(
            "llm",
            [PYTHON, "-m", "docbus", "llm-server", "--port", "0", "--api-key", api_key,
             "--seed", str(seed), "--latency", str(latency), "--log-level", "warning",
             "--rate-429", f"{2 * share:.4f}", "--retry-after", "0.5",
             "--rate-500", f"{share:.4f}", "--rate-503", f"{share:.4f}",
             "--rate-malformed", f"{share:.4f}"],
            log_dir,
        )  # fmt: skip
        self.base_url = ""

    def start(self) -> None:
        line = self.child.start(ready="http://")
        self.base_url = line.rsplit(" at ", 1)[1]

    @property
    def admin_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/_admin"


class EmulatorProcess:
    """The Service Bus emulator on a data directory and a SAS key; restartable on its port."""

    def __init__(self, log_dir: Path, *, config: Path, data_dir: Path, sas_key: str) -> None:
        self.sas_key = sas_key
        self.child = Child(
            "emulator",
            [PYTHON, "-m", "docbus", "emulator", "--port", "0", "--config", str(config),
             "--data-dir", str(data_dir), "--sas-key", f"RootManageSharedAccessKey={sas_key}",
             "--log-level", "warning"],
            log_dir,
        )  # fmt: skip
        self.connection_string = ""

    def start(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                line = self.child.start(ready="Endpoint=")
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)  # the port may still be held by the killed incarnation
        if not self.connection_string:
            # Later incarnations listen on the same port, so clients reconnect to them.
            port = line.split("sb://", 1)[1].split(";", 1)[0].rsplit(":", 1)[1]
            self.child.argv[self.child.argv.index("--port") + 1] = port
        self.connection_string = line

    def kill(self) -> None:
        self.child.kill()

    def stop(self) -> None:
        self.child.stop(grace=15)


class MongoProcess:
    """SecantusDB on a data directory through LocalMongo: freeze, kill, restart on its port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.mongo = LocalMongo(data_dir=data_dir)
        self.port: int | None = None

    def start(self) -> None:
        if self.port is not None:  # a restart: the same port, so clients reconnect
            self.mongo = LocalMongo(port=self.port, data_dir=self.data_dir)
        self.mongo.start_sync()
        self.port = self.mongo.port

    @property
    def uri(self) -> str:
        return self.mongo.uri

    @property
    def pid(self) -> int | None:
        return self.mongo.pid

    def freeze(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.mongo.kill_sync()  # the data directory stays as the crash left it

    def stop(self) -> None:
        self.mongo.stop_sync()


class WorkerPool:
    """``docbus worker`` processes running the built-in handlers; kill one, restart it."""

    def __init__(
        self, count: int, log_dir: Path, *, env: dict[str, str], concurrency: int, topology: Path
    ) -> None:
        argv = [PYTHON, "-m", "docbus", "worker", "--handlers", "handlers.builtin",
                "--concurrency", str(concurrency), "--topology", str(topology),
                "--log-level", "info"]  # fmt: skip
        self.workers = [Child(f"worker{i}", argv, log_dir, env=env) for i in range(count)]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def kill(self, index: int) -> None:
        self.workers[index].kill()

    def restart(self, index: int) -> None:
        self.workers[index].start()

    def stop(self, grace: float) -> int:
        """Stop all (SIGTERM at once, then wait); returns how many had to be SIGKILLed."""
        for worker in self.workers:
            if worker.alive() and worker.process is not None:
                worker.process.terminate()
        return sum(0 if worker.stop(grace) else 1 for worker in self.workers)

    @property
    def logs(self) -> list[Path]:
        return [log for worker in self.workers for log in worker.logs]
