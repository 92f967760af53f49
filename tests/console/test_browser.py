"""The console in a real browser (Debian's Chromium), against a console on the local stack
after a demo-sized run: what each page shows, the replay and rollback actions, and that
neither a missing token nor a hostile document gets anything done."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any
from urllib.parse import urlencode

import pytest
from azure.servicebus import ServiceBusClient

from docbus.ops.status import collect_status
from docbus.records import DeadLetterRecord, ReplayRecord, ResultRecord
from docbus.store import DeadLetterFilter, Store
from tests.console.conftest import (
    BATCH,
    HANDLERS,
    LONG_DOCS,
    REPLAYED_DOC,
    ROOT,
    SCRIPT_DOC,
    Console,
    DemoRun,
    run_async,
    screenshot,
)

pytestmark = pytest.mark.slow  # one worker runs them all under -n: tests/conftest.py


def _query(run: DemoRun, fn: Any) -> Any:
    async def body() -> Any:
        async with Store.from_settings(run.settings) as store:
            return await fn(store)

    return run_async(body())


def _dead_letters(run: DemoRun, **filters: Any) -> list[DeadLetterRecord]:
    return _query(run, lambda store: store.dead_letters(DeadLetterFilter(**filters)))


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text())


def test_batches_page_shows_the_batch_with_its_counts(page: Any, demo_run: DemoRun) -> None:
    page.goto(page.url.split("?")[0])
    batch = page.locator(f"section[data-batch='{BATCH}']")
    assert batch.locator(".published").inner_text() == str(len(demo_run.published))
    [status] = _query(demo_run, lambda store: collect_status(store, [BATCH]))
    finished = len(demo_run.published) - len(LONG_DOCS)
    for handler in HANDLERS:
        row = batch.locator(f"tr[data-handler='{handler}']")
        assert row.locator("td[data-part='done']").inner_text() == str(finished)
        assert row.locator("td[data-part='dead-lettered']").inner_text() == str(len(LONG_DOCS))
        assert row.locator("td[data-part='pending']").inner_text() == "0"
        assert status.counts.handlers[handler].done == finished
    overall = batch.locator("tr.overall")
    assert overall.locator("td[data-part='done']").inner_text() == str(status.counts.done)
    assert overall.locator("td[data-part='dead-lettered']").inner_text() == str(len(LONG_DOCS))
    assert "complete" in batch.locator(".state").inner_text()
    screenshot(page, "batches", readme="console-batches.png")


def test_batch_page_shows_failures_cost_and_latency(page: Any, console: Console) -> None:
    page.goto(f"{console.url}/batches/{BATCH}")
    body = _text(page, "main")
    assert "ContextLengthExceeded" in body
    assert "re-asks" in body and "retries" in body
    assert page.locator("svg.chart polyline").count() == 1
    assert page.locator("text=summarise").count() >= 1  # a step of the notes handler
    assert page.locator(".llm-mode").inner_text() == "default"
    live = page.locator("tr[data-mode='live'] td")
    assert (
        live.nth(1).inner_text()
        == page.locator("tr", has_text="total").first.locator("td").nth(1).inner_text()
    )  # every call of the demo run was made live
    assert page.locator("tr[data-mode='batch'] td").nth(1).inner_text() == "0"
    screenshot(page, "batch")


def test_dead_letters_page_groups_them_by_reason_and_failure_type(
    page: Any, console: Console
) -> None:
    expected = len(LONG_DOCS) * len(HANDLERS)
    page.goto(f"{console.url}/dead-letters?batch={BATCH}&group_by=failure")
    group = page.locator("#groups tr[data-group='context too long']")
    assert group.locator(".count").inner_text() == str(expected)
    assert page.locator("#groups tbody tr").count() == 1
    screenshot(page, "dead-letters")
    page.goto(f"{console.url}/dead-letters?batch={BATCH}&group_by=reason")
    group = page.locator("#groups tr[data-group='ContextLengthExceeded']")
    assert group.locator(".count").inner_text() == str(expected)


def _dry_run(run: DemoRun, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "docbus", "replay", *args, "--dry-run", "--json"],
        capture_output=True, text=True, env=run.env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _peek(run: DemoRun, subscription: str) -> set[str]:
    with ServiceBusClient.from_connection_string(run.connection_string) as client:
        with client.get_subscription_receiver("documents", subscription) as receiver:
            return {str(m.message_id) for m in receiver.peek_messages(max_message_count=100)}


def test_replay_preview_lists_the_dry_run_and_confirm_sends_it(
    page: Any, console: Console, demo_run: DemoRun
) -> None:
    selection = {"batch": BATCH, "reason": "ContextLengthExceeded", "handler": "entities"}
    dry = _dry_run(demo_run, *(f"--{k}={v}" for k, v in selection.items()))
    planned = [(m["key"], m["message_id"]) for m in dry["messages"]]
    assert len(planned) == len(LONG_DOCS)

    page.goto(f"{console.url}/dead-letters?{urlencode(selection)}")
    page.click("#groups tr[data-group='ContextLengthExceeded'] a.preview")
    rows = page.locator("#plan tbody tr")
    shown = [
        (rows.nth(i).get_attribute("data-key"), rows.nth(i).get_attribute("data-message-id"))
        for i in range(rows.count())
    ]
    assert shown == planned
    screenshot(page, "replay-preview")

    page.click("#confirm button")
    replay_id = page.locator("#replay-id").inner_text()
    screenshot(page, "replay-done")
    record: ReplayRecord = _query(demo_run, lambda store: store.get_replay(replay_id))
    assert record.status == "done" and record.count == len(planned)
    sent = {item.message_id for item in record.items}
    assert {item.dead_letter for item in record.items} == {key for key, _ in planned}
    assert sent <= _peek(demo_run, "entities")  # on the broker, addressed to entities alone
    assert not sent & _peek(demo_run, "notes")
    replayed = _dead_letters(demo_run, batch_id=BATCH, handler="entities", replayed=True)
    assert {r.id for r in replayed} == {key for key, _ in planned}


def test_an_action_without_the_token_is_refused(
    anonymous: Any, page: Any, console: Console, demo_run: DemoRun
) -> None:
    selection = {"batch": BATCH, "reason": "ContextLengthExceeded", "handler": "supplier_risk"}
    anonymous.goto(f"{console.url}/dead-letters/replay?{urlencode(selection)}")
    assert anonymous.locator("#plan tbody tr").count() == len(LONG_DOCS)
    assert anonymous.locator("#confirm").count() == 0  # no form to send without logging in
    refused = anonymous.request.post(f"{console.url}/dead-letters/replay", form=selection)
    assert refused.status == 403
    # Logged in, but a form that did not come from the console (no CSRF token): refused too.
    forged = page.request.post(f"{console.url}/dead-letters/replay", form=selection)
    assert forged.status == 403
    assert "CSRF" in forged.text()
    wrong = anonymous.goto(f"{console.url}/batches?token=not-the-token")
    assert wrong is not None and wrong.status == 403
    assert not _dead_letters(demo_run, batch_id=BATCH, handler="supplier_risk", replayed=True)


def test_document_page_shows_its_llm_calls(page: Any, console: Console, demo_run: DemoRun) -> None:
    doc = demo_run.published[1]
    calls = _query(demo_run, lambda store: store.llm_calls(BATCH, doc_id=doc))
    page.goto(f"{console.url}/documents?batch={BATCH}&doc={doc}")
    screenshot(page, "document", readme="console-document.png")
    assert page.locator("details.call").count() == len(calls) > 0
    first = page.locator("section[data-handler='supplier_risk'] details.call").first
    first.locator("summary").click()
    assert "Prompt" in first.inner_text() and "Answer" in first.inner_text()
    mine = [call for call in calls if call.handler == "supplier_risk"]
    prompt = str(mine[0].messages[-1]["content"])
    assert prompt.strip().splitlines()[0] in first.inner_text()
    assert calls[0].model in _text(page, "main")


def test_diff_of_two_versions_shows_the_change(page: Any, console: Console) -> None:
    page.goto(f"{console.url}/documents?batch={BATCH}&doc={REPLAYED_DOC}")
    section = page.locator("section[data-handler='notes']")
    assert section.locator("tr[data-version]").count() == 2
    section.locator("input[name='a'][value='1']").check()
    section.locator("input[name='b'][value='2']").check()
    section.locator("form.versions button").click()
    diff = page.locator("#diff")
    row = diff.locator("tr.change-changed", has_text="generation")
    assert row.locator("pre.before").inner_text() == "0"
    assert row.locator("pre.after").inner_text() == "1"
    assert diff.locator("tr").count() == 2  # the header and that one field: nothing else moved
    screenshot(page, "diff")


def test_roll_back_a_version_and_restore_it(page: Any, console: Console, demo_run: DemoRun) -> None:
    def versions() -> dict[int, ResultRecord]:
        found = _query(demo_run, lambda s: s.result_versions(doc_id=REPLAYED_DOC, handler="notes"))
        return {v.version: v for v in found}

    page.goto(f"{console.url}/documents?batch={BATCH}&doc={REPLAYED_DOC}")
    page.locator("section[data-handler='notes'] tr[data-version='2'] a.rollback").click()
    assert "current after" in _text(page, "#changes")
    page.click("#confirm button")
    assert "Rolled back: 1 version" in _text(page, "h1")
    now = versions()
    assert now[2].rolled_back and now[1].current
    page.click("#outcome a")  # undo it
    page.click("#confirm button")
    assert "Restored: 1 version" in _text(page, "h1")
    now = versions()
    assert now[2].current and not now[2].rolled_back


def test_a_script_in_a_document_renders_as_text_and_runs_nothing(
    page: Any, console: Console
) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(f"{console.url}/documents?{urlencode({'doc': SCRIPT_DOC})}")  # found by its id
    assert _text(page, "h1") == f"Document {SCRIPT_DOC}"
    for details in page.locator("details").all():
        details.locator("summary").first.click()  # open every prompt and answer too
    assert "<script>window.__pwned = 1;" in _text(page, "#doc-text")
    assert '<img src="x" onerror=' in _text(page, "#doc-text")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert dialogs == []
    assert page.locator("main script, main img, main b").count() == 0  # no markup got in
    assert page.evaluate("document.scripts.length") == 1  # the console's own script only
    screenshot(page, "script-document")


def test_results_page_aggregates_and_exports(
    page: Any, console: Console, demo_run: DemoRun
) -> None:
    page.goto(f"{console.url}/results?handler=supplier_risk&batch={BATCH}&by=region")
    rows = page.locator("#aggregate tbody tr")
    counts = [int(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(rows.count())]
    assert sum(counts) == len(demo_run.published) - len(LONG_DOCS)
    assert page.locator("svg.chart rect.barfill").count() == rows.count()
    screenshot(page, "results")
    csv = page.request.get(f"{console.url}/results/export.csv?handler=supplier_risk&batch={BATCH}")
    lines = csv.text().strip().splitlines()
    assert lines[0].startswith("doc_id,batch_id,version") and "region" in lines[0]
    assert len(lines) == 1 + sum(counts)
    jsonl = page.request.get(f"{console.url}/results/export.jsonl?handler=notes&batch={BATCH}")
    assert len(jsonl.text().strip().splitlines()) == sum(counts)


def test_workers_page_shows_the_workers_from_their_heartbeats(page: Any, console: Console) -> None:
    page.goto(f"{console.url}/workers")
    rows = page.locator("#workers tbody tr")
    assert rows.count() == 2  # the fixture's two worker runs, both ended
    for index in range(rows.count()):
        row = rows.nth(index)
        assert row.get_attribute("data-status") == "stopped"
        assert "entities, supplier_risk, notes" in row.inner_text()
    screenshot(page, "workers")


LLM_BATCH = "console-llm-batch"


def _batch_mode_batch(run: DemoRun) -> tuple[list[str], str]:
    """A batch published in batch mode: 3 requests, 2 in an open provider batch on the offline
    server, 1 pending; one document parked waiting for the round. Its keys, provider id."""
    import openai

    from docbus.envelope import Envelope
    from docbus.store import ParkedMessage
    from tests.docbus.ops.test_llm_batches import register, submit

    run.llm.configure(batch={"in_progress_seconds": 3600})  # stays open until cancelled

    async def body(store: Store) -> tuple[list[str], str]:
        await store.record_batch(LLM_BATCH, topic="documents", llm_mode="batch")
        await store.record_documents(
            Envelope(doc_id=f"d{i}", batch_id=LLM_BATCH, topic="documents", content=f"text {i}")
            for i in range(3)
        )
        await store.update_batch(LLM_BATCH, status="published", counts={"documents": 3})
        keys = await register(store, LLM_BATCH, 3)
        async with openai.AsyncOpenAI(base_url=run.llm.base_url, api_key="offline") as sdk:
            record_id = await submit(store, sdk, keys[:2])
        await store.park(
            ParkedMessage(
                topic="documents", subscription="entities", sequence_number=99,
                reason="AwaitingBatch", batch_id=LLM_BATCH, doc_id="d2", handler="entities",
                deferred=True,
            )
        )  # fmt: skip
        record = await store.get_provider_batch(record_id)
        assert record is not None and record.provider_batch_id is not None
        return keys, record.provider_batch_id

    result: tuple[list[str], str] = _query(run, body)
    return result


def _provider_status(run: DemoRun, provider_id: str) -> str:
    import openai

    async def body() -> str:
        async with openai.AsyncOpenAI(base_url=run.llm.base_url, api_key="offline") as sdk:
            return str((await sdk.batches.retrieve(provider_id)).status)

    return run_async(body())


def test_batches_show_the_llm_mode_and_cancel_and_resume_a_batch_mode_batch(
    page: Any, anonymous: Any, console: Console, demo_run: DemoRun
) -> None:
    keys, provider_id = _batch_mode_batch(demo_run)
    page.goto(f"{console.url}/batches")
    demo = page.locator(f"section[data-batch='{BATCH}']")
    assert demo.locator(".llm-mode").inner_text() == "default"
    assert demo.locator(".llm-batch").count() == 0  # no batch-mode requests: no such line
    batch = page.locator(f"section[data-batch='{LLM_BATCH}']")
    assert batch.locator(".llm-mode").inner_text() == "batch"
    assert batch.locator("[data-requests='pending']").inner_text() == "1"
    assert batch.locator("[data-requests='submitted']").inner_text() == "2"
    assert batch.locator(".open-provider-batches").inner_text() == "1"
    screenshot(page, "batches-llm-mode")

    # Without the token there is no button, and a POST is refused; a forged one too.
    anonymous.goto(f"{console.url}/batches")
    assert anonymous.locator("form.llm-action").count() == 0
    form = {"batch": LLM_BATCH}
    assert anonymous.request.post(f"{console.url}/llm-batches/cancel", form=form).status == 403
    forged = page.request.post(f"{console.url}/llm-batches/cancel", form=form)
    assert forged.status == 403 and "CSRF" in forged.text()
    assert _provider_status(demo_run, provider_id) == "in_progress"

    batch.locator("form.llm-action button").click()
    outcome = page.locator("#outcome").inner_text()
    assert "1 pending LLM request(s) held" in outcome, outcome
    assert "1 provider batch(es) cancelled" in outcome and provider_id in outcome
    screenshot(page, "llm-batch-cancelled")
    assert _provider_status(demo_run, provider_id) in ("cancelling", "cancelled")
    records = _query(demo_run, lambda store: store.llm_requests(keys))
    assert records[keys[2]].state == "held"
    parked = _query(demo_run, lambda store: store.parked(batch_id=LLM_BATCH))
    assert [p.resume_requested_at for p in parked] == [None]  # the document stays parked

    page.goto(f"{console.url}/batches")
    batch = page.locator(f"section[data-batch='{LLM_BATCH}']")
    assert batch.locator(".llm-cancelled").count() == 1
    assert batch.locator("[data-requests='held']").inner_text() == "1"
    batch.locator("form.llm-action button").click()
    outcome = page.locator("#outcome").inner_text()
    assert "1 held LLM request(s) pending again" in outcome and "resume 1 parked" in outcome
    records = _query(demo_run, lambda store: store.llm_requests(keys))
    assert records[keys[2]].state == "pending"
    parked = _query(demo_run, lambda store: store.parked(batch_id=LLM_BATCH))
    assert parked[0].resume_requested_at is not None
