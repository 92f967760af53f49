"""Planning a round: keys, input lines, grouping by endpoint and model, splitting to limits."""

from __future__ import annotations

import importlib
import json
import types

import pytest

from docbus.llm_batch import (
    BatchRequest,
    FileLimits,
    SubmitPolicy,
    input_line,
    learnt_quota,
    plan_files,
    request_key,
    should_submit,
    within_quota,
)


def body(text: str, model: str = "gpt-4o-mini") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def request(step: str, text: str, model: str = "gpt-4o-mini", **kwargs: object) -> BatchRequest:
    return BatchRequest.of(step, body(text, model), **kwargs)  # type: ignore[arg-type]


def test_the_same_call_of_the_same_step_has_the_same_key_whatever_the_key_order() -> None:
    one = request_key("step-1", "/v1/chat/completions", {"model": "m", "messages": [1]})
    two = request_key("step-1", "/v1/chat/completions", {"messages": [1], "model": "m"})
    assert one == two and len(one) == 64


def test_another_step_another_body_or_another_endpoint_is_another_request() -> None:
    base = request_key("step-1", "/v1/chat/completions", body("a"))
    assert request_key("step-2", "/v1/chat/completions", body("a")) != base
    assert request_key("step-1", "/v1/chat/completions", body("b")) != base  # a re-ask
    assert request_key("step-1", "/v1/embeddings", body("a")) != base


def test_a_request_must_name_its_model() -> None:
    with pytest.raises(ValueError, match="model"):
        BatchRequest.of("step", {"messages": []})


def test_the_input_line_carries_the_key_as_custom_id_and_the_body_unchanged() -> None:
    made = request("step", "hello")
    line = json.loads(input_line(made))
    assert line == {
        "custom_id": made.key,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body("hello"),
    }
    assert json.loads(input_line(made, url="/chat/completions"))["url"] == "/chat/completions"


def test_requests_are_grouped_by_endpoint_and_model_in_order_of_arrival() -> None:
    requests = [
        request("s1", "a", "m1"),
        request("s2", "b", "m2"),
        request("s3", "c", "m1"),
        BatchRequest.of("s4", body("d", "m1"), endpoint="/v1/embeddings"),
    ]
    plan = plan_files(requests)
    groups = [(f.endpoint, f.model, f.keys) for f in plan.files]
    assert groups == [
        ("/v1/chat/completions", "m1", (requests[0].key, requests[2].key)),
        ("/v1/chat/completions", "m2", (requests[1].key,)),
        ("/v1/embeddings", "m1", (requests[3].key,)),
    ]
    first = plan.files[0].content.decode().splitlines()
    assert [json.loads(line)["custom_id"] for line in first] == list(plan.files[0].keys)


def test_a_group_is_split_to_the_request_limit() -> None:
    requests = [request(f"s{i}", "x") for i in range(7)]
    plan = plan_files(requests, FileLimits(max_requests=3))
    assert [f.requests for f in plan.files] == [3, 3, 1]
    assert [k for f in plan.files for k in f.keys] == [r.key for r in requests]


def test_a_group_is_split_to_the_byte_limit_and_no_file_exceeds_it() -> None:
    requests = [request(f"s{i}", "y" * 100) for i in range(10)]
    one_line = len(input_line(requests[0]))
    limits = FileLimits(max_bytes=one_line * 3 + 10)
    plan = plan_files(requests, limits)
    assert [f.requests for f in plan.files] == [3, 3, 3, 1]
    assert all(len(f.content) <= limits.max_bytes for f in plan.files)


def test_a_request_too_big_for_any_file_is_set_apart_and_the_rest_planned() -> None:
    small, huge = request("s1", "a"), request("s2", "z" * 5000)
    plan = plan_files([small, huge], FileLimits(max_bytes=1000))
    assert plan.oversized == (huge.key,)
    assert [f.keys for f in plan.files] == [(small.key,)]


def test_a_request_listed_twice_is_planned_once() -> None:
    made = request("s1", "a")
    assert [f.keys for f in plan_files([made, made]).files] == [(made.key,)]


def test_azure_groups_write_their_own_path_into_lines() -> None:
    plan = plan_files([request("s", "a")], url_for={"/v1/chat/completions": "/chat/completions"})
    assert json.loads(plan.files[0].content)["url"] == "/chat/completions"


