"""Helpers the benchmarks share: a child process's first stdout line and its CPU time.

The benchmarks run the stand-ins (emulator, offline LLM server) in processes of their own so
that their figures are not shaped by sharing one interpreter; these two functions are how a
bench learns where a child listens and how much CPU it spent.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


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
