"""Bad input on the command line: one line naming what is wrong and what to do, a non-zero exit,
no traceback, nothing connected to or lost — through the real ``docbus`` entry point."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from docbus import cli
from docbus.envelope import message_id
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
    # before these were checked, `demo --concurrency 0` started the whole stack and then failed
    # with an "unexpected ValueError", and a port out of range was an OverflowError from bind()
    "demo --concurrency 0": (["demo", "--concurrency", "0"], "argument --concurrency: must be 1"),
    "demo --llm-latency nan": (["demo", "--llm-latency", "nan"], "must be a finite number"),
    "demo --console-port 65536": (
        ["demo", "--console-port", "65536"], "must be a port from 0 to 65535"
    ),
    "up --mongo-port -1": (["up", "--mongo-port", "-1"], "argument --mongo-port: must be a port"),
    "emulator --port 70000": (["emulator", "--port", "70000"], "argument --port: must be a port"),
    "llm-server --port x": (["llm-server", "--port", "x"], "argument --port: not a whole number"),
    "console --port 99999": (["console", "--port", "99999"], "argument --port: must be a port"),
    "results show --version 0": (
        ["results", "show", "d", "--version", "0"], "argument --version: must be 1 or more"
    ),
    # an empty id matched nothing: "no current results of handler 'h'", exit 1, as if the
    # batch named were unknown rather than not named at all
    "results export --batch ''": (
        ["results", "export", "--handler", "h", "--batch", ""], "argument --batch: must not be"
    ),
    "results export --handler ''": (
        ["results", "export", "--handler", " "], "argument --handler: must not be empty"
    ),
    "results history --batch ''": (
        ["results", "history", "d", "--batch", ""], "argument --batch: must not be empty"
    ),
    "results history --handler ''": (
        ["results", "history", "d", "--handler", ""], "argument --handler: must not be empty"
    ),
    "results history ''": (["results", "history", ""], "argument DOC: must not be empty"),
    "audit export --batch ''": (
        ["audit", "export", "--batch", ""], "argument --batch: must not be empty"
    ),
    "audit export --step ''": (
        ["audit", "export", "--batch", "b", "--step", ""], "argument --step: must not be empty"
    ),
    "results show --handler ''": (
        ["results", "show", "d", "--handler", ""], "argument --handler: must not be empty"
    ),
    "rollback --batch ''": (["rollback", "--batch", "", "--yes"], "argument --batch: must not"),
    "rollback --replay ''": (["rollback", "--replay", "", "--yes"], "argument --replay: must"),
    "rollback --undo ''": (["rollback", "--undo", "", "--yes"], "argument --undo: must not be"),
    "rollback --handler ''": (
        ["rollback", "--batch", "b", "--handler", "", "--yes"], "argument --handler: must not"
    ),
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
    line = one_line(err)  # not argparse's usage first
    command = " ".join(argv[:2]) if argv[0] in ("dlq", "parked", "results", "audit") else argv[0]
    assert line.startswith(f"docbus {command}: error: "), line
    assert line.endswith(f"(see `docbus {command} --help`)"), line
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
    assert line.startswith("docbus audit export: error: ") and "no batch 'nope'" in line, line
    assert not output.exists()


# -- publish: paths, empty inputs, --json refusals, id fields ---------------------------------

TOPOLOGY = str(Path(__file__).resolve().parents[3] / "infra" / "topology.toml")


def publish(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    return run(capsys, "publish", *argv, "--topic", "documents", "--topology", TOPOLOGY)


@pytest.mark.parametrize("where", ["missing.jsonl", "empty-directory", "*.zzz"])
def test_a_path_that_names_no_file_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    (tmp_path / "empty-directory").mkdir()
    code, out, err = publish(capsys, str(tmp_path / where))
    assert code == 2
    assert out == ""  # no invalid-input table
    line = one_line(err)
    assert line.startswith(f"docbus publish: error: {tmp_path / where}: ")
    assert "check the path" in line and "--skip-invalid" not in line


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank lines"])
def test_an_input_without_documents_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
) -> None:
    source = tmp_path / "news.jsonl"
    source.write_text(content, encoding="utf-8")
    code, _, err = publish(capsys, str(source))
    assert code == 1
    assert one_line(err).startswith(f"docbus publish: error: no documents in {source}: ")


@pytest.mark.parametrize("valid", [1, 0], ids=["some valid", "none valid"])
def test_a_refused_publish_is_its_problem_table_and_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, valid: int
) -> None:
    source = tmp_path / "broken.jsonl"
    lines = ['{"id": "a", "text": "fine"}'] * valid + ['{"id": "b", "text": "a\tb"}']
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = publish(capsys, str(source))
    assert code == 1
    table = out.splitlines()
    assert table[0] == "Invalid input: 1" and table[-1].startswith("└"), out  # no blank line
    line = one_line(err)
    if valid:
        assert line.endswith("Fix them, or pass --skip-invalid to send the other 1 document(s).")
    else:  # --skip-invalid would send nothing: not offered
        assert "--skip-invalid" not in line and "no valid documents to send" in line, line


def test_publish_json_prints_its_refusal_on_stdout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "news.jsonl"
    source.write_text('{"text": "fine"}\n{"body": "no text"}\n', encoding="utf-8")
    code, out, err = publish(capsys, str(source), "--json")
    assert code == 1
    refusal = json.loads(out)
    assert refusal["ok"] is False and refusal["sent"] == 0 and refusal["exit_code"] == 1
    assert "1 invalid input(s): nothing was sent" in refusal["refused"]
    assert refusal["problems"] == [
        {"file": str(source), "line": 2, "last_line": None, "reason": "missing text field 'text'"}
    ]
    assert err.startswith("docbus publish: error: 1 invalid input(s)")

    code, out, _ = run(capsys, "publish", str(source), "--topic", "nosuch", "--topology",
                       TOPOLOGY, "--json")  # fmt: skip
    refusal = json.loads(out)
    assert code == 1 and refusal["exit_code"] == 1
    assert refusal["refused"].startswith("cannot publish to topic 'nosuch'")


def test_a_file_read_as_plain_text_says_so_with_id_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "records"
    source.write_text('{"id": "a", "text": "fine"}\n', encoding="utf-8")
    code, out, _ = publish(capsys, str(source), "--id-field", "id", "--json")
    assert code == 1
    (problem,) = json.loads(out)["problems"]
    assert problem["reason"].startswith("read as plain text because its name has no extension")


# -- error lines name the command and subcommand; every --help is truthful --------------------


async def test_dlq_errors_name_the_subcommand_on_stderr(
    mongo_env: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(cli.main, ["dlq", "show", "nosuch"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert one_line(captured.err).startswith("docbus dlq show: error: no dead letter 'nosuch'")
    code = await asyncio.to_thread(cli.main, ["dlq", "sync", "--subscription", "alpha"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert one_line(captured.err).startswith("docbus dlq sync: error: --subscription needs --topic")


@pytest.mark.parametrize(
    "argv", [["dlq", "list"], ["dlq", "show"], ["results", "show"], ["parked", "list"],
             ["audit", "export"], ["llm-batches", "list"]],
)  # fmt: skip
def test_a_subcommand_s_help_lists_exit_codes_and_log_level(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    assert "--log-level" in out
    epilog = out[out.index("exit codes:") :]
    for exit_code in (0, 1, 2, 3, 130):
        assert f"\n  {exit_code} " in epilog, epilog


def test_top_help_lists_code_4_and_publish_help_lists_130(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "--help")
    assert "\n  4 " in out[out.index("exit codes:") :]
    _, out, _ = run(capsys, "publish", "--help")
    assert "\n  130 interrupted" in out[out.index("exit codes:") :]


def test_top_help_says_results_also_exports(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "--help")
    (line,) = [line for line in out.splitlines() if line.strip().startswith("results ")]
    assert (
        line.split(None, 1)[1] == "a document's result versions; export a handler's current results"
    )


async def test_results_show_without_handler_for_several_is_a_usage_error(
    mongo_env: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for handler in ("alpha", "beta"):
        await mongo_env.write_result(
            doc_id="t-1", handler=handler, handler_version="1", batch_id="b1",
            message_id=message_id("b1", "t-1"), output={"v": handler},
        )  # fmt: skip
    code = await asyncio.to_thread(cli.main, ["results", "show", "t-1"])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith("docbus results show: error: document 't-1' has results of 2")
    assert "--handler" in line
    assert await asyncio.to_thread(cli.main, ["results", "show", "t-1", "--handler", "beta"]) == 0


# -- handler modules: the user's path and the error, not Python's internals --------------------

HANDLER_FILES = {
    "a syntax error": ("def broken(:\n    pass\n", "failed: SyntaxError at {path}:1: "),
    "no handlers": ("x = 1\n", "no @handler functions in {path}: decorate"),
    "a module that raises": ('raise RuntimeError("boom")\n', "failed: RuntimeError: boom"),
}  # fmt: skip


@pytest.mark.parametrize(("source", "expected"), HANDLER_FILES.values(), ids=list(HANDLER_FILES))
def test_a_bad_handler_file_is_one_line_naming_its_path(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    source: str, expected: str,
) -> None:  # fmt: skip
    monkeypatch.setenv("DOCBUS_MONGODB__URI", "mongodb://127.0.0.1:9/")
    path = tmp_path / "my_handlers.py"
    path.write_text(source, encoding="utf-8")
    code, _, err = run(capsys, "worker", "--handlers", str(path), "--until-idle", "1")
    line = one_line(err)
    assert code == 2
    assert line.startswith("docbus worker: error: ") and expected.format(path=path) in line, line
    assert "docbus_handlers_" not in line and "('" not in line
    assert "give a module on the import path" not in line  # the file was found


async def test_an_unreachable_broker_says_what_to_do_once() -> None:
    from docbus.servicebus import MessagingUnavailable, probe_endpoint
    from docbus.settings import ServiceBusSettings

    key = "c2VjcmV0LXNiLWtleS1kby1ub3Qtc2hvdw=="
    settings = ServiceBusSettings(
        connection_string=f"Endpoint=sb://127.0.0.1:9;SharedAccessKeyName=k;SharedAccessKey={key};"
        "UseDevelopmentEmulator=true"
    )
    with pytest.raises(MessagingUnavailable) as caught:
        await probe_endpoint(settings, within=2)
    code, message = cli.describe_failure(caught.value)
    assert code == cli.ExitCode.UNAVAILABLE
    assert message.count("docbus up") == 1, message
    assert "127.0.0.1:9" in message


def test_money_in_json_is_rounded_and_nothing_else_is() -> None:
    import io

    from rich.console import Console

    out = io.StringIO()
    data = {
        "cost_usd": 0.005686649999999999,
        "cost": {"usd": 0.1 + 0.2, "calls": 3, "tokens": 10},
        "budget_usd": 1.0,
        "latency_s": 0.1 + 0.2,
        "documents": [{"doc_id": "d1", "cost_usd": 0.1 + 0.7}],
    }
    cli.print_json(Console(file=out, width=40), data)
    printed = json.loads(out.getvalue())
    assert printed["cost_usd"] == 0.00568665
    assert printed["cost"] == {"usd": 0.3, "calls": 3, "tokens": 10}
    assert printed["documents"][0]["cost_usd"] == 0.8
    assert printed["latency_s"] == 0.1 + 0.2  # not money: as it was


@pytest.fixture
def port_in_use() -> Iterator[int]:
    """A port something listens on for the length of the test."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_up_refused_for_a_port_in_use_leaves_no_data_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, port_in_use: int
) -> None:
    port, data = port_in_use, tmp_path / "state"
    code, _, err = run(capsys, "up", "--data-dir", str(data), "--servicebus-port", str(port))
    assert code == cli.ExitCode.UNAVAILABLE
    assert one_line(err).startswith(f"docbus up: error: port {port} (Service Bus emulator) is")
    assert not data.exists()


@pytest.mark.parametrize("command", ["emulator", "llm-server"])
def test_a_stand_in_on_a_port_in_use_is_one_error_line_and_exit_3(
    capsys: pytest.CaptureFixture[str], command: str, port_in_use: int
) -> None:
    port = port_in_use
    code, _, err = run(capsys, command, "--port", str(port))
    assert code == cli.ExitCode.UNAVAILABLE
    assert one_line(err).startswith(f"docbus {command}: error: cannot listen on 127.0.0.1:{port}")
