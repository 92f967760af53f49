"""``docbus llm-server --batch-processing / --batch-expire-share``: the flags reach the Batch
API's knobs, seen through the real ``openai`` SDK."""

from __future__ import annotations

import argparse
import json

import openai
import pytest

from docbus.cli.llm_server import add_arguments, config_from_args
from docbus.local.llm_server import LLMServer
from docbus.local.llm_server.batch_config import BatchConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--port", "0", *argv])


def test_the_flags_set_the_batch_knobs_and_bad_values_are_refused() -> None:
    assert config_from_args(parse()).batch == BatchConfig()
    config = config_from_args(parse("--batch-processing", "4", "--batch-expire-share", "0.1"))
    assert config.batch == BatchConfig(in_progress_seconds=4.0, expire_share=0.1)
    for bad in (["--batch-processing", "-1"], ["--batch-expire-share", "1.5"]):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


async def create(server: LLMServer, count: int) -> str:
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "docbus-offline",
                    "messages": [{"role": "user", "content": f"Acme event {i}"}],
                },
            }
        )
        + "\n"
        for i in range(count)
    )
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as sdk:
        uploaded = await sdk.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
        batch = await sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        return str((await sdk.batches.retrieve(batch.id)).status)


async def test_processing_time_keeps_a_batch_in_progress_and_an_expire_share_expires_it() -> None:
    slow = config_from_args(parse("--batch-processing", "3600"))
    with LLMServer(slow).in_thread() as server:
        assert await create(server, 2) == "in_progress"
    expiring = config_from_args(parse("--batch-expire-share", "0.5"))
    with LLMServer(expiring).in_thread() as server:
        assert await create(server, 4) == "expired"
        assert server.batch_api.stats()["created"] == 1
