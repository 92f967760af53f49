"""``docbus worker`` as a user runs it: exit codes, and one clear line for what stops it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.subscriber.conftest import Stack

DOCBUS = Path(sys.executable).parent / "docbus"
"""The console script, as a user runs it (``python -m`` would put the working directory on the
import path by itself)."""

HANDLERS = """
from handlers import DeadLetter, SystemicFailure, handler


@handler(topic="docs", subscription="work", version="1")
async def work(doc, ctx):
    behaviour = doc.metadata.get("behaviour")
    if behaviour == "poison":
        raise DeadLetter("BadDocument", "no usable text")
    if behaviour == "no-llm":
        raise SystemicFailure("AuthenticationFailed", "the key was refused")
    return {"length": len(doc.text)}
"""

TOPOLOGY = (
    '[defaults]\nmax_delivery_count = 3\nlock_duration = "PT2S"\n'
    '[[topics]]\nname = "docs"\n[[topics.subscriptions]]\nname = "work"\n'
    '[[topics.subscriptions]]\nname = "other"\n'
)


def stack_env(stack: Stack) -> dict[str, str]:
    plain = {
        k: v for k, v in os.environ.items() if not k.startswith(("DOCBUS_", "OPENAI_", "AZURE_"))
    }
    return {
        **plain,
        "DOCBUS_SERVICEBUS__CONNECTION_STRING": stack.connection_string,
        "DOCBUS_MONGODB__URI": stack.settings.mongodb.uri.get_secret_value(),
        "DOCBUS_MONGODB__DATABASE": stack.settings.mongodb.database,
    }


async def docbus_worker(
    cwd: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``docbus worker ARGS`` in ``cwd``, as a separate process; its exit code and output."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DOCBUS), "worker", *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    return await asyncio.to_thread(run)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's directory: a handler module and a topology file, nothing installed."""
    (tmp_path / "my_handlers.py").write_text(HANDLERS)
    (tmp_path / "topology.toml").write_text(TOPOLOGY)
    return tmp_path


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_readme_dotted_handler_module_is_found_in_the_working_directory(
    stack: Stack, project: Path
) -> None:
    done = await docbus_worker(
        project, stack_env(stack), "--handlers", "my_handlers", "--until-idle", "0.5",
        "--topology", "topology.toml",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


async def test_a_missing_handler_module_is_one_line_and_exit_2(stack: Stack, project: Path) -> None:
    done = await docbus_worker(project, stack_env(stack), "--handlers", "no_such_handlers")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert "no_such_handlers" in line


async def test_an_unreachable_mongo_is_one_line_and_exit_3(stack: Stack, project: Path) -> None:
    env = {
        **stack_env(stack),
        "DOCBUS_MONGODB__URI": f"mongodb://127.0.0.1:{closed_port()}",
        "DOCBUS_MONGODB__TIMEOUT": "1",
    }
    started = time.monotonic()
    done = await docbus_worker(project, env, "--handlers", "my_handlers", "--until-idle", "1")
    assert done.returncode == 3, done.stderr
    line = one_line(done.stderr)
    assert "MongoDB" in line
    assert time.monotonic() - started < 20


async def test_a_malformed_connection_string_is_one_line_and_exit_2(
    stack: Stack, project: Path
) -> None:
    env = {**stack_env(stack), "DOCBUS_SERVICEBUS__CONNECTION_STRING": "Endpoint=nonsense;Key"}
    done = await docbus_worker(project, env, "--handlers", "my_handlers", "--until-idle", "1")
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "connection string" in line.lower()
    assert "nonsense" not in line  # never echoed: it may hold a key


@pytest.mark.parametrize(
    ("topic", "subscription"), [("docs", "missing"), ("nosuch", "x")],
    ids=["subscription", "topic and subscription"],
)  # fmt: skip
async def test_a_subscription_missing_on_the_broker_is_one_line_and_exit_2(
    stack: Stack, project: Path, topic: str, subscription: str
) -> None:
    # Only the start error: not also a warning that the dead-letter capture, which runs
    # while the subscriptions are checked, could not open that subscription's queue either.
    handlers = HANDLERS.replace('"docs"', f'"{topic}"').replace('"work"', f'"{subscription}"')
    (project / "my_handlers.py").write_text(handlers)
    done = await docbus_worker(
        project, stack_env(stack), "--handlers", "my_handlers", "--until-idle", "1"
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"subscription {topic}/{subscription} does not exist" in line


async def publish(stack: Stack, behaviours: list[str]) -> None:
    from publisher import publish_documents

    docs = [
        {"doc_id": f"d{i}", "text": f"text {i}", "metadata": {"behaviour": b}}
        for i, b in enumerate(behaviours)
    ]
    report = await publish_documents(
        docs, topic="docs", batch_id="b1", settings=stack.settings, store=stack.store,
    )  # fmt: skip
    assert report.ok, report


@pytest.mark.parametrize(
    ("behaviours", "code", "outcomes"),
    [
        (["ok", "ok"], 0, {"completed": 2}),
        (["ok", "poison"], 1, {"completed": 1, "dead-lettered": 1}),
        (["no-llm"], 4, {"parked": 1}),
    ],
)
async def test_the_exit_code_says_how_the_run_ended_and_json_says_what_happened(
    stack: Stack, project: Path, behaviours: list[str], code: int, outcomes: dict[str, int]
) -> None:
    await publish(stack, behaviours)
    done = await docbus_worker(
        project, stack_env(stack), "--handlers", "my_handlers", "--until-idle", "1",
        "--topology", "topology.toml", "--json",
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    summary = json.loads(done.stdout)
    assert summary["exit_code"] == code
    assert summary["handlers"]["work"]["outcomes"] == outcomes
    if code == 1:
        assert summary["handlers"]["work"]["dead_letter_reasons"] == {"BadDocument": 1}
    if code == 4:
        assert summary["handlers"]["work"]["parked_left"] == {"SystemicFailure": 1}


async def test_help_lists_the_exit_codes(project: Path) -> None:
    done = await docbus_worker(project, dict(os.environ), "--help")
    assert done.returncode == 0
    codes = done.stdout.split("exit codes:")[1]
    for code in ("0", "1", "2", "3", "4"):
        assert f"\n  {code} " in codes, codes


async def test_an_unreachable_broker_is_one_line_and_exit_3_in_seconds(
    stack: Stack, project: Path
) -> None:
    env = {
        **stack_env(stack),
        "DOCBUS_SERVICEBUS__CONNECTION_STRING": stack.connection_string.replace(
            f":{stack.emulator.emulator.port};", f":{closed_port()};"
        ),
    }
    started = time.monotonic()
    done = await docbus_worker(project, env, "--handlers", "my_handlers", "--until-idle", "1")
    assert done.returncode == 3, done.stderr
    assert "Service Bus" in one_line(done.stderr)
    assert time.monotonic() - started < 10  # not the SDK's 12 s of retries


async def test_a_worker_without_an_llm_configured_never_imports_the_llm_stack(
    stack: Stack, project: Path
) -> None:
    """The openai SDK takes ~0.5 s to import: a worker that cannot have an LLM client (none is
    configured) does not pay it before its first result."""
    env = {**stack_env(stack), "PYTHONPROFILEIMPORTTIME": "1"}  # every import, on stderr
    done = await docbus_worker(
        project, env, "--handlers", "my_handlers", "--until-idle", "0.5",
        "--topology", "topology.toml",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "subscriber.worker" in imported  # (the profile is there)
    assert not [name for name in imported if name.startswith(("openai", "handlers.llm"))]
