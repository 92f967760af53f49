"""``docbus results export``: a handler's current results, as JSONL or CSV, from a real store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from docbus import cli
from docbus.cli import results as results_cli
from docbus.store import Store

ISSUED = datetime(2026, 1, 1, tzinfo=UTC)


async def export(*argv: str, stdout: io.StringIO | None = None) -> tuple[int, str, str]:
    """``docbus results export ARGV`` as the CLI runs it: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser()
    results_cli.add_arguments(parser)
    args = parser.parse_args(["export", *argv])
    out, err = stdout or io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stderr(err):
            return cli.run_command("results", lambda: results_cli.run(args, stdout=out))

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def results(store: Store) -> None:
    """d1: published in b1, replayed (current); d2: b1, then re-run under b2 (current: b2);
    d3: only b1, whose version was rolled back; d4: b1 only; another handler on d1."""

    async def write(doc: str, batch: str, run: str, hours: int, output: dict[str, object]) -> str:
        outcome = await store.write_result(
            doc_id=doc, handler="alpha", handler_version="1", batch_id=batch,
            message_id=f"{run}:{doc}", output=output, run_id=run,
            issued_at=ISSUED + timedelta(hours=hours),
        )  # fmt: skip
        return outcome.id

    await write("d1", "b1", "b1", 0, {"score": 1})
    await write("d1", "b1", "replay-1", 1, {"score": 2, "geo": {"country": "DE"}})
    await write("d2", "b1", "b1", 0, {"score": 3})
    await write("d2", "b2", "b2", 24, {"score": 4, "tags": ["a", "b"]})
    withdrawn = await write("d3", "b1", "b1", 0, {"score": 5})
    await write("d4", "b1", "b1", 0, {"score": 6, "note": 'line\nbreak, "quoted"'})
    await store.withdraw_results([withdrawn], "rollback-1")
    await store.write_result(
        doc_id="d1", handler="beta", handler_version="1", batch_id="b1", message_id="b1:d1",
        output={"other": True},
    )  # fmt: skip


async def test_jsonl_has_each_documents_current_result_by_document_id(
    mongo_env: Store,
) -> None:
    await results(mongo_env)
    code, out, err = await export("--handler", "alpha")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["doc_id"], r["batch_id"], r["version"], r["output"]) for r in lines] == [
        ("d1", "b1", 2, {"score": 2, "geo": {"country": "DE"}}),
        ("d2", "b2", 2, {"score": 4, "tags": ["a", "b"]}),
        ("d4", "b1", 1, {"score": 6, "note": 'line\nbreak, "quoted"'}),
    ]
    assert lines[0]["run_id"] == "replay-1" and lines[0]["handler"] == "alpha"
    assert "exported 3 current result(s) as jsonl to stdout" in err
    # one batch: the documents whose current result is of that batch
    code, out, _ = await export("--handler", "alpha", "--batch", "b1")
    assert code == 0 and [json.loads(line)["doc_id"] for line in out.splitlines()] == ["d1", "d4"]


async def test_csv_flattens_the_output_under_one_header(mongo_env: Store, tmp_path: Path) -> None:
    await results(mongo_env)
    target = tmp_path / "alpha.csv"  # the format comes from the suffix
    code, out, err = await export("--handler", "alpha", "--output", str(target))
    assert (code, out) == (0, ""), err
    assert not (tmp_path / "alpha.csv.partial").exists()
    with target.open(newline="", encoding="utf-8") as stream:
        table = list(csv.DictReader(stream))
    assert list(table[0]) == ["doc_id", "batch_id", "version", "score", "geo.country", "tags",
                              "note"]  # fmt: skip
    assert [(r["doc_id"], r["score"], r["geo.country"], r["tags"], r["note"]) for r in table] == [
        ("d1", "2", "DE", "", ""),
        ("d2", "4", "", '["a", "b"]', ""),
        ("d4", "6", "", "", 'line\nbreak, "quoted"'),
    ]


async def test_nothing_to_export_is_one_line_and_no_file(mongo_env: Store, tmp_path: Path) -> None:
    await results(mongo_env)
    target = tmp_path / "none.jsonl"
    for argv in (["--handler", "nobody"], ["--handler", "alpha", "--batch", "b9"]):
        code, out, err = await export(*argv, "--output", str(target))
        assert (code, out, err.count("\n")) == (1, "", 1), err
        assert f"no current results of handler {argv[1]!r}" in err
        assert ("in batch 'b9'" in err) == ("--batch" in argv), err
        assert not target.exists() and not (tmp_path / "none.jsonl.partial").exists()


async def test_output_dash_is_stdout_not_a_file_named_dash(
    mongo_env: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await results(mongo_env)
    monkeypatch.chdir(tmp_path)
    code, out, err = await export("--handler", "alpha", "--batch", "b1", "-o", "-")
    assert code == 0, err
    assert [json.loads(line)["doc_id"] for line in out.splitlines()] == ["d1", "d4"]
    assert "exported 2 current result(s) as jsonl to stdout" in err
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_a_terminal_gets_untrusted_text_escaped(mongo_env: Store) -> None:
    hostile = "ok\x1b[2J\u202eevil"
    await mongo_env.write_result(
        doc_id="d1", handler="alpha", handler_version="1", batch_id="b1", message_id="b1:d1",
        output={"summary": hostile},
    )  # fmt: skip

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for fmt in ("csv", "jsonl"):
        screen = Terminal()
        code, _, _ = await export("--handler", "alpha", "--format", fmt, stdout=screen)
        assert code == 0
        assert "\x1b" not in screen.getvalue() and "\u202e" not in screen.getvalue(), fmt
        assert "\\u202eevil" in screen.getvalue(), screen.getvalue()


async def test_output_fields_never_overwrite_the_export_columns_or_each_other(
    mongo_env: Store,
) -> None:
    # A handler is free to return fields called doc_id or version, and a key with a dot in
    # it next to a nested object of the same path: every value keeps a column of its own.
    output = {"doc_id": "FROM-OUTPUT", "version": "out-v", "a": {"b": 1}, "a.b": 2}
    await mongo_env.write_result(
        doc_id="c-1", handler="collide", handler_version="1", batch_id="b1",
        message_id="b1:c-1", output=output,
    )  # fmt: skip
    code, out, err = await export("--handler", "collide", "--format", "csv")
    assert code == 0, err
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row == {
        "doc_id": "c-1", "batch_id": "b1", "version": "1",
        "output.doc_id": "FROM-OUTPUT", "output.version": "out-v", "a.b": "1", "a.b#2": "2",
    }  # fmt: skip
