"""``docbus console`` as a user starts it: refused off loopback without a token, read-only
when asked, and what a read-only console answers to an action."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.console.conftest import ROOT


def _env(local_mongo: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCBUS_", "MONGODB_URI"))}
    return env | {"DOCBUS_MONGODB__URI": local_mongo.uri, "DOCBUS_MONGODB__DATABASE": "console_cli"}


def test_another_interface_without_a_token_is_refused_on_one_line(local_mongo: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "docbus", "console", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, env=_env(local_mongo), cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docbus console: error: refusing to serve on")
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_an_unreachable_mongodb_is_one_line_and_exit_3() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCBUS_", "MONGODB_URI"))}
    env |= {"DOCBUS_MONGODB__URI": "mongodb://127.0.0.1:9", "DOCBUS_MONGODB__TIMEOUT": "0.5"}
    result = subprocess.run(
        [sys.executable, "-m", "docbus", "console", "--port", "0"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "MongoDB" in result.stderr


@pytest.mark.slow
def test_a_read_only_console_serves_pages_and_refuses_actions(local_mongo: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "docbus", "console", "--port", "0", "--read-only"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(local_mongo), cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.endswith("(read-only)\n") and "token" not in first, first
        url = first.split()[2].rstrip("/")
        with urllib.request.urlopen(f"{url}/batches", timeout=10) as response:
            page = response.read().decode()
            assert "read-only" in page and "No batches yet" in page
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        request = urllib.request.Request(
            f"{url}/dead-letters/replay", data=b"batch=b", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert "read-only" in refused.value.read().decode()
        forged_host = urllib.request.Request(f"{url}/batches", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as rebinding:
            urllib.request.urlopen(forged_host, timeout=10)
        assert rebinding.value.code == 400
    finally:
        process.terminate()
        process.wait(15)


@pytest.mark.slow
def test_demo_console_keeps_a_console_open_that_shows_the_demo() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    env = {k: v for k, v in env.items() if not k.startswith(("DOCBUS_", "MONGODB_URI"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "docbus", "demo", "--console", "--console-port", "0",
         "--batch-id", "demo-console"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env | {"COLUMNS": "120"},
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("docbus console: http://127.0.0.1:"):
                break
        summary = "".join(lines)
        assert "docbus demo: 70 documents" in summary, summary
        url = lines[-1].split()[2]
        assert "?token=" in url  # generated on loopback: replay and rollback work
        base = url.split("?")[0].rstrip("/")
        with urllib.request.urlopen(f"{base}/batches", timeout=30) as response:
            page = response.read().decode()
        assert 'data-batch="demo-console"' in page
        assert '<b class="published">70</b>' in page
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
