"""The offline LLM server's pure parts (no HTTP), its public surface and its command line."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import types
import urllib.request
from typing import Any

import pytest

import docbus.local.llm_server as llm_server_package
from docbus.cli.llm_server import add_arguments, config_from_args
from docbus.local.llm_server import (
    Faults,
    Latency,
    Limits,
    LLMServerConfig,
    count_tokens,
    generate_instance,
    schema_errors,
)
from docbus.local.llm_server.completions import find_schema
from docbus.local.llm_server.faults import plan_faults
from docbus.local.llm_server.instances import malform, violate
from docbus.local.llm_server.limits import format_duration
from docbus.local.llm_server.patterns import sample_pattern
from docbus.local.llm_server.text import analyse, summarise
from docbus.local.llm_server.tokens import truncate_to_tokens
from tests.local.llm_server.llm_samples import FIRE, INVOICE, STRIKE, TEXTS


def test_public_names_are_what_all_says() -> None:
    public = {
        name
        for name, value in vars(llm_server_package).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(llm_server_package.__all__)
    assert llm_server_package.__all__ == sorted(
        llm_server_package.__all__, key=lambda n: (not n.isupper(), n[0].islower(), n)
    )


def test_token_rule() -> None:
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("12345 items_x") == 2 + 1 + 1 + 1  # "123" "45" "items" "_" "x"
    assert count_tokens("") == 0
    assert truncate_to_tokens("one two, three", 3) == "one two,"
    assert truncate_to_tokens("one two", 5) == "one two"


def test_text_facts_and_summary() -> None:
    facts = analyse(FIRE)
    assert facts.countries == ("Taiwan", "Germany")
    assert {"Acme Corp", "Globex Industries", "Contoso Research"} <= set(facts.names)
    assert facts.dates == ("2024-03-05",)
    assert 4_500_000 in facts.numbers and 12 in facts.numbers
    assert facts.keywords[0] == "fire"
    summary = summarise(STRIKE, max_sentences=1)
    assert summary in STRIKE and summary.endswith(".")


def test_generator_handles_recursive_schemas() -> None:
    schema = {
        "$defs": {
            "Tree": {
                "type": "object",
                "properties": {
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}, "minItems": 1}
                },
                "required": ["children"],
            }
        },
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Tree"}},
        "required": ["root"],
    }
    # minItems 1 forever is unsatisfiable; the generator must still end.
    value = generate_instance(schema, analyse(FIRE), b"x")
    assert "root" in value

    next_node = {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}
    optional = {
        "$defs": {
            "Node": {"type": "object", "properties": {"next": next_node}, "required": ["next"]}
        },
        "$ref": "#/$defs/Node",
    }
    for seed in range(10):
        value = generate_instance(optional, analyse(FIRE), bytes([seed]))
        assert schema_errors(optional, value) == []


def test_enum_prefers_the_member_the_text_mentions() -> None:
    schema = {"enum": ["contract", "invoice", "news"]}
    for seed in range(5):
        assert generate_instance(schema, analyse(INVOICE), bytes([seed])) == "invoice"


@pytest.mark.parametrize(
    "pattern",
    [
        r"^[A-Z]{3}-\d{2,4}$",
        r"^(red|green|blue)$",
        r"^\w+@\w+\.com$",
        r"^[^\s]{4}$",
        r"^\d+(\.\d{1,2})?$",
        r"^v\d+\.\d+\.\d+$",
    ],
)
def test_pattern_sampling(pattern: str) -> None:
    import re

    for seed in range(5):
        sample = sample_pattern(pattern, random.Random(seed))
        assert sample is not None and re.search(pattern, sample)


def test_pattern_sampling_reads_patterns_without_private_stdlib_modules() -> None:
    import ast
    from pathlib import Path

    import docbus.local.llm_server.patterns as patterns

    tree = ast.parse(Path(patterns.__file__).read_text(encoding="utf-8"))
    texts = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    imported = {alias.name for node in imports for alias in node.names}
    assert not ({"re._parser", "sre_parse", "sre_compile"} & (texts | imported))
    for unsupported in (r"^(a)\1$", r"^(?=x)a$", r"^\p{L}+$", "("):
        assert sample_pattern(unsupported, random.Random(0)) is None


def test_schema_errors_resolve_refs_in_the_root_and_allow_float_multiples() -> None:
    root = {
        "$defs": {"Price": {"type": "number", "multipleOf": 0.1, "minimum": 0}},
        "type": "object",
        "properties": {"price": {"$ref": "#/$defs/Price"}, "on": {"format": "date"}},
        "required": ["price"],
    }
    price = root["properties"]["price"]  # type: ignore[index]
    assert schema_errors(price, 0.3, root) == []
    assert schema_errors(price, -1, root) != []
    assert schema_errors(root, {"price": 0.7, "on": "2024-02-29"}) == []
    assert schema_errors(root, {"price": 0.7, "on": "not a date"}) != []
    assert schema_errors(root, {}) != []


def test_violations_and_malformed_json_are_really_broken() -> None:
    schemas: list[dict[str, Any]] = [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"type": "object", "properties": {"a": {"type": "integer"}}},
        {"type": "object", "properties": {}, "additionalProperties": False},
        {"type": "array", "items": {"type": "string"}},
    ]
    for schema in schemas:
        for seed in range(5):
            value = generate_instance(schema, analyse(STRIKE), bytes([seed]))
            assert schema_errors(schema, value) == []
            broken = violate(schema, value, random.Random(seed))
            assert schema_errors(schema, broken)
            text = json.dumps(value)
            with pytest.raises(ValueError):
                json.loads(malform(text, random.Random(seed)))


def test_find_schema_picks_the_schema_out_of_a_prompt() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    prompt = f'Example: {{"name": "x"}}. Schema: {json.dumps(schema)}. Thanks {{'
    assert find_schema(prompt) == schema
    assert find_schema("no schema {here}") is None


def test_fault_plans_follow_the_rates() -> None:
    faults = Faults(rate_429=0.25, rate_500=0.25, rate_malformed=0.5)
    plans = [plan_faults(faults, Latency.fixed(0.1), random.Random(i)) for i in range(400)]
    statuses = [p.status for p in plans]
    assert 70 < statuses.count("429") < 130 and 70 < statuses.count("500") < 130
    assert statuses.count("503") == 0 and statuses.count("timeout") == 0
    assert 150 < sum(p.content == "malformed" for p in plans) < 250
    assert all(p.latency == 0.1 for p in plans)
    forced = plan_faults(Faults(), Latency(), random.Random(0), "schema")
    assert forced.content == "schema" and forced.status is None


def test_lognormal_latency_has_the_configured_median_and_p95() -> None:
    latency = Latency.lognormal(0.2, 0.5)
    rng = random.Random(1)
    draws = sorted(latency.sample(rng) for _ in range(4000))
    assert draws[2000] == pytest.approx(0.2, rel=0.1)
    assert draws[3800] == pytest.approx(0.5, rel=0.15)


def test_config_updates_are_checked_and_merged() -> None:
    config = LLMServerConfig(api_key="sk-secret-key-1234")
    updated = config.updated({"faults": {"rate_429": 0.5}, "latency": 0.2, "seed": 3})
    assert updated.faults == Faults(rate_429=0.5)
    assert updated.latency == Latency.fixed(0.2)
    assert updated.seed == 3 and updated.api_key == config.api_key
    assert config.to_dict()["api_key"] == "sk-***1234"
    for bad in (
        {"seed": "x"},
        {"limits": {"tpm": -1}},
        {"nope": 1},
        {"faults": 3},
        {"faults": {"timeout_mode": "explode"}},
        {"strict_model": 1},
    ):
        with pytest.raises(ValueError):
            config.updated(bad)


def test_format_duration_matches_openai_style() -> None:
    assert format_duration(0.0061) == "7ms"
    assert format_duration(6.5) == "6.5s"
    assert format_duration(60) == "1m0s"
    assert format_duration(90.25) == "1m30.25s"


def test_cli_flags_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--port",
            "0",
            "--latency-lognormal",
            "0.2",
            "0.6",
            "--rate-429",
            "0.05",
            "--retry-after",
            "2",
            "--rate-500",
            "0.01",
            "--rate-timeout",
            "0.01",
            "--timeout-mode",
            "late",
            "--rate-malformed",
            "0.02",
            "--rate-schema",
            "0.03",
            "--tpm",
            "90000",
            "--rpm",
            "500",
            "--api-key",
            "sk-x",
            "--seed",
            "5",
        ]
    )
    config = config_from_args(args)
    assert config.port == 0 and config.seed == 5 and config.api_key == "sk-x"
    assert config.latency == Latency.lognormal(0.2, 0.6)
    assert config.faults == Faults(
        rate_429=0.05,
        retry_after=2.0,
        rate_500=0.01,
        rate_timeout=0.01,
        timeout_mode="late",
        rate_malformed=0.02,
        rate_schema=0.03,
    )
    assert config.limits == Limits(tpm=90000, rpm=500)
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate-429", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--latency", "0.1", "--latency-uniform", "0.1", "0.2"])


def test_all_sample_texts_answer_every_model_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"country": {"type": "string"}, "region": {"type": "string"}},
    }
    from docbus.local.llm_server.text import COUNTRIES

    for text in TEXTS:
        for seed in range(5):
            value = generate_instance(schema, analyse(text), bytes([seed]))
            assert COUNTRIES[value["country"]] == value["region"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM semantics")
def test_command_line_serves_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "docbus", "llm-server", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "docbus-offline" in line
        base_url = line.split(" at ")[-1].strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            assert json.loads(response.read())["data"][0]["id"] == "docbus-offline"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
