"""``docbus config``: effective settings shown, secrets never, invalid settings explained."""

from __future__ import annotations

import argparse
import io
import json

import pytest
from rich.console import Console

from docbus.cli import config as settings_cli
from docbus.cli import main

SB_KEY = "c2VjcmV0LXNiLWtleS1kby1ub3Qtc2hvdw=="
MONGO_PASSWORD = "hunter2-mongo-pw"
OPENAI_KEY = "sk-proj-neverprintthis0123456789"
AZURE_KEY = "azure-key-neverprintthis"

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def secrets_in_env(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "DOCBUS_SERVICEBUS__CONNECTION_STRING",
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={SB_KEY}",
    )
    monkeypatch.setenv(
        "MONGODB_URI", f"mongodb://docbus:{MONGO_PASSWORD}@db.example:27017/?authSource=admin"
    )
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    monkeypatch.setenv("DOCBUS_WORKER__CONCURRENCY", "7")


def run_config(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    settings_cli.add_arguments(parser)
    out = io.StringIO()
    console = Console(file=out, width=250, color_system=None)
    code = settings_cli.run(parser.parse_args(list(argv)), console=console)
    return code, out.getvalue()


def assert_no_secret(text: str) -> None:
    for secret in (SB_KEY, MONGO_PASSWORD, OPENAI_KEY, AZURE_KEY):
        assert secret not in text


@pytest.mark.usefixtures("secrets_in_env")
def test_the_table_shows_effective_settings_and_their_variables_with_secrets_masked() -> None:
    code, text = run_config()
    assert code == 0
    assert_no_secret(text)
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if "│" in line}
    assert "SharedAccessKey=***" in rows["servicebus.connection_string"]
    assert "DOCBUS_SERVICEBUS__CONNECTION_STRING" in rows["servicebus.connection_string"]
    assert "docbus:***@db.example:27017" in rows["mongodb.uri"]
    assert "MONGODB_URI" in rows["mongodb.uri"]
    assert "***" in rows["llm.api_key"] and "OPENAI_API_KEY" in rows["llm.api_key"]
    assert "***" in rows["llm.azure_api_key"]
    assert " 7 " in rows["worker.concurrency"]
    assert "DOCBUS_WORKER__CONCURRENCY" in rows["worker.concurrency"]
    assert "default" in rows["worker.prefetch"]


@pytest.mark.usefixtures("secrets_in_env")
def test_json_output_parses_and_is_masked() -> None:
    code, text = run_config("--json")
    assert code == 0
    assert_no_secret(text)
    data = json.loads(text)
    assert data["servicebus"]["connection_string"].endswith("SharedAccessKey=***")
    assert data["llm"]["api_key"] == "***"
    assert data["mongodb"]["uri"].startswith("mongodb://docbus:***@")
    assert data["worker"]["concurrency"] == 7


def test_invalid_settings_exit_2_naming_the_variables_without_echoing_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both ways into Service Bus at once is refused; the refusal must not print the key.
    monkeypatch.setenv(
        "DOCBUS_SERVICEBUS__CONNECTION_STRING",
        f"Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey={SB_KEY}",
    )
    monkeypatch.setenv("DOCBUS_SERVICEBUS__NAMESPACE", "ns.servicebus.windows.net")
    monkeypatch.setenv("DOCBUS_WORKER__CONCURRENCY", "0")
    code = main(["config"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert_no_secret(captured.err)
    (line,) = captured.err.splitlines()
    assert line.startswith("docbus config: error: invalid settings: ")
    assert "DOCBUS_SERVICEBUS__*: set either DOCBUS_SERVICEBUS__CONNECTION_STRING" in line
    assert "DOCBUS_WORKER__CONCURRENCY: Input should be greater than or equal to 1" in line


def test_the_umbrella_cli_runs_config(
    secrets_in_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "--json"]) == 0
    captured = capsys.readouterr()
    assert_no_secret(captured.out + captured.err)
    assert json.loads(captured.out)["worker"]["concurrency"] == 7


@pytest.mark.parametrize("tokens", ["0", "-1"])
def test_a_queued_token_quota_must_be_positive(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tokens: str
) -> None:
    # 0 or less would dead-letter every batch-mode request of the model as over its quota.
    monkeypatch.setenv("DOCBUS_LLM__BATCH__QUEUED_TOKENS", f'{{"gpt-4o-mini": {tokens}}}')
    assert main(["config"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("docbus config: error: invalid settings: ")
    assert "DOCBUS_LLM__BATCH__QUEUED_TOKENS" in line and "greater than 0" in line
