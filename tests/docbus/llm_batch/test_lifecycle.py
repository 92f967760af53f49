"""The provider-batch record's states and what a submitter does with each after a crash."""

from __future__ import annotations

import pytest

from docbus.llm_batch import (
    METADATA_KEY,
    OPEN_STATES,
    ProviderBatchState,
    Step,
    find_adoptable,
    recovery_step,
)


@pytest.mark.parametrize(
    ("state", "step"),
    [
        ("claiming", Step.ABANDON),
        ("claimed", Step.UPLOAD),
        ("uploaded", Step.CREATE),
        ("creating", Step.LOOK_UP_THEN_CREATE),
        ("open", Step.POLL),
        ("collecting", Step.COLLECT),
        ("settled", Step.NOTHING),
        ("abandoned", Step.NOTHING),
    ],
)
def test_every_state_has_one_next_step(state: str, step: Step) -> None:
    assert recovery_step(state) is step


def test_only_settled_and_abandoned_records_free_their_requests() -> None:
    assert set(ProviderBatchState) - OPEN_STATES == {
        ProviderBatchState.SETTLED,
        ProviderBatchState.ABANDONED,
    }


def test_a_crashed_create_is_found_by_its_metadata_or_its_input_file() -> None:
    listed = [
        {"id": "batch_3", "metadata": {METADATA_KEY: "pb-other"}, "input_file_id": "file-3"},
        {"id": "batch_2", "metadata": None, "input_file_id": "file-2"},
        {"id": "batch_1", "metadata": {METADATA_KEY: "pb-1"}, "input_file_id": "file-1"},
    ]
    assert find_adoptable(listed, "pb-1", "file-1") == "batch_1"
    assert find_adoptable(listed, "pb-2", "file-2") == "batch_2"  # metadata dropped on the way
    assert find_adoptable(listed, "pb-9", "file-9") is None
    assert find_adoptable(listed, "pb-9", None) is None
