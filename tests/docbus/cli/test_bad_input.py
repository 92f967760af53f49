"""Bad input on the command line: one line naming what is wrong and what to do, a non-zero exit,
no traceback, nothing connected to or lost — through the real ``docbus`` entry point."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from docbus import cli
from docbus.store import Store
from tests.docbus.cli.test_runner import mongo_env, one_line, run

__all__ = ["mongo_env"]

pytestmark = pytest.mark.usefixtures("clean_env")


# -- values argparse refuses at parse time (exit 2, before connecting) -------------------------

BAD_VALUES = {
    "worker --prefetch -1": (
        ["worker", "--handlers", "x", "--prefetch", "-1"], "argument --prefetch: must be 0 or more"
    ),
    "worker --until-idle -1": (
        ["worker", "--handlers", "x", "--until-idle", "-1"], "argument --until-idle: must be 0"
    ),
    "worker --max-messages 0": (
        ["worker", "--handlers", "x", "--max-messages", "0"],
        "argument --max-messages: must be 1 or more",
    ),
    "worker --concurrency 0": (
        ["worker", "--handlers", "x", "--concurrency", "0"], "argument --concurrency: must be 1"
    ),
    "status --limit -1": (["status", "--limit", "-1"], "argument --limit: must be 1 or more"),
    "dlq list --limit -5": (["dlq", "list", "--limit", "-5"], "argument --limit: must be 0 or"),
    "parked list --limit -5": (["parked", "list", "--limit", "-5"], "argument --limit: must be 0"),
    "publish --batch-id ''": (
        ["publish", "x.jsonl", "--topic", "t", "--batch-id", ""],
        "argument --batch-id: must not be empty",
    ),
    "publish --batch-id a:b": (
        ["publish", "x.jsonl", "--topic", "t", "--batch-id", "a:b"], "invalid batch id 'a:b'"
    ),
    "publish --budget inf": (
        ["publish", "x.jsonl", "--topic", "t", "--budget", "inf"], "not a number of dollars: 'inf'"
    ),
    "publish --budget nan": (
        ["publish", "x.jsonl", "--topic", "t", "--budget", "nan"], "not a number of dollars: 'nan'"
    ),
    "publish --budget 0": (
        ["publish", "x.jsonl", "--topic", "t", "--budget", "0"], "must be more than 0 dollars"
    ),
    "replay --rate 0": (["replay", "--dry-run", "--rate", "0"], "argument --rate: must be more"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "expected"), BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_a_bad_value_is_a_usage_error_before_anything_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str],
    expected: str,
) -> None:  # fmt: skip
    # Nothing reachable: a command that got past parsing would fail otherwise (exit 3).
    monkeypatch.setenv("DOCBUS_MONGODB__URI", "mongodb://127.0.0.1:9/")
    monkeypatch.setenv("DOCBUS_MONGODB__TIMEOUT", "0.3")
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert out == ""
    line = err.strip().splitlines()[-1]  # argparse prints its usage, then the one error line
    assert "Traceback" not in err
    assert line.startswith(f"docbus {argv[0]}") and "error: " in line, line
    assert expected in line, line


# -- unknown batches ---------------------------------------------------------------------------


async def test_replay_of_an_unknown_batch_names_it_and_exits_1(
    mongo_env: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(cli.main, ["replay", "--batch", "nosuch", "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1
    assert "would send" not in captured.out
    line = one_line(captured.err)
    assert line.startswith("docbus replay: error: ")
    assert "no batch 'nosuch'" in line


async def test_audit_of_an_unknown_batch_says_the_batch_is_unknown(
    mongo_env: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    output = tmp_path / "calls.jsonl"
    argv = ["audit", "export", "--batch", "nope", "--output", str(output)]
    code = await asyncio.to_thread(cli.main, argv)
    line = one_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith("docbus audit: error: ") and "no batch 'nope'" in line, line
    assert not output.exists()
