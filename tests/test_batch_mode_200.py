"""Issue 13's CI case: 200 documents by a three-step handler in batch mode, through a real worker,
the offline Batch API, the emulator and SecantusDB (``bench/batch_mode.py``), against the same
documents run live.

Proves: every document completes in both modes (nothing dead-lettered, nothing left over), the
batch run takes exactly three rounds with one request per step and document (600 calls, no
re-asks without faults), and its audited cost is half the live run's (the issue's aim: at most
0.52 of live, re-asks included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = 200


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_200_documents_in_batch_mode_take_three_rounds_at_half_the_price() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "batch_mode.py"), "--docs", str(DOCS),
         "--processing", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, run.stdout[-2000:]
    figures = json.loads(lines[0])
    assert figures["batch_mode"] is True
    assert figures["completed"] == {"batch": DOCS, "live": DOCS}
    assert figures["other_outcomes"] == {"batch": {}, "live": {}}
    assert figures["rounds"] == 3
    assert figures["requests"] == 3 * DOCS
    assert figures["cost_ratio"] <= 0.52
    assert figures["provider_batches"] >= 3
    # the plainest alternative ran in the same run: its time and docbus's ratio to it
    assert figures["raw_s_per_10k_requests"] > 0 and figures["docbus_vs_raw"] > 0
