"""JSON Lines documents through the C reader or Arrow (both passes) against the Python path:
the same header and the same CSV bytes on tricky documents, whatever the chunk size and
the split into partitions; chunks the C reader declines go to Arrow, chunks Arrow cannot
read exactly take the Python path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

import exportd.fastpaths.jsonl_csv as docs_arrow
from exportd.documents.flatten import KeyCollector, flat_rows, merge_headers
from exportd.errors import SourceError
from exportd.fastpaths.jsonl_csv import CellCache, cached_csv, collect_headers, line_chunks
from exportd.formats.text import CsvEncoder, CsvOptions
from exportd.sources.paths import byte_ranges, read_lines
from exportd.storage.local import LocalStorage
from tests.documents_support import make_docs, oracle_header

TRICKY: dict[str, list[Any]] = {
    "floats": [{"x": v} for v in (91.0, 1.5, 1e-5, 1e20, 123456789012.5, 0.0, 3, -7, 1e300)],
    "ints and floats": [{"x": 1}, {"x": 2.5}, {"x": 2**60}],
    "negative zero": [{"x": -0.0}, {"x": 1.5}],
    "int -0": [{"x": 1.5}, {"x": 0}],
    "strings": [
        {"s": v} for v in ["=1+1", "-x", "@a", "\tt", "\rr", "a,b", 'q"q', "l\nl", "", "é☕", "\\."]
    ],  # one column: `\.` alone on a line is quoted
    "arrays": [
        {"t": ["a", 'b"c', "d\\e"]},
        {"t": []},
        {"t": None},
        {"n": [1, None]},
        {"c": ["\x01"]},
    ],
    "arrays of objects or floats": [{"l": [{"k": 1}, {"k": 2, "e": None}]}, {"f": [1, 2.5]}],
    "null then object": [{"a": None}, {"a": {"b": 1}}],
    "object then null": [{"a": {"b": 1}}, {"a": None}],
    "{} then object": [{"a": {}}, {"a": {"b": 1}}],
    "{} only": [{"m": {}}, {"m": None}, {}],
    "object of nulls": [{"a": {"b": None}}, {"c": 1}],
    "dots and backslashes": [{"a.b": 1, "a": {"b": 2}, "c\\d": 3, "": 4, "e": {"f.g": 5}}],
    "type conflict": [{"a": 1}, {"a": "x"}, {"a": {"b": True}}],
    "booleans": [{"f": True}, {"f": False}, {"f": None}],
    "not objects": [{"a": 1}, 5, [1], "text", None],
    "tree order": [
        {"z": 1, "a": {"y": 1}},
        {"a": {"x": 2, "y": 3}, "b": {"k": {"j": 1}}},
        {"a": {"w": {"q": 1}}, "z": 2},
    ],
    "timestamps as text": [{"t": "2013-01-01T10:00:00+00:00"}, {"t": "2013-01-01"}, {"u": "10:00"}],
    "big numbers": [{"i": 2**62}, {"i": -5}, {"j": 2**64 - 1}],
    "rare text in a number key": [{"a": i, "b": {"c": i}} for i in range(30)]
    + [{"a": "=x", "b": {"c": 1}}, {"a": 2.5, "b": {"c": "t"}}, {"a": -1}],
    "rare kind brings a key first": [{"a": 1}, {"a": "x", "n": 2}, {"a": 3, "n": 1}],
    "rare kind in the first line": [{"a": "x", "b": 1}, {"b": 2, "a": 1}, {"a": 3}],
    "rare kind with a key seen before": [{"a": 1, "k": None}, {"a": "x", "k": 5}, {"a": 2}],
    "key text inside a value": [{"s": '"a": "y"', "a": 1}, {"a": 2}, {"a": "z", "s": ""}],
    "rare object for a scalar": [{"a": 1}, {"a": 2}, {"a": {"b": 3}}],
    "several keys change": [{"a": 1, "b": "t"}, {"a": "x", "b": "u"}, {"a": 2, "b": 7}],
    "texts like the null text": [{"s": "NULL"}, {"s": ""}, {"s": "'=x"}, {"s": "=x"}, {"n": 1}],
    "keys given twice with objects": [{"a": {"x": 1}, "b": 1}, {"a": 2}],
    "arrays of arrays and text": [{"t": [[1, "a"], [], [True, None]]}, {"t": ["\u2028é\x7f"]}],
}


@pytest.fixture(params=["c", "arrow"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Chunks first through the C reader (as served), or with it off: Arrow and Python."""
    if request.param == "c":
        assert docs_arrow._jsoncells() is not None, "the C reader is not built"
    else:
        monkeypatch.setattr(docs_arrow, "NATIVE", False)
    return str(request.param)


