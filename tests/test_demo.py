"""The README's first command: `docbus demo` runs the whole job on the embedded stack."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

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
