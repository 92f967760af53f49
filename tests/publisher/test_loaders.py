from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from docbus.envelope import Source, content_doc_id
from publisher.inputs import InputProblem
from publisher.loaders import LoaderOptions, iter_documents, load_documents, scan_documents


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def reasons(problems: list[InputProblem]) -> list[str]:
    return [str(p) for p in problems]


# -- files -------------------------------------------------------------------------------------


def test_a_directory_of_text_markdown_and_json_files(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "Acme opened a plant.")
    write(tmp_path / "sub" / "b.md", "# Strike\nWorkers at Beta walked out.")
    write(tmp_path / "c.json", json.dumps({"text": "Gamma recalled a part.", "country": "DE"}))
    write(tmp_path / ".hidden.txt", "not loaded")
    write(tmp_path / ".git" / "x.txt", "not loaded")
    docs, problems = load_documents([tmp_path])
    assert problems == []
    by_name = {doc.metadata["name"]: doc for doc in docs}
    assert sorted(by_name) == ["a.txt", "b.md", "c.json"]
    assert by_name["b.md"].content_type == "text/markdown"
    assert by_name["a.txt"].content_type == "text/plain"
    assert by_name["c.json"].metadata["country"] == "DE"
    assert by_name["a.txt"].doc_id == content_doc_id("Acme opened a plant.")
    assert by_name["a.txt"].source == Source(path=str(tmp_path / "a.txt"))


def test_a_glob_and_an_explicit_id_field_from_file_metadata(tmp_path: Path) -> None:
    write(tmp_path / "one.txt", "first")
    write(tmp_path / "two.txt", "second")
    write(tmp_path / "skip.md", "not matched")
    docs, problems = load_documents([str(tmp_path / "*.txt")], LoaderOptions(id_field="name"))
    assert problems == []
    assert [d.doc_id for d in docs] == ["one.txt", "two.txt"]


def test_id_field_path_names_whole_files_by_their_path(tmp_path: Path) -> None:
    # what the README and `publish --help` offer for finding a file's result by its path
    write(tmp_path / "a" / "same.txt", "same text")
    write(tmp_path / "b" / "same.md", "same text")  # same content: distinct ids all the same
    docs, problems = load_documents([str(tmp_path)], LoaderOptions(id_field="path"))
    assert problems == []
    assert sorted(d.doc_id or "" for d in docs) == [
        str(tmp_path / "a" / "same.txt"),
        str(tmp_path / "b" / "same.md"),
    ]


def test_a_json_file_may_hold_a_list_of_records(tmp_path: Path) -> None:
    records = [{"id": 1, "text": "a"}, {"id": 2, "body": "no text"}, "just a string"]
    path = write(tmp_path / "list.json", json.dumps(records))
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["1"]
    assert reasons(problems) == [
        f"{path}: item 2: missing text field 'text'",
        f"{path}: item 3: JSON string, expected an object with a text field",
    ]


# -- JSONL -------------------------------------------------------------------------------------


def test_jsonl_records_with_ids_metadata_and_sessions(tmp_path: Path) -> None:
    lines = [
        {"id": "n1", "text": "Acme strike", "supplier": "acme"},
        {"id": "n2", "text": "Beta fire", "supplier": "beta"},
    ]
    path = write(tmp_path / "news.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    docs, problems = load_documents([path], LoaderOptions(id_field="id", session_key="supplier"))
    assert problems == []
    assert [(d.doc_id, d.session_id, d.source) for d in docs] == [
        ("n1", "acme", Source(path=str(path), line=1)),
        ("n2", "beta", Source(path=str(path), line=2)),
    ]
    assert docs[0].metadata == {"id": "n1", "supplier": "acme"}


def test_every_bad_jsonl_line_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        b'{"id": "a", "text": "fine"}\n'
        b'{"id": "b", "text": \n'  # invalid JSON
        b'{"id": "c", "body": "x"}\n'  # no text field
        b'{"id": "d", "text": "   "}\n'  # empty
        b'{"id": "e", "text": "caf\xe9"}\n'  # latin-1, not UTF-8
        b'{"id": "a", "text": "again"}\n'  # duplicate id
        b"[1, 2]\n"  # not an object
        b'{"text": "no id"}\n'  # missing id field
        b'{"id": "f", "text": 42}\n',  # text not a string
    )
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["a"]
    assert [(p.line, p.reason.split(":")[0].split(" (")[0]) for p in problems] == [
        (2, "invalid JSON"),
        (3, "missing text field 'text'"),
        (4, "empty document"),
        (5, "not valid UTF-8"),
        (6, "duplicate id 'a'"),
        (7, "JSON array, expected an object"),
        (8, "missing id field 'id'"),
        (9, "text field 'text' is a JSON number, not a string"),
    ]
    assert f"(first at {path}:1)" in problems[4].reason


