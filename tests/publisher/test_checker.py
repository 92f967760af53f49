"""DocumentChecker's duplicate detection: exact in effect, and a few bytes per id however many.

Pure decisions, no I/O: ``reread`` reads from a list standing in for the input file.
"""

from __future__ import annotations

import tracemalloc

from publisher import DocumentChecker, DocumentInput


def lines(ids: list[str]) -> dict[int, DocumentInput]:
    return {n: DocumentInput(text=f"text {n}", doc_id=doc_id) for n, doc_id in enumerate(ids, 1)}


def reader(docs: dict[int, DocumentInput]):  # type: ignore[no-untyped-def]
    def reread(file: str, line: int | None) -> DocumentInput | None:
        return docs.get(line or 0) if file == "in.jsonl" else None

    return reread


def check_all(checker: DocumentChecker, docs: dict[int, DocumentInput]) -> list[str]:
    reasons = []
    for line, doc in docs.items():
        _, problem = checker.check(doc, "in.jsonl", line)
        if problem is not None:
            reasons.append(f"{problem.line}: {problem.reason}")
    return reasons


def test_a_digest_collision_never_drops_a_document_and_duplicates_name_both_places() -> None:
    docs = lines(["a", "b", "c", "a", "d", "b"])
    every_id_collides = DocumentChecker(reread=reader(docs), digest=lambda doc_id: 7)
    assert check_all(every_id_collides, docs) == [
        "4: duplicate id 'a' (first at in.jsonl:1)",
        "6: duplicate id 'b' (first at in.jsonl:2)",
    ]


def test_a_first_place_that_cannot_be_read_again_is_reported_not_sent() -> None:
    docs = lines(["a", "a"])
    checker = DocumentChecker(reread=lambda file, line: None)
    assert check_all(checker, docs) == ["2: duplicate id 'a' (first at in.jsonl:1)"]


def test_the_checker_keeps_a_few_bytes_per_id() -> None:
    count = 50_000
    checker = DocumentChecker(reread=lambda file, line: None)
    docs = [
        DocumentInput(text="t", doc_id=f"supplier-report-{n:012d}-{'x' * 20}") for n in range(count)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for line, doc in enumerate(docs, 1):
        checker.check(doc, "some/long/path/to/the/input-file.jsonl", line)
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert kept / count < 48, f"{kept / count:.0f} bytes per id"


def test_the_checker_peaks_at_a_few_bytes_per_id_while_its_table_grows() -> None:
    """The digest table fills to 7/8 and grows without a zeroed copy beside it: 100,000 ids
    peak at about 3 MiB, where they peaked at 8 (a 3/4-full table twice as large, and a
    temporary of each new array while it was allocated)."""
    count = 100_000
    checker = DocumentChecker(reread=lambda file, line: None)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    for line in range(1, count + 1):
        checker.check(DocumentInput(text="t", doc_id=f"d{line}"), "in.jsonl", line)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    assert peak / count < 40, f"{peak / count:.0f} bytes per id at the peak"
