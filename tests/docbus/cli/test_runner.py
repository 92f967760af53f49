"""The umbrella CLI's contract: a failure is one line on stderr and an exit code, never a
traceback; ``--version``; exit codes in every ``--help``; ``--json`` is one document on stdout."""

from __future__ import annotations

import asyncio
import importlib
import json
from importlib.metadata import version

import pytest

from docbus import cli
from docbus.envelope import Envelope, message_id
from docbus.local.mongo import LocalMongo
from docbus.records import DeadLetterRecord
from docbus.settings import Settings
from docbus.store import Store, StoreUnavailable

SB_KEY = "c2VjcmV0LXNiLWtleS1kby1ub3Qtc2hvdw=="

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def mongo_env(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, local_mongo: LocalMongo, store: Store
) -> Store:
    monkeypatch.setenv("DOCBUS_MONGODB__URI", local_mongo.uri)
    monkeypatch.setenv("DOCBUS_MONGODB__DATABASE", store.database.name)
    return store


@pytest.fixture
def no_mongo(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCBUS_MONGODB__URI", "mongodb://127.0.0.1:9/")
    monkeypatch.setenv("DOCBUS_MONGODB__TIMEOUT", "0.3")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


WITH_SUBCOMMANDS = {"audit", "dlq", "llm-batches", "parked", "results"}


def label(argv: list[str]) -> str:
    """What an error line calls the command: ``status``, or ``dlq show`` with its subcommand."""
    return " ".join(argv[:2]) if argv[0] in WITH_SUBCOMMANDS else argv[0]


def one_line(err: str) -> str:
    """The single line a failure prints (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# -- settings ---------------------------------------------------------------------------------


BAD_SETTINGS = {
    "a malformed connection string, where the broker is used": (
        "DOCBUS_SERVICEBUS__CONNECTION_STRING", f"sb://ns/;Key={SB_KEY}", ["dlq", "sync"],
        ["DOCBUS_SERVICEBUS__CONNECTION_STRING: malformed connection string", "Endpoint=sb://"],
    ),
    "a malformed connection string, where it is not": (
        "DOCBUS_SERVICEBUS__CONNECTION_STRING", f"Endpoint=sb://ns/;SharedAccessKey={SB_KEY}",
        ["status"], ["must have both SharedAccessKeyName and SharedAccessKey"],
    ),
    "pricing that is not JSON: the variable and the shape expected": (
        "DOCBUS_LLM__PRICING", "{gpt-4o: 1}", ["status"],
        ["DOCBUS_LLM__PRICING: not valid JSON",
         'expected e.g. {"my-deployment": {"input": 0.15, "output": 0.6}}'],
    ),
    "a MongoDB URI without its scheme: refused, not taken for a host name": (
        "DOCBUS_MONGODB__URI", "notauri", ["status"],
        ["DOCBUS_MONGODB__URI: not a MongoDB URI: it must start with mongodb:// or "
         "mongodb+srv://"],
    ),
    "pricing with bad values: the variable holding them, then where inside its JSON": (
        "DOCBUS_LLM__PRICING", '{"m": {"input": -1}}', ["config"],
        ["DOCBUS_LLM__PRICING: m.input: Input should be greater than or equal to 0; "
         "m.output: Field required"],
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value", "argv", "expected"), BAD_SETTINGS.values(), ids=list(BAD_SETTINGS)
)
def test_bad_settings_are_one_line_naming_the_variable_and_what_it_expects(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    argv: list[str],
    expected: list[str],
) -> None:
    monkeypatch.setenv(variable, value)
    code, out, err = run(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"docbus {label(argv)}: error: invalid settings: ")
    for part in expected:
        assert part in line
    assert SB_KEY not in out + err
    assert out == ""


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("DOCBUS_LLM__PRICING", "{bad", "DOCBUS_LLM__PRICING: not valid JSON"),
        ("DOCBUS_WORKER__CONCURRENCY", "0", "DOCBUS_WORKER__CONCURRENCY: Input should be greater"),
    ],
)
def test_settings_a_command_builds_itself_are_explained_by_the_runner(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    expected: str,
) -> None:
    monkeypatch.setenv(variable, value)

    def command() -> int:
        Settings()  # as commands that predate run_async do
        return 0

    assert cli.run_command("worker", command) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"docbus worker: error: invalid settings: {expected}")


def test_an_unknown_log_level_is_one_line_listing_the_levels(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCBUS_LOG_LEVEL", "verbose")
    code, out, err = run(capsys, "status")
    assert code == 2
    line = one_line(err)
    assert "DOCBUS_LOG_LEVEL" in line and "'verbose'" in line
    assert "debug, info, warning, error" in line
    assert out == ""


def test_a_log_level_in_capitals_is_accepted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCBUS_LOG_LEVEL", "WARNING")
    code, out, _ = run(capsys, "config", "--json")
    assert code == 0
    assert json.loads(out)["worker"]["concurrency"] == 16


# -- MongoDB unreachable ----------------------------------------------------------------------

UNREACHABLE = [
    ["status"],
    ["status", "--batch", "b1", "--json"],
    ["report", "--batch", "b1"],
    ["audit", "export", "--batch", "b1"],
    ["dlq", "list"],
    ["dlq", "show", "alpha@b1:d1:0", "--json"],
    ["results", "history", "d1"],
    ["results", "show", "d1", "--json"],
    ["replay", "--dry-run"],
    ["rollback", "--replay", "replay-1", "--dry-run"],
]


@pytest.mark.usefixtures("no_mongo")
@pytest.mark.parametrize("argv", UNREACHABLE)
def test_an_unreachable_mongodb_is_one_line_on_stderr_and_exit_3(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == cli.ExitCode.UNAVAILABLE
    line = one_line(err)
    assert line.startswith(f"docbus {label(argv)}: error: cannot reach MongoDB")
    assert "127.0.0.1:9" in line
    assert "DOCBUS_MONGODB__URI" in line and "docbus up" in line  # what to do
    assert "Topology Description" not in line  # pymongo's internals left out
    assert out == ""


# -- the central runner -----------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_pointing_at_debug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken() -> int:
        raise RuntimeError("the disk\nis on fire")

    assert cli.run_command("status", broken) == cli.ExitCode.ATTENTION
    line = one_line(capsys.readouterr().err)
    assert line == (
        "docbus status: error: unexpected RuntimeError: the disk is on fire "
        "(run with --log-level debug for the traceback)"
    )


def test_at_debug_an_unexpected_error_shows_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken() -> int:
        raise RuntimeError("boom")

    assert cli.run_command("status", broken, debug=True) == cli.ExitCode.ATTENTION
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith("docbus status: error: unexpected RuntimeError: boom")


def test_ctrl_c_exits_130_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert cli.run_command("worker", interrupted) == 130
    assert one_line(capsys.readouterr().err) == "docbus worker: interrupted"


def test_docbus_errors_map_to_exit_codes_and_the_command_s_own_code_passes_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def unavailable() -> int:
        raise StoreUnavailable("connect to mongodb://h:1: MongoDB unavailable: refused")

    assert cli.run_command("report", unavailable) == 3
    assert cli.run_command("publish", lambda: 1) == 1
    assert cli.run_command("publish", lambda: None) == 0  # type: ignore[arg-type, return-value]


def test_async_commands_get_settings_and_a_loop_from_run_async(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCBUS_WORKER__CONCURRENCY", "5")

    async def body(settings: Settings) -> int:
        await asyncio.sleep(0)
        return settings.worker.concurrency

    assert cli.run_async(body) == 5


def test_a_usage_error_returns_2_instead_of_raising(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--no-such-option")
    assert code == 2
    assert "unrecognized arguments: --no-such-option" in err


# -- version and help -------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"docbus {version('docbus')}"
    assert err == ""


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_s_help_lists_its_exit_codes(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    epilog = out[out.index("exit codes:") :]
    module = importlib.import_module(cli.COMMANDS[command][0])
    # A command that writes its own epilog (a string EXIT_CODES) answers for its codes itself.
    common = (0, 2) if isinstance(getattr(module, "EXIT_CODES", None), str) else (0, 2, 3, 130)
    for exit_code in common:
        assert f"\n  {exit_code} " in epilog, epilog


def test_the_exit_code_table_is_one_row_per_code() -> None:
    rows = cli.exit_code_rows()
    assert [code for code, _ in rows] == [0, 1, 2, 3, 130]
    assert all(meaning for _, meaning in rows)


# -- --json -----------------------------------------------------------------------------------


async def _dead_letters(store: Store) -> None:
    await store.record_documents([Envelope(doc_id="d1", batch_id="b1", topic="docs", content="x")])
    await store.record_dead_letter(
        DeadLetterRecord(
            message_id=message_id("b1", "d1"), subscription="alpha", topic="docs",
            handler="alpha", handler_version="2", reason="SchemaValidationFailed",
            description="InvalidOutput: missing field 'date'", error_type="InvalidOutput",
            error_message="missing field 'date'", step="extract", batch_id="b1", doc_id="d1",
        )
    )  # fmt: skip


async def test_dlq_list_and_show_print_one_json_document(
    mongo_env: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    await _dead_letters(mongo_env)
    code = await asyncio.to_thread(cli.main, ["dlq", "list", "--batch", "b1", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert listed["total"] == 1
    (row,) = listed["dead_letters"]
    assert row["id"] == "alpha@b1:d1:0" and row["reason"] == "SchemaValidationFailed"
    assert row["step"] == "extract" and row["error"] == "InvalidOutput: missing field 'date'"
    assert "body" not in row  # bodies stay out of listings

    code = await asyncio.to_thread(cli.main, ["dlq", "list", "--group-by", "reason", "--json"])
    grouped = json.loads(capsys.readouterr().out)
    assert code == 0
    assert grouped["groups"] == [
        {"reason": "SchemaValidationFailed", "count": 1, "replayed": 0, "documents": 1,
         "first": grouped["groups"][0]["first"], "last": grouped["groups"][0]["last"]}
    ]  # fmt: skip

    code = await asyncio.to_thread(cli.main, ["dlq", "show", "alpha@b1:d1:0", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert shown["dead_letter"]["id"] == "alpha@b1:d1:0"
    assert shown["document"]["doc_id"] == "d1" and shown["text"] == "x"
    assert shown["llm_calls"] == []

    code = await asyncio.to_thread(cli.main, ["dlq", "show", "alpha@nothing", "--json"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "no dead letter 'alpha@nothing'" in one_line(captured.err)


# -- pure parts -------------------------------------------------------------------------------


def test_brief_keeps_a_driver_message_to_its_useful_part() -> None:
    pymongo = (
        "h:9: [Errno 111] Connect call failed ('h', 9) (configured timeouts: socketTimeoutMS: "
        "300.0ms), Timeout: 0.3s, Topology Description: <TopologyDescription id: 1, ...>"
    )
    assert cli.brief(pymongo) == "h:9: [Errno 111] Connect call failed ('h', 9)"
    assert cli.brief("a\n  b\tc") == "a b c"
    assert cli.brief("x" * 500, limit=10) == "x" * 9 + "…"


def test_failures_map_to_exit_codes() -> None:
    from docbus.errors import ConfigurationError
    from docbus.local.stack import StackInUse
    from docbus.servicebus import MessagingEntityNotFound, MessagingUnavailable
    from docbus.store import StoreError
    from docbus.topology import TopologyError

    cases = {
        StoreUnavailable("x"): 3,
        MessagingUnavailable("x"): 3,
        StackInUse("x"): 3,
        StoreError("x"): 1,
        MessagingEntityNotFound("no subscription 'a'"): 2,
        ConfigurationError("x"): 2,
        TopologyError("x"): 2,
        ValueError("x"): 1,
    }
    assert {type(e).__name__: cli.describe_failure(e)[0] for e in cases} == {
        type(e).__name__: code for e, code in cases.items()
    }


def test_a_setting_inside_json_or_from_an_ecosystem_variable_is_named_as_set() -> None:
    from docbus.cli.config import variable_name

    env = {"DOCBUS_LLM__PRICING": "{}", "MONGODB_URI": "mongodb://x", "DOCBUS_LLM__MODEL": "m"}
    inside_json = ("DOCBUS_LLM__PRICING", "m.input")
    assert variable_name(("llm", "pricing", "m", "input"), env) == inside_json
    assert variable_name(("mongodb", "uri"), env) == ("MONGODB_URI", "")
    assert variable_name(("llm", "model"), env) == ("DOCBUS_LLM__MODEL", "")
    assert variable_name(("worker", "prefetch"), env) == ("DOCBUS_WORKER__PREFETCH", "")
    assert variable_name(("servicebus",), env) == ("DOCBUS_SERVICEBUS__*", "")
