"""The overhead benchmark's smoke run (``bench/overhead.py --quick``) prints its whole JSON line.

The figures of a quick run are too small to judge docbus by; what this test proves is that
every phase runs to its end on the local stack the bench starts, and that the line carries
every ratio issue 12's aims are read from (and each aim its measured value), so a full run
(the numbers in the README) cannot break unnoticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PHASES = {
    "publish": ("api_per_raw", "cli_per_raw_script", "api_mongo_commands_per_doc"),
    "publish_small": ("api_median_s", "raw_median_s"),
    "noop": ("docbus_per_bulk", "docbus_per_bare", "two_per_one", "last_round", "commands"),
    "reprocess": ("existing_per_fresh", "commands_per_msg", "results_before_each_run"),
    "first_result": ("docbus_per_raw", "docbus_s", "raw_s"),
    "publisher_rss": ("ratio", "peak_rss_mib", "kib_per_extra_line"),
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_prints_every_phase_and_aim() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "overhead.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("{"), run.stdout[-2000:]
    figures = json.loads(lines[0])
    assert figures["bench"] == "overhead" and figures["quick"] is True
    for phase, keys in PHASES.items():
        missing = [key for key in keys if figures[phase].get(key) is None]
        assert not missing, (phase, missing)
    assert set(figures["noop"]["two_per_one"]) == {"docbus", "bare", "bulk"}
    assert figures["reprocess"]["commands_per_msg"]["existing"] is not None
    assert all(run["settled"] > 0 for run in figures["noop"]["last_round"].values())
    assert len(figures["aims"]) == 8  # every aim but the large-results one (not in --quick)
    for name, aim in figures["aims"].items():
        assert isinstance(aim["value"], int | float) and isinstance(aim["met"], bool), name
