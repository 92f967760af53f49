"""Helpers the benchmarks share: a stand-in child process, its first stdout line, its CPU time,
and a count of the Mongo commands a process sent.

The benchmarks run the stand-ins (emulator, offline LLM server) in processes of their own so
that their figures are not shaped by sharing one interpreter; :func:`child` runs one until the
bench is done, and the other two functions are how a bench learns where a child listens and
how much CPU it spent.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pymongo import monitoring

STARTUP_TIMEOUT = 60.0


@contextlib.contextmanager
def child(
    argv: list[str], log: Path, ready: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Run ``argv``; yield its first stdout line (which must contain ``ready``) and its pid;
    terminate it on exit. Its stderr goes to ``log``."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, env=env)
        try:
            line = first_line(process, STARTUP_TIMEOUT)
            if ready not in line:
                what = " ".join(argv[2:4])
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{what} did not start: {line}\n{tail}")
            yield line, process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """A child's first stdout line (what it prints once ready), or "" on exit or timeout."""
    stdout = process.stdout
    assert stdout is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].decode().strip() if lines else ""


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc); None where unavailable."""
    if pid is None:
        return None
    if pid == os.getpid():
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CommandCounter(monitoring.CommandListener):
    """Counts the Mongo commands this process sends, by command (and collection, for reads and
    writes: ``insert:results``). Register it before any client exists (``monitoring.register``):
    it applies to the clients created afterwards."""

    COLLECTION_COMMANDS = ("update", "insert", "find", "delete", "findAndModify", "aggregate")

    def __init__(self) -> None:
        self.by_name: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = event.command_name
        if key in self.COLLECTION_COMMANDS:
            key += ":" + str(event.command.get(key, ""))
        self.by_name[key] = self.by_name.get(key, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass
