"""The chaos suite's short run (``bench/chaos.py --short``) keeps docbus's promise.

Under worker SIGKILLs, a Mongo freeze, a Mongo and an emulator kill, LLM faults and a catalogue
of bad inputs, every published document must end as exactly one current result or one dead
letter per handler, and every dead letter must have its Mongo record. The script prints one
JSON line and exits 1 when any count that must be 0 is not; this test runs it as CI would and
says which counts failed, with example document ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMISE = ("lost", "duplicate_current", "done_and_dead", "unfinished")
"""Per document and handler: exactly one current result or one dead letter, in the end."""
STRANDED = ("left_on_subscription", "dlq_without_record")
"""Per message: nothing left on a subscription, no dead letter without its Mongo record."""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_short_chaos_run_loses_duplicates_and_strands_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON line (exit {run.returncode}):\n{run.stderr[-4000:]}"
    figures = json.loads(lines[-1])
    assert "error" not in figures, f"the run broke: {figures['error']}\n{run.stderr[-4000:]}"
    examples = {
        handler: counts["examples"]
        for handler, counts in figures["per_handler"].items()
        if counts["examples"]
    }
    # "failed" holds every count the script requires to be 0 (see its notes["failing"]).
    assert figures["failed"] == {}, f"chaos counts above 0: {figures['failed']}; {examples}"
    for name in PROMISE + STRANDED:
        assert figures["totals"][name] == 0, name
    assert figures["chaos"]["worker_kills"] > 0
    assert figures["chaos"]["mongo_kills"] == 1
    assert figures["chaos"]["emulator_kills"] == 1
    assert run.returncode == 0, run.stderr[-4000:]
