"""freeze_startup_heap: what a worker process does to its garbage collector before it runs."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import gc, json, weakref
from subscriber.worker import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap

class Node:
    def __init__(self): self.me = self

before = {"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}
startup = weakref.ref(Node())  # cyclic garbage from start-up: collected, not frozen
freeze_startup_heap()
after = {"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}
gc.collect()
young = [Node() for _ in range(3)]
del young
later = gc.collect()  # what the worker leaves as cycles is still collected
print(json.dumps({"before": before, "after": after, "later": later,
                  "limit": YOUNG_COLLECTION_THRESHOLD,
                  "garbage_frozen": startup() is not None}))
"""


def test_settle_heap_freezes_what_lives_and_still_collects_what_comes_after() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    figures = json.loads(out)
    assert figures["before"]["frozen"] == 0
    assert figures["after"]["frozen"] > 10_000  # the imported modules' objects, at least
    assert figures["after"]["threshold"][0] == figures["limit"]
    assert figures["after"]["threshold"][1:] == figures["before"]["threshold"][1:]
    assert figures["later"] >= 3
    assert not figures["garbage_frozen"]
