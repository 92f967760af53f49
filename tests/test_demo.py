"""The README's first command: `docbus demo` runs the whole job on the embedded stack."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pymongo import MongoClient


def test_demo_accounts_for_every_published_document() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    env |= {"COLUMNS": "120"}
    result = subprocess.run(
        [sys.executable, "-m", "docbus", "demo"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "docbus demo: 70 documents" in out
    assert "entities" in out and "supplier_risk" in out
    assert re.search(r"skipped as invalid\s*│\s*4\s*│", out), out
    assert "exactly one current result or one dead letter" in out
    assert "OFFLINE model" in result.stderr
    assert "supplier_news.jsonl:12" in result.stderr  # the malformed line, with file:line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_prints_the_environment_of_a_working_stack() -> None:
    ports = [_free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "docbus", "up", "--memory", "--servicebus-port", str(ports[0]),
         "--mongo-port", str(ports[1]), "--llm-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        exports: dict[str, str] = {}
        for line in proc.stdout:
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                exports[name] = value.strip("'")
            if line.startswith("# Ctrl-C"):
                break
        assert f"sb://127.0.0.1:{ports[0]}" in exports["DOCBUS_SERVICEBUS__CONNECTION_STRING"]
        assert exports["DOCBUS_LLM__BASE_URL"] == f"http://127.0.0.1:{ports[2]}/v1"
        with MongoClient(exports["DOCBUS_MONGODB__URI"], serverSelectionTimeoutMS=5000) as mongo:
            assert mongo.admin.command("ping")["ok"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _up(*argv: str) -> list[str]:
    return [sys.executable, "-m", "docbus", "up", *argv]


def _wait_until_up(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("# Ctrl-C"):
            return
    raise AssertionError(f"docbus up ended early: {proc.wait()}")


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_up_started_twice_says_what_is_in_use_in_one_line(tmp_path: Path) -> None:
    ports = [str(_free_port()) for _ in range(3)]
    flags = ("--servicebus-port", "--mongo-port", "--llm-port")
    same_ports = [item for pair in zip(flags, ports, strict=True) for item in pair]
    data = tmp_path / "state"
    first = subprocess.Popen(
        _up("--data-dir", str(data), *same_ports), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_until_up(first)

        # The same data directory: refused whatever the ports, naming the other stack.
        other_ports = [item for flag in flags for item in (flag, str(_free_port()))]
        again = subprocess.run(
            _up("--data-dir", str(data), *other_ports), capture_output=True, text=True, timeout=60
        )
        line = _one_line_failure(again)
        assert line.startswith("docbus up: error: data directory ")
        assert f"in use by another docbus stack (pid {first.pid})" in line
        assert "--data-dir" in line and "--memory" in line

        # The same ports, data elsewhere: refused before starting anything, naming the port.
        again = subprocess.run(
            _up("--memory", *same_ports), capture_output=True, text=True, timeout=60
        )
        line = _one_line_failure(again)
        assert line.startswith(f"docbus up: error: port {ports[0]} (Service Bus emulator) is")
        assert "already running" in line and "--servicebus-port" in line

        first.send_signal(signal.SIGINT)
        assert first.wait(30) == 0
        # Once the first has stopped, the directory is free again.
        assert not (data / "stack.lock").exists() or _lock_is_free(data / "stack.lock")
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def _lock_is_free(path: Path) -> bool:
    import fcntl

    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def test_demo_json_is_one_document_on_stdout(tmp_path: Path) -> None:
    samples = Path(__file__).resolve().parent.parent / "docbus" / "samples" / "supplier_news.jsonl"
    lines = samples.read_text(encoding="utf-8").splitlines()
    source = tmp_path / "three.jsonl"
    source.write_text("\n".join([*lines[:3], lines[11]]) + "\n", encoding="utf-8")  # 1 malformed
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    result = subprocess.run(
        [sys.executable, "-m", "docbus", "demo", "--json", "--input", str(source)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # nothing else on stdout
    assert (summary["published"], summary["skipped"]) == (3, 1)
    assert summary["accounted"] is True and summary["model"] == "docbus-offline"
    for name in ("entities", "supplier_risk"):
        handler = summary["handlers"][name]
        assert handler["done"] + sum(handler["dead_lettered"].values()) == 3
        assert handler["unaccounted"] == 0
    assert summary["llm"]["calls"] > 0
    assert "three.jsonl:4" in result.stderr  # the malformed line, reported on stderr