UNCARRIABLE: dict[str, tuple[str, str]] = {
    # case: (JSONL line, what the reason must say)
    "lone-surrogate-text": ('{"id": "s1", "text": "a \\ud800 b"}', "lone surrogate"),
    "lone-surrogate-key": ('{"id": "s2", "text": "x", "k\\udfff": 1}', "lone surrogate"),
    "lone-surrogate-id": ('{"id": "s3\\ud800", "text": "x"}', "lone surrogate"),
    "deep-json": ('{"id": "d", "text": "x", "m": ' + "[" * 100_000 + "]" * 100_000 + "}",
                  "nested too deeply"),
    "deep-metadata": ('{"id": "d2", "text": "x", "m": ' + "[" * 200 + "]" * 200 + "}",
                      "nested too deeply"),
    "int-over-64-bits": ('{"id": "i", "text": "x", "n": 18446744073709551616}', "64-bit"),
    "nul-in-key": ('{"id": "k", "text": "x", "a\\u0000b": 1}', "NUL"),
    "nan": ('{"id": "f1", "text": "x", "score": NaN}', "not a finite number"),
    "infinity": ('{"id": "f2", "text": "x", "score": [-Infinity]}', "not a finite number"),
    "huge-metadata": ('{"id": "h", "text": "x", "m": "' + "y" * 70_000 + '"}', "metadata of"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(UNCARRIABLE))
def test_what_json_bson_or_utf8_cannot_carry_is_a_problem_with_its_line(
    tmp_path: Path, case: str
) -> None:
    line, reason = UNCARRIABLE[case]
    path = write(
        tmp_path / "in.jsonl",
        f'{{"id": "ok1", "text": "fine"}}\n{line}\n{{"id": "ok2", "text": "fine too"}}\n',
    )
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["ok1", "ok2"]
    assert [(p.file, p.line) for p in problems] == [(str(path), 2)]
    assert reason in problems[0].reason


def test_a_json_file_nested_too_deeply_is_a_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path / "deep.json", '{"text": "x", "m": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    docs, problems = load_documents([path])
    assert docs == [] and len(problems) == 1
    assert "nested too deeply" in problems[0].reason


def test_duplicate_content_without_ids_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.jsonl", '{"text": "same"}\n{"text": "same"}\n')
    docs, problems = load_documents([path])
    assert len(docs) == 1
    assert reasons(problems) == [f"{path}:2: duplicate document: same content as {path}:1"]


def test_missing_session_value_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", '{"text": "a", "supplier": "x"}\n{"text": "b"}\n')
    docs, problems = load_documents([path], LoaderOptions(session_key="supplier"))
    assert [d.session_id for d in docs] == ["x"]
    assert reasons(problems) == [f"{path}:2: missing session field 'supplier'"]


def test_jsonl_is_streamed_line_by_line(tmp_path: Path) -> None:
    path = write(tmp_path / "big.jsonl", '{"text": "one"}\n{"text": "two"}\n{"nope": 1}\n')
    problems: list[InputProblem] = []
    stream = iter_documents([path], problems)
    assert next(stream).text == "one"
    assert problems == []  # line 3 has not been read yet
    assert [d.text for d in stream] == ["two"]
    assert [p.line for p in problems] == [3]


def test_format_option_overrides_the_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "records.txt", '{"text": "a"}\n{"text": "b"}\n')
    as_files, _ = load_documents([path])
    as_jsonl, _ = load_documents([path], LoaderOptions(format="jsonl"))
    assert len(as_files) == 1 and len(as_jsonl) == 2


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_rows_with_quoted_newlines_keep_their_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "news.csv",
        '\ufeffid,body,country\nn1,"Acme strike\nspreads to Lyon",FR\nn2,Beta fire,DE\n',
    )
    docs, problems = load_documents([path], LoaderOptions(text_field="body", id_field="id"))
    assert problems == []
    assert [(d.doc_id, d.source.line if d.source else None) for d in docs] == [
        ("n1", 2),
        ("n2", 4),
    ]
    assert docs[0].text == "Acme strike\nspreads to Lyon"
    assert docs[0].metadata == {"id": "n1", "country": "FR"}


