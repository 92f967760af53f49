"""Untrusted text in the CLI's output: document ids and text, a handler's reason, LLM output.

A document whose id, text and dead-letter reason carry Rich markup and terminal escape
sequences (ESC colour codes, an OSC title sequence ended by BEL) goes through the real CLI —
``publish``, a ``worker`` subprocess whose handler dead-letters it, then ``dlq list``, ``dlq
show``, ``replay --dry-run``, ``results history``, ``report`` and ``publish --dry-run`` — and
every one shows the markup literally and writes no raw ESC or BEL, on stdout or in the
worker's log lines on stderr. :mod:`docbus.cli.render` is what they share.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The replay tests' stack: topic docs, subscriptions alpha (the hostile handler's) and beta.
from tests.replay.conftest import TOPOLOGY_TOML, servicebus_topology, stack  # noqa: F401
from tests.stack import Stack

MARKUP = "[bold red]x[/] markup"
ESCAPES = "\x1b[31mRED\x1b]0;PWNED-TITLE\x07"
POISON_ID = "t-5[bold]"
FINE_ID = "t-6[bold]\x1b[41m"
REASON = "Bad[bold]\x1b[31mReason\x07"

HANDLERS = f"""
from handlers import Context, DeadLetter, Document, handler


@handler(topic="docs", subscription="alpha", version="1", name="alpha")
async def alpha(doc: Document, ctx: Context) -> dict:
    if doc.text.startswith("[bold red]"):
        raise DeadLetter({REASON!r}, "refused: " + doc.text)
    return {{"summary": doc.text}}
"""


def docbus(*argv: str, cwd: Path, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, its stdout a pipe (not a terminal), as a script or a user's `| less`."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "docbus", *argv],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )  # fmt: skip


def assert_safe(result: subprocess.CompletedProcess[str], *literal: str) -> None:
    """No raw ESC or BEL on either stream, and each ``literal`` shown as it is."""
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream and "\x07" not in stream, stream
    flat = result.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    for text in literal:
        assert text.replace(" ", "") in flat, (text, result.stdout)


@pytest.mark.slow
async def test_markup_and_escape_sequences_from_a_document_are_shown_not_obeyed(
    stack: Stack,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    (tmp_path / "hostile_handlers.py").write_text(HANDLERS)
    (tmp_path / "topology.toml").write_text(TOPOLOGY_TOML)
    topology = ("--topology", "topology.toml")
    source = tmp_path / "docs.jsonl"
    rows = [
        {"id": POISON_ID, "text": f"{MARKUP} {ESCAPES}"},
        {"id": FINE_ID, "text": f"fine {ESCAPES}"},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    publish = (
        "publish", str(source), "--topic", "docs", "--format", "jsonl", "--id-field", "id",
        *topology,
    )  # fmt: skip

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return docbus(*argv, cwd=tmp_path)

    dry = await asyncio.to_thread(run, *publish, "--batch-id", "esc-1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert_safe(dry, POISON_ID, "t-6[bold]\\u001b[41m")

    sent = await asyncio.to_thread(run, *publish, "--batch-id", "esc-1")
    assert sent.returncode == 0, sent.stderr
    worker = await asyncio.to_thread(
        run, "worker", "--handlers", "hostile_handlers.py", "--until-idle", "2", *topology
    )
    assert worker.returncode in (0, 1), worker.stderr
    assert_safe(worker, "Bad[bold]\\u001b[31mReason\\u0007")
    assert "Bad[bold]\\u001b[31mReason\\u0007" in worker.stderr  # the LOG line, escaped

    listing = await asyncio.to_thread(run, "dlq", "list")
    assert listing.returncode == 0, listing.stderr
    assert_safe(listing, POISON_ID, "Bad[bold]\\u001b[31mReason\\u0007")
    dead_letter_id = (await stack.store.dead_letters())[0].id

    shown = await asyncio.to_thread(run, "dlq", "show", dead_letter_id)
    assert shown.returncode == 0, shown.stderr
    assert_safe(shown, MARKUP, "\\u001b]0;PWNED-TITLE\\u0007", "Bad[bold]\\u001b[31mReason")

    replay = await asyncio.to_thread(run, "replay", "--batch", "esc-1", "--dry-run")
    assert replay.returncode == 0, replay.stderr
    assert_safe(replay, POISON_ID)

    history = await asyncio.to_thread(run, "results", "history", FINE_ID)
    assert history.returncode == 0, history.stderr
    assert_safe(history, "results of t-6[bold]\\u001b[41m:")

    report = await asyncio.to_thread(run, "report", "--batch", "esc-1")
    assert report.returncode in (0, 1), report.stderr
    assert_safe(report, "Bad[bold]\\u001b[31mReason\\u0007")

    # At 80 columns (a default terminal) tables fold text (headers last) and keep numbers whole.
    def narrow(*argv: str) -> subprocess.CompletedProcess[str]:
        return docbus(*argv, cwd=tmp_path, columns=80)

    for argv, words in (
        (("dlq", "list"), ("id", "reason", "step", "error", "dead-lettered", "replayed")),
        (("results", "history", FINE_ID), ("handler", "batch", "written at", "current")),
        # (status drops its borders and bars below 110 columns: its lines are the table)
        (("status", "--batch", "esc-1"), ("handler", "published", "alpha", "100%")),
    ):
        result = await asyncio.to_thread(narrow, *argv)
        assert result.returncode in (0, 1), result.stderr
        lines = result.stdout.splitlines()
        assert all(len(line) <= 80 and line == line.rstrip() for line in lines), result.stdout
        assert "…" not in result.stdout, result.stdout
        bordered = argv[0] != "status"
        headers = " ".join(
            f" {line} " for line in lines if not bordered or line.startswith(("┃", "│"))
        )
        for word in words:
            assert f" {word} " in headers, (word, result.stdout)
