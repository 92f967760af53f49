"""``docbus console`` over plain HTTP: the batches table refreshes itself while a batch is
unfinished and stops once it is complete; off loopback, reading needs the token too."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Any

import pytest

from docbus.store import Store
from tests.console.conftest import ROOT

pytestmark = pytest.mark.slow


@contextmanager
def console(store: Store, local_mongo: Any, *args: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCBUS_", "MONGODB_URI"))}
    env |= {"DOCBUS_MONGODB__URI": local_mongo.uri, "DOCBUS_MONGODB__DATABASE": store.database.name}
    process = subprocess.Popen(
        [sys.executable, "-m", "docbus", "console", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("docbus console: http://"), first
        port = first.split()[2].rstrip("/").rsplit(":", 1)[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def get(url: str, cookie: str | None = None) -> tuple[int, Message, str]:
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


async def test_the_batches_table_refreshes_until_every_batch_is_complete(
    store: Store, local_mongo: Any
) -> None:
    await store.record_batch("live-1", topic="documents", status="publishing")
    with console(store, local_mongo, "--read-only") as url:
        _, _, page = get(f"{url}/batches")
        assert 'data-refresh="3"' in page and "/static/console.js" in page
        _, headers, fragment = get(f"{url}/batches?fragment=1")
        assert headers["X-Refresh"] == "3"
        assert 'data-batch="live-1"' in fragment and "<html" not in fragment
        await store.update_batch("live-1", status="published")  # nothing left to do
        _, headers, done = get(f"{url}/batches?fragment=1")
        assert headers["X-Refresh"] == "0" and "complete" in done
        status, _, script = get(f"{url}/static/console.js")
        assert status == 200 and "X-Refresh" in script


async def test_off_loopback_every_page_needs_the_token(store: Store, local_mongo: Any) -> None:
    with console(store, local_mongo, "--host", "0.0.0.0", "--token", "secret") as url:
        status, headers, _ = get(f"{url}/batches")
        assert status == 303 and headers["location"] == "/login"
        assert get(f"{url}/dead-letters")[0] == 303
        assert get(f"{url}/login")[0] == 200
        assert get(f"{url}/batches?token=wrong")[0] == 403
        status, headers, _ = get(f"{url}/batches?token=secret")
        assert status == 303 and headers["location"] == "/batches"
        cookie = headers["set-cookie"]
        assert (
            "secret" not in cookie and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        )
        assert get(f"{url}/batches", cookie=cookie.split(";")[0])[0] == 200


async def test_every_page_answers_on_an_empty_store_and_unknown_ids_are_404(
    store: Store, local_mongo: Any
) -> None:
    with console(store, local_mongo, "--read-only") as url:
        for path in (
            "/batches",
            "/dead-letters?group_by=failure",
            "/documents",
            "/results",
            "/workers",
            "/documents?doc=nothing",
            "/dead-letters/replay?batch=none",
        ):
            status, _, page = get(f"{url}{path}")
            assert status == 200, (path, page[-500:])
        for path in ("/batches/nothing", "/documents?batch=b&doc=nothing"):
            status, _, page = get(f"{url}{path}")
            assert status == 404 and "nothing" in page, path
        status, _, page = get(f"{url}/dead-letters?since=yesterday")
        assert status == 400 and "neither an ISO 8601 time" in page
        assert get(f"{url}/dead-letters?group_by=colour")[0] == 400