@pytest.fixture
def arrow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Arrow's read does, with the C reader off (it would take these chunks)."""
    monkeypatch.setattr(docs_arrow, "NATIVE", False)


def python_csv(data: bytes, opts: CsvOptions) -> tuple[list[str], int, bytes]:
    docs = [orjson.loads(line) for line in data.split(b"\n") if line.strip()]  # as the service
    keys = KeyCollector("json")
    keys.add([(d,) for d in docs])
    rows = [r for b in flat_rows([[(d,) for d in docs]], keys.keys, "json", True) for r in b]
    return keys.keys, len(docs), CsvEncoder(opts, len(keys.keys)).encode(rows).encode()


def arrow_csv(
    tmp_path: Path, path: Path, opts: CsvOptions, parts: int = 1
) -> tuple[list[str], int, bytes]:
    storage = LocalStorage(tmp_path / "storage")
    ranges = byte_ranges([str(path)], parts)
    caches, lists, documents = [], [], 0
    for i, r in enumerate(ranges):
        cache = CellCache(storage, f"parts/t/{i:05d}-h1-x/", opts)
        keys, n, chunks = collect_headers(r["segments"], lambda: None, cache)
        caches.append((cache, chunks))
        lists.append(keys)
        documents += n
    header = merge_headers(lists)
    out = b"".join(
        data
        for cache, chunks in caches
        for data, _ in cached_csv(cache, chunks, header, lambda: None)
    )
    return header, documents, out


def write(path: Path, docs: list[Any], blank: bool = False) -> bytes:
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    if blank:
        text = "\n  \n" + text.replace("\n", "\n\r\n", 3)
    path.write_text(text, encoding="utf-8")
    return path.read_bytes()


@pytest.mark.parametrize(
    "opts", [CsvOptions(), CsvOptions(delimiter=";", null="NULL", line_ending="\r\n")]
)
@pytest.mark.parametrize("case", list(TRICKY))
def test_tricky_documents_give_the_same_bytes(
    tmp_path: Path, case: str, opts: CsvOptions, reader: str
) -> None:
    data = write(tmp_path / "d.jsonl", TRICKY[case], blank=True)
    assert arrow_csv(tmp_path, tmp_path / "d.jsonl", opts) == python_csv(data, opts)