def test_bad_csv_rows_are_reported_with_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.csv",
        b"id,text\n"
        b"a,fine\n"
        b"b\n"  # too few fields
        b"c,\n"  # empty document
        b"d,caf\xe9\n"  # not UTF-8
        b"a,again\n"  # duplicate id
        b"e,ok\n",
    )
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["a", "e"]
    assert [(p.line, p.reason.split(" (")[0]) for p in problems] == [
        (3, "row has 1 fields, the header has 2"),
        (4, "empty document"),
        (5, "not valid UTF-8"),
        (6, "duplicate id 'a'"),
    ]


@pytest.mark.parametrize(
    "csv_text",
    [
        # the quote opens in a middle field: the row would also have too few fields
        "id,text,country\nn1,Acme strike,FR\n"
        'n2,"Beta fire at the plant,DE\nn3,Gamma recall,US\nn4,Delta merger,FR\n',
        # the quote opens in the last field: the merged row has the header's field count
        "id,country,text\nn1,FR,Acme strike\n"
        'n2,DE,"Beta fire at the plant\nn3,US,Gamma recall\nn4,FR,Delta merger\n',
    ],
    ids=["middle-field", "last-field"],
)
def test_an_unterminated_quote_is_reported_where_it_opened_not_merged(
    tmp_path: Path, csv_text: str
) -> None:
    path = write(tmp_path / "news.csv", csv_text)
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["n1"]
    assert len(problems) == 1
    assert problems[0].line == 3
    assert "unterminated quote" in problems[0].reason
    assert "3 lines" in problems[0].reason


def test_csv_without_the_text_column_is_one_clear_problem(tmp_path: Path) -> None:
    path = write(tmp_path / "cols.csv", "id,body\n1,x\n")
    docs, problems = load_documents([path])
    assert docs == []
    assert reasons(problems) == [f"{path}:1: no column 'text' in the header (columns: id, body)"]


# -- files that cannot be used -----------------------------------------------------------------


def test_missing_paths_unmatched_globs_and_empty_directories(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _, problems = load_documents(
        [tmp_path / "nope.txt", str(tmp_path / "*.zzz"), tmp_path / "empty"]
    )
    assert reasons(problems) == [
        f"{tmp_path / 'nope.txt'}: no such file or directory",
        f"{tmp_path / '*.zzz'}: no files match this pattern",
        f"{tmp_path / 'empty'}: directory holds no files",
    ]


def test_non_utf8_and_empty_files(tmp_path: Path) -> None:
    latin = write(tmp_path / "latin.txt", b"line one\nline two caf\xe9\n")
    empty = write(tmp_path / "empty.md", "  \n\n")
    bad_json = write(tmp_path / "bad.json", '{\n  "text": "x",\n}')
    _, problems = load_documents([latin, empty, bad_json])
    assert [(p.file, p.line, p.reason) for p in problems] == [
        (str(latin), 2, "not valid UTF-8 (byte 21 of the file)"),
        (str(empty), None, "empty document"),
        (
            str(bad_json), 3,
            "invalid JSON: Expecting property name enclosed in double quotes at column 1",
        ),
    ]  # fmt: skip


def test_invalid_json_says_where_on_the_line_in_a_whole_sentence(tmp_path: Path) -> None:
    # The parser's short message for a raw tab in a string is "Invalid control character at":
    # alone, half a sentence.
    path = write(
        tmp_path / "broken.jsonl",
        b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "a\tb"}\n{"id": "c", "text": }\n',
    )
    _, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [(p.where, p.reason) for p in problems] == [
        (f"{path}:2", "invalid JSON: Invalid control character at column 23"),
        (f"{path}:3", "invalid JSON: Expecting value at column 21"),
    ]


