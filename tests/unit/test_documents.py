"""Flattening, header collection and merging, document paths, and the byte-range split of
JSON Lines files: the pure parts of the documents source, checked against an oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exportd.documents.flatten import (
    DocumentPaths,
    Flattener,
    KeyCollector,
    flat_rows,
    merge_headers,
    parse_path,
    split_path,
)
from exportd.errors import BadRequest, SourceError
from exportd.formats.cells import TimeOptions, neutralise, text_renderer
from exportd.sources.filters import validate_filter
from exportd.sources.paths import byte_ranges, read_lines
from tests.documents_support import make_docs, oracle_flatten, oracle_header, write_jsonl


def _render(v: Any) -> str:
    """A flat cell as the CSV writer renders it (before quoting)."""
    if v is None:
        return ""
    render = text_renderer(v, TimeOptions())
    return neutralise(v) if render is None else render(v)


def cells(doc: Any, arrays: str = "json") -> dict[str, str]:
    """exportd's flattening, rendered as CSV cells would be (None -> "")."""
    flat = Flattener(arrays).flatten(doc)
    return {k: _render(v) for k, v in flat.items()}


@pytest.mark.parametrize("arrays", ["json", "index"])
def test_flatten_matches_the_documented_rules(arrays: str) -> None:
    for doc in make_docs(500):
        assert cells(doc, arrays) == oracle_flatten(doc, arrays)


def test_conflicting_shapes_keep_every_value() -> None:
    docs = [{"a": 1}, {"a": {"b": 2, "c": {"d": [1, 2]}}}, {"a": [3, {"b": 4}]}, {"a": None}]
    header = merge_headers([KeyCollectorOf(docs, "index")])
    assert header == ["a", "a.b", "a.c.d.0", "a.c.d.1", "a.0", "a.1.b"]
    [rows] = list(flat_rows([[(d,) for d in docs]], header, "index", strict=True))
    assert rows == [
        (1, None, None, None, None, None),
        (None, 2, 1, 2, None, None),
        (None, None, None, None, 3, 4),
        (None, None, None, None, None, None),
    ]
    header_json = merge_headers([KeyCollectorOf(docs, "json")])
    assert header_json == ["a", "a.b", "a.c.d"]
    [rows] = list(flat_rows([[(d,) for d in docs]], header_json, "json", strict=True))
    assert [r[0] for r in rows] == [1, None, '[3,{"b":4}]', None]


def KeyCollectorOf(docs: list[Any], arrays: str) -> list[str]:
    keys = KeyCollector(arrays)
    keys.add([(d,) for d in docs])
    assert keys.documents == len(docs)
    return keys.keys


def test_dotted_keys_do_not_collide_with_nesting() -> None:
    flat = cells({"a.b": 1, "a": {"b": 2}, "c\\d": 3, "": 4, "e": {}, "f": [], "g": True})
    assert flat == {
        "a\\.b": "1",
        "a.b": "2",
        "c\\\\d": "3",
        "": "4",
        "e": "{}",
        "f": "[]",
        "g": "true",
    }
    assert split_path("a\\.b") == ["a.b"] and split_path("c\\\\d") == ["c\\d"]


def test_documents_that_are_not_objects() -> None:
    for doc in (None, [1, 2], "text", 5, {}):
        for arrays in ("json", "index"):
            assert cells(doc, arrays) == oracle_flatten(doc, arrays)
    assert cells([1, 2]) == {"$": "[1,2]"} and cells([1, 2], "index") == {"$.0": "1", "$.1": "2"}


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 50])
def test_merged_header_is_tree_order_whatever_the_split(parts: int) -> None:
    docs = make_docs(600)
    size = -(-len(docs) // parts)
    headers = [KeyCollectorOf(docs[i : i + size], "index") for i in range(0, len(docs), size)]
    assert merge_headers(headers) == oracle_header(docs, "index")


def test_strict_rows_refuse_keys_outside_the_header() -> None:
    with pytest.raises(SourceError) as err:
        list(flat_rows([[({"a": 1, "new": 2},)]], ["a"], "json", strict=True))
    assert err.value.error_code == "DOCUMENTS_CHANGED"
    [rows] = list(flat_rows([[({"a": 1, "new": 2},)]], ["new"], "json", strict=False))
    assert rows == [(2,)]


@pytest.mark.parametrize(
    "path", ["", "a..b", ".a", "a.", 'a"b', "a\x01", "a\\", ".".join(["k"] * 40), "x" * 1001]
)
def test_bad_paths_are_400(path: str) -> None:
    with pytest.raises(BadRequest):
        parse_path(path)
    with pytest.raises(BadRequest):
        validate_filter([{path: {"eq": 1}}], DocumentPaths())


def test_document_filter_validation() -> None:
    ok = validate_filter(
        [{"user.age": {"gte": 30, "lt": 40}, "tags.0": {"in": ["red"]}}], DocumentPaths()
    )
    assert ok == [{"user.age": {"gte": 30, "lt": 40}, "tags.0": {"in": ["red"]}}]
    for bad in (
        {"a": {"regex": "x"}},
        {"a": {"eq": {"nested": 1}}},
        {"a": {"eq": [1]}},
        {"a": {"eq": None}},
        {"a": {"between": [1]}},
        {"a": {"like": 3}},
        {"$": {"eq": 1}},
    ):
        with pytest.raises(BadRequest):
            validate_filter([bad], DocumentPaths())


@pytest.mark.parametrize("parts", [1, 2, 3, 5, 16, 200])
def test_byte_ranges_read_every_line_exactly_once(tmp_path: Path, parts: int) -> None:
    files = []
    docs = make_docs(300)
    for n, chunk in enumerate((docs[:120], docs[120:121], [], docs[121:])):
        path = tmp_path / f"f{n}.jsonl"
        write_jsonl(path, chunk)
        files.append(str(path))
    with open(files[0], "ab") as fh:
        fh.write(b"\n   \n")  # blank lines are allowed and read as lines
    ranges = byte_ranges(files, parts)
    assert 1 <= len(ranges) <= parts
    lines = [
        line
        for r in ranges
        for path, start, end in r["segments"]
        for _, line in read_lines(path, start, end)
    ]
    expected = [line for f in files for line in Path(f).read_bytes().splitlines(keepends=True)]
    assert lines == expected
