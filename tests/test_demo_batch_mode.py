"""``docbus demo --llm-mode batch``: refused with a real LLM, its flags in --help, the live
estimate it compares with, and a whole run on the embedded stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from docbus.cli.demo import live_estimate


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "AZURE_OPENAI", "DOCBUS_"))
    }
    return env | {"COLUMNS": "120", **extra}


def _demo(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "docbus", "demo", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_batch_mode_with_a_real_llm_is_refused_in_one_line() -> None:
    result = _demo("--llm-mode", "batch", env=_env(OPENAI_API_KEY="sk-not-used"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "offline LLM server only" in result.stderr


def test_help_names_the_batch_mode_flags() -> None:
    result = _demo("--help", env=_env(), timeout=60)
    assert result.returncode == 0
    assert "--llm-mode {live,batch}" in result.stdout and "--batch-processing" in result.stdout


def test_the_live_estimate_prices_every_row_live() -> None:
    prices = {"m1": (1.0, 2.0), "m2": (10.0, 20.0)}  # USD per token, in and out

    def cost(model: str, prompt: int, completion: int) -> float:
        per_in, per_out = prices[model]
        return prompt * per_in + completion * per_out

    rows = [
        {"model": "m1", "llm_mode": "batch", "prompt_tokens": 3, "completion_tokens": 1},
        {"model": "m2", "llm_mode": "live", "prompt_tokens": 1, "completion_tokens": 1},
    ]
    assert live_estimate(rows, cost) == 5.0 + 30.0
    assert live_estimate([], cost) == 0.0


def test_a_batch_mode_demo_accounts_for_every_document_and_compares_the_cost() -> None:
    result = _demo("--llm-mode", "batch", "--batch-processing", "1", "--json", env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["accounted"] and summary["llm_mode"] == "batch"
    assert summary["published"] == 70 and summary["llm"]["calls"] > 0
    assert summary["live_estimate_usd"] > 0
    # Never dearer than live; about half once the worker's batch mode runs the calls.
    assert summary["llm"]["cost_usd"] <= summary["live_estimate_usd"] * (1 + 1e-9)
    assert sum(summary["cost_by_mode"].values()) == pytest.approx(summary["llm"]["cost_usd"])