@pytest.fixture
def unreadable_file(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root reads any mode; the kernel refuses this one to everybody
        return Path("/proc/self/mem")
    path = write(tmp_path / "locked.txt", "secret")
    path.chmod(0)
    return path


def test_unreadable_files_are_reported(unreadable_file: Path) -> None:
    docs, problems = load_documents([unreadable_file], LoaderOptions(format="files"))
    assert docs == []
    assert len(problems) == 1
    assert problems[0].file == str(unreadable_file)
    assert problems[0].reason.startswith("unreadable: ")


def test_scan_counts_without_keeping_documents(tmp_path: Path) -> None:
    path = write(tmp_path / "x.jsonl", '{"text": "a"}\n{"text": ""}\n{"text": "b"}\n')
    result = scan_documents([path])
    assert result.documents == 2
    assert reasons(result.problems) == [f"{path}:2: empty document"]


def test_a_quote_that_joins_two_rows_names_both_lines(tmp_path: Path) -> None:
    # Line 3 opens a quote that line 4's first quote closes: read leniently, lines 3-4 become one
    # valid-looking row and n3 vanishes inside n2's text. The problem must name line 4 too.
    path = write(
        tmp_path / "news.csv",
        'id,text\nn1,"first"\nn2,"an unterminated quote\nn3,"third"\nn4,"fourth"\n',
    )
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["n1", "n4"]
    assert [(p.line, p.last_line) for p in problems] == [(3, 4)]
    assert str(problems[0]).startswith(f"{path}:3-4: invalid CSV")
    assert "quote opened on line 3 runs to line 4" in problems[0].reason


def test_an_id_that_is_null_empty_or_an_object_says_which(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ids.jsonl",
        b'{"id": null, "text": "a"}\n'
        b'{"id": "", "text": "b"}\n'
        b'{"id": {"n": 1}, "text": "c"}\n'
        b'{"id": [1], "text": "d"}\n'
        b'{"text": "e"}\n'
        b'{"id": 7, "text": "f"}\n',
    )
    docs, problems = load_documents([path], LoaderOptions(id_field="id"))
    assert [d.doc_id for d in docs] == ["7"]
    assert [(p.line, p.reason) for p in problems] == [
        (1, "id field 'id' is null: give each document an id"),
        (2, "id field 'id' is empty: give each document an id"),
        (3, "id field 'id' is a JSON object: use a string or a number"),
        (4, "id field 'id' is a JSON array: use a string or a number"),
        (5, "missing id field 'id'"),
    ]


def test_a_file_read_as_plain_text_with_an_id_field_says_why(tmp_path: Path) -> None:
    path = write(tmp_path / "records", b'{"id": "a", "text": "fine"}\n')
    _, problems = load_documents([path], LoaderOptions(id_field="id"))
    (problem,) = problems
    assert problem.reason.startswith(
        "read as plain text because its name has no extension, so it has no id field 'id'"
    )
    assert "--format jsonl" in problem.reason
    docs, problems = load_documents([path], LoaderOptions(id_field="id", format="jsonl"))
    assert [d.doc_id for d in docs] == ["a"] and problems == []


def test_json_values_are_named_by_their_json_type(tmp_path: Path) -> None:
    path = write(tmp_path / "values.jsonl", b"null\n3\n")
    _, problems = load_documents([path])
    assert [p.reason for p in problems] == [
        "JSON null, expected an object",
        "JSON number, expected an object",
    ]