@pytest.mark.parametrize(
    ("age", "count", "size", "expected"),
    [
        (0.0, 0, 0, False),  # nothing to send
        (5.0, 10, 1000, False),  # young and small: wait for company
        (60.0, 1, 10, True),  # waited long enough
        (0.0, 10_000, 10, True),  # big enough by count
        (0.0, 5, 50 * 1024 * 1024, True),  # big enough by bytes
    ],
)
def test_a_group_is_submitted_when_old_or_big_enough(
    age: float, count: int, size: int, expected: bool
) -> None:
    assert should_submit(age, count, size, SubmitPolicy()) is expected


def test_limits_and_policies_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        FileLimits(max_requests=0)
    with pytest.raises(ValueError):
        SubmitPolicy(max_wait=-1)


def test_the_public_names_are_all_and_sorted() -> None:
    module = importlib.import_module("docbus.llm_batch")
    exported = list(module.__all__)

    def order(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2), name

    assert exported == sorted(exported, key=order)
    public = {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and name != "annotations"
    }
    assert public == set(exported)


def test_a_quota_refusal_teaches_half_of_what_was_refused_never_more_than_known() -> None:
    assert learnt_quota(1000, None) == 500
    assert learnt_quota(1000, 300) == 300  # a smaller limit learnt before stays
    assert learnt_quota(1, None) == 1  # never nothing: the oldest request still goes alone


def test_within_quota_takes_the_oldest_that_fit_beside_what_is_queued() -> None:
    sizes = [300, 300, 500, 100, 2000]
    pending = [request(f"s{i}", f"t{i}", estimated_tokens=n) for i, n in enumerate(sizes)]
    name = {r.key: f"s{i}" for i, r in enumerate(pending)}
    fit, never = within_quota(pending, quota=1000, queued=200)
    # 300 + 300 fit in 800; 500 does not, and the 100 behind it does not jump it
    assert [name[r.key] for r in fit] == ["s0", "s1"]
    assert [name[r.key] for r in never] == ["s4"]  # above the whole quota: can never go
    fit, never = within_quota(pending[:4], quota=1000, queued=1000)
    assert fit == [] and never == []  # all wait for open batches to finish
    fit, _ = within_quota(pending[:4], quota=1200, queued=0)
    assert [name[r.key] for r in fit] == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize(
    ("idle", "resuming", "expected"),
    [
        (None, 0, False),  # newest unknown: only max_wait and size decide
        (0.1, 0, False),  # requests still coming
        (0.5, 0, True),  # quiet and nothing on its way back: the round is all in
        (0.5, 3, False),  # quiet, but resumed deliveries have still to register theirs
    ],
)
def test_a_quiet_group_goes_before_max_wait_once_no_delivery_is_resuming(
    idle: float | None, resuming: int, expected: bool
) -> None:
    policy = SubmitPolicy(max_wait=60, quiet=0.5)
    assert should_submit(2.0, 10, 100, policy, idle=idle, resuming=resuming) is expected
    # max_wait stays the upper bound whatever is still resuming
    assert should_submit(60.0, 10, 100, policy, idle=0.0, resuming=3)


def test_when_a_waiting_group_falls_due_by_time() -> None:
    from docbus.llm_batch._plan import due_in

    policy = SubmitPolicy(max_wait=10, quiet=2)
    assert due_in(3.0, policy) == 7.0  # max_wait from the oldest
    assert due_in(3.0, policy, idle=0.5) == 1.5  # the quiet period from the newest
    assert due_in(3.0, policy, idle=0.5, resuming=2) == 2.0  # look again a quiet period on
    assert due_in(12.0, policy, idle=0.5) == 0.0


def test_polls_come_sooner_only_when_a_batch_is_about_to_finish() -> None:
    from docbus.llm_batch._plan import poll_wait

    # validating, or no progress yet: the backoff
    assert poll_wait(40.0, 5.0, status="validating") == 40.0
    assert poll_wait(40.0, 5.0, status="in_progress", counts={"total": 10}, running=60) == 40.0
    # 9 of 10 done in 90 s: about 10 s left
    counts = {"total": 10, "completed": 8, "failed": 1}
    assert poll_wait(40.0, 5.0, status="in_progress", counts=counts, running=90) == 10.0
    # nearly done: not under the floor; just begun: never later than the backoff
    assert poll_wait(40.0, 5.0, status="in_progress", counts=counts, running=9) == 5.0
    slow = {"total": 100, "completed": 1}
    assert poll_wait(40.0, 5.0, status="in_progress", counts=slow, running=60) == 40.0
    assert poll_wait(40.0, 5.0, status="finalizing") == 5.0