@pytest.mark.parametrize("chunk", [200, 1500, 30_000, 8 << 20])
@pytest.mark.parametrize("parts", [1, 3, 7])
def test_any_chunk_size_and_split_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, parts: int, reader: str
) -> None:
    """Chunks of clean documents go through Arrow, the others through Python, mixed
    within one partition; the header is the tree order of all documents."""
    monkeypatch.setattr(docs_arrow, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(docs_arrow, "SAMPLE_BYTES", chunk // 3)  # types from a first sample
    docs = [d for case in TRICKY.values() for d in case if isinstance(d, dict)]
    docs = make_docs(400) + docs + make_docs(800)[400:]
    data = write(tmp_path / "d.jsonl", docs)
    header, n, out = arrow_csv(tmp_path, tmp_path / "d.jsonl", CsvOptions(), parts)
    want = python_csv(data, CsvOptions())
    assert header == oracle_header(docs)
    assert (header, n, out) == want


@pytest.mark.usefixtures("arrow_only")
def test_clean_documents_go_through_arrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback must not hide that Arrow does the work: count Python chunks."""
    calls: list[int] = []
    real = docs_arrow._python_cells
    monkeypatch.setattr(
        docs_arrow,
        "_python_cells",
        lambda *a: calls.append(1) or real(*a),  # type: ignore[func-returns-value]
    )
    docs = [{k: v for k, v in d.items() if not k.startswith("rare")} for d in make_docs(500)]
    docs = [{**d, "meta": {"n": 1}} if "meta" in d else d for d in docs]  # no {}
    data = write(tmp_path / "d.jsonl", docs)
    assert arrow_csv(tmp_path, tmp_path / "d.jsonl", CsvOptions()) == python_csv(data, CsvOptions())
    assert calls == []
    write(tmp_path / "e.jsonl", make_docs(500))  # {} where an object is elsewhere
    arrow_csv(tmp_path, tmp_path / "e.jsonl", CsvOptions())
    assert calls == [1]


@pytest.mark.parametrize(
    "line", [b'{"a":1} {"a":2}', b'{"a":1', b'{"a":"\xff"}', b'{"a":"\\ud800"}', b'{"a":1,"a":2}x']
)
def test_bad_lines_fail_as_in_the_python_path(tmp_path: Path, line: bytes, reader: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a":0}\n' + line + b"\n")
    with pytest.raises(SourceError) as err:
        arrow_csv(tmp_path, path, CsvOptions())
    assert err.value.error_code == "INVALID_DOCUMENT"
    assert "d.jsonl at byte 8:" in err.value.error_msg  # as the Python path says it


def test_a_key_outside_the_merged_header_is_refused(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    path = tmp_path / "d.jsonl"
    write(path, [{"a": 1, "b": 2}])
    cache = CellCache(storage, "parts/t/00000-h1-x/", CsvOptions())
    _, _, chunks = collect_headers([[str(path), 0, path.stat().st_size]], lambda: None, cache)
    with pytest.raises(SourceError) as err:
        list(cached_csv(cache, chunks, ["a"], lambda: None))
    assert err.value.error_code == "DOCUMENTS_CHANGED"


@pytest.mark.parametrize("size", [1, 7, 64, 150, 300, 1 << 20])
@pytest.mark.parametrize("parts", [1, 2, 5, 40])
def test_line_chunks_hold_the_lines_of_each_range(tmp_path: Path, size: int, parts: int) -> None:
    path = tmp_path / "d.jsonl"
    write(path, make_docs(120), blank=True)
    with open(path, "ab") as fh:
        fh.write(b'{"last": "no newline"}')
    for r in byte_ranges([str(path)], parts):
        for p, start, end in r["segments"]:
            pairs = list(line_chunks(str(p), int(start), int(end), size))
            chunks = [c for _, c in pairs]
            assert b"".join(chunks) == b"".join(line for _, line in read_lines(str(p), start, end))
            assert all(c.endswith(b"\n") for c in chunks[:-1])
            line_starts = {offset for offset, _ in read_lines(str(p), start, end)}
            assert all(offset in line_starts for offset, _ in pairs)  # where each chunk starts


def count_flattened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the row lists the Python path renders, as they happen (the fallback
    must not hide that Arrow does the work)."""
    flattened: list[int] = []
    real = docs_arrow._python_cells
    monkeypatch.setattr(
        docs_arrow,
        "_python_cells",
        lambda rows, *a: flattened.append(len(rows)) or real(rows, *a),  # type: ignore[func-returns-value]
    )
    return flattened


def issue_docs(n: int) -> list[dict[str, Any]]:
    """Issue 13's shape: a key that is an integer in 99 % of the documents and text in
    1 %, a few extra keys, and a key that appears in the last 5 % only."""
    out: list[dict[str, Any]] = []
    for d in make_docs(n):
        i = d["id"]
        d["gate"] = f"B{i % 7}" if i % 100 == 0 else i % 60
        if i % 3 == 0:
            d[["crew", "meal", "wifi"][i % 9 // 3]] = i % 5
        if i > n * 0.95:
            d["late_key"] = {"x": i}
        out.append({k: v for k, v in d.items() if not k.startswith("rare") and k != "meta"})
    return out


@pytest.mark.usefixtures("arrow_only")
@pytest.mark.parametrize("chunk", [700, 5000, 60_000])
@pytest.mark.parametrize("parts", [1, 4])
def test_a_key_changing_type_keeps_arrow_for_the_other_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, parts: int
) -> None:
    """Documents where one key is text in 1 %: the same bytes as the Python path, and
    Python flattens only the rare lines (a rare line that brings a key first splits its
    chunk), not every document."""
    monkeypatch.setattr(docs_arrow, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(docs_arrow, "SAMPLE_BYTES", chunk // 3)
    flattened = count_flattened(monkeypatch)
    docs = issue_docs(3000)
    data = write(tmp_path / "d.jsonl", docs)
    header, n, out = arrow_csv(tmp_path, tmp_path / "d.jsonl", CsvOptions(), parts)
    assert header == oracle_header(docs)
    assert (header, n, out) == python_csv(data, CsvOptions())
    assert sum(flattened) < len(docs) // 20, sum(flattened)  # 1 % of rare lines, and a few


@pytest.mark.usefixtures("arrow_only")
def test_a_key_spelt_with_escapes_takes_the_python_path(tmp_path: Path) -> None:
    """The rare lines are found in the raw text: a key spelt with an escape is not, and
    Arrow refuses the rest again, so the chunk goes through Python, exactly."""
    lines = [b'{"a": %d}' % i for i in range(20)] + [b'{"\\u0061": "x"}', b'{"a": "y"}']
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    data = (tmp_path / "d.jsonl").read_bytes()
    assert arrow_csv(tmp_path, tmp_path / "d.jsonl", CsvOptions()) == python_csv(data, CsvOptions())


@pytest.mark.usefixtures("arrow_only")
def test_a_rare_line_bringing_a_key_first_splits_its_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line of the rarer kind that holds a key no line before it held cannot be read
    aside from Arrow's rows in the same chunk (the order of first appearance would be
    Arrow's, not the documents'): the chunk is split around that line, which alone takes
    the Python path; the bytes are the Python path's."""
    flattened = count_flattened(monkeypatch)
    docs: list[dict[str, Any]] = [{"a": i, "b": {"c": i}} for i in range(300)]
    docs[100] = {"a": "text", "new": {"k": 1}, "b": {"c": 0}}  # `new` first, in a rare line
    docs[200] = {"z": 1, "a": "more"}  # `z` first, and a second rare line
    for d in docs[150:]:
        d["new"] = {"k": 2, "j": 3}
    data = write(tmp_path / "d.jsonl", docs)
    header, n, out = arrow_csv(tmp_path, tmp_path / "d.jsonl", CsvOptions())
    assert header == oracle_header(docs)
    assert (header, n, out) == python_csv(data, CsvOptions())
    assert sum(flattened) <= 4, flattened  # the two rare lines, not the 300 documents


def count_arrow_and_python(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which other reader each chunk needed: Arrow's reads and the Python path's cells."""
    used: list[str] = []
    read, cells = docs_arrow._read, docs_arrow._python_cells
    monkeypatch.setattr(docs_arrow, "_read", lambda *a: used.append("arrow") or read(*a))  # type: ignore[func-returns-value]
    monkeypatch.setattr(docs_arrow, "_python_cells", lambda *a: used.append("python") or cells(*a))  # type: ignore[func-returns-value]
    return used


@pytest.mark.parametrize("chunk", [700, 60_000, 8 << 20])
def test_the_c_reader_takes_every_chunk_of_uneven_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Issue 13's documents (a key that is text in 1 %, keys in the last 5 % only, `{}`
    where objects are elsewhere, arrays, nulls): the C reader reads every chunk, neither
    Arrow nor Python is asked, and the bytes are the Python path's."""
    monkeypatch.setattr(docs_arrow, "CHUNK_BYTES", chunk)
    used = count_arrow_and_python(monkeypatch)
    docs = issue_docs(2000) + make_docs(300)
    data = write(tmp_path / "d.jsonl", docs, blank=True)
    for opts in (CsvOptions(), CsvOptions(delimiter="\t", null="-", spreadsheet_safe=False)):
        assert arrow_csv(tmp_path, tmp_path / "d.jsonl", opts, 3) == python_csv(data, opts)
    assert used == []


RAW_LINES = [
    b'{"a": -0, "b": -0.0, "c": 1E2, "d": 0.1e1, "e": 5e-324, "f": 1.7976931348623157e308}',
    b'  {"a" : 1 , "s":"\\u00e9\\u0041\\n\\"", "t": ["\\ud83d\\ude00", "\\u0000"]}  \r',
    b'{"a": 18446744073709551615, "b": -9223372036854775808, "c": 123456789012345678}',
    b'{"a": 2.5e15, "b": 1e16, "c": 0.0001, "d": 0.00001, "e": 123456789.125}',
    b'{"\\u0061.b": {"c\\\\": [{"k": 1, "l": [null, {}]}]}, "": {"x": 1}}',
    b"null",
    b"[]",
]
DECLINED = [
    b'{"a": [1.5]}',  # orjson's own float text inside an array
    b'{"a": 18446744073709551616}',  # beyond 64 bits: orjson makes a float of it
    b'{"a": 1, "a": 2}',
    b'{"a": {"x": 1}, "a": 2}',
    b'{"a": [{"k": 1, "k": 2}]}',
    b'{"a": "\\udc00"}',
    b"\xef\xbb\xbf{}",
    b'{"a": ' * 200 + b"1" + b"}" * 200,
]


@pytest.mark.parametrize("line", RAW_LINES + DECLINED)
def test_numbers_escapes_and_what_the_c_reader_declines(
    tmp_path: Path, line: bytes, reader: str
) -> None:
    """Lines as JSON writers other than Python's spell them, and lines the C reader
    declines (it returns None: Arrow or Python read them): the Python path's bytes."""
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 0}\n' + line + b"\n")
    data = path.read_bytes()
    try:
        want = python_csv(data, CsvOptions())
    except ValueError:
        with pytest.raises(SourceError):  # a BOM: INVALID_DOCUMENT
            arrow_csv(tmp_path, path, CsvOptions())
        return
    assert arrow_csv(tmp_path, path, CsvOptions()) == want
    cache = CellCache(LocalStorage(tmp_path / "s"), "parts/x/", CsvOptions())
    assert (docs_arrow._native_chunk(line, cache) is None) == (line in DECLINED or reader != "c")


def test_the_c_reader_declines_more_paths_than_the_widest_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docs_arrow, "MAX_COLUMNS", 3)
    assert docs_arrow._native_chunk(b'{"a": 1, "b": {"c": 2}}\n', None) == (["a", "b.c"], 1, {})
    assert docs_arrow._native_chunk(b'{"a": 1, "b": {"c": 2, "d": 3, "e": 4}}\n', None) is None


def test_the_c_reader_declines_more_cells_than_it_holds(tmp_path: Path) -> None:
    """Documents x paths beyond 2**23 cells: the C reader gives the paths but no cells
    (the Arrow and Python ways bound a chunk's memory); one document fewer, it gives both."""
    wide = orjson.dumps({f"k{i}": i for i in range(128)}) + b"\n"
    cache = CellCache(LocalStorage(tmp_path / "s"), "parts/x/", CsvOptions())
    over = wide + b"{}\n" * ((1 << 23) // 128)
    assert docs_arrow._native_chunk(over, None) == ([f"k{i}" for i in range(128)], 65537, {})
    assert docs_arrow._native_chunk(over, cache) is None
    got = docs_arrow._native_chunk(over[:-3], cache)
    assert got is not None and got[1] == 65536
    assert got[2]["k5"][0].as_py() == "5" and got[2]["k5"][65535].as_py() == ""
