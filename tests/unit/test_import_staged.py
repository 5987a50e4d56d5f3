"""Rows staged as files (`execution/imports/staged.py`) on a real local storage: the
duplicates found from the key files are the staging tables' (`row_number()`: the first
line of a key kept, a NULL in the key repeating nothing, across partitions), the Python
checker's rows are written in the CSV form PostgreSQL reads, a partition's file is sent
as it is or without its duplicate lines, and a file cut short fails the publish."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from exportd.errors import ExportdError
from exportd.execution.imports import staged
from exportd.sources.targets import LINE_COLUMN, Target, TargetColumn
from exportd.storage import Storage, open_storage


def _target(kinds: dict[str, str]) -> Target:
    cols = [TargetColumn(n, k, k.upper(), True, False) for n, k in kinds.items()]
    return Target(None, "t", None, cols, [], {}, [])  # type: ignore[arg-type]


def _partition(storage: Storage, index: int, target: Target, key: list[str],
               good: dict[str, list[Any]], python: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    folder = f"parts/t/{index:05d}/"
    names = [n for n in good if n != LINE_COLUMN]
    with staged.file_sink(storage, folder, target, names, key) as sink:
        sink.good(pa.table({n: pa.array(v) for n, v in good.items()}))
        sink.python(python)
    return {"index": index, "data": folder + staged.DATA, "keys": folder + staged.KEYS,
            "rows": sink.rows, "data_bytes": sink.written, "keys_bytes": sink.keys_bytes}  # fmt: skip


def test_duplicates_across_partitions_as_row_number_finds_them(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    target = _target({"a": "int", "b": "str", "note": "str"})
    key = ["a", "b"]
    p0 = _partition(storage, 0, target, key,
                    {"a": [1, 2, None, 1], "b": ["x", "y", "x", "x"], "note": ["", "q", "r", "s"],
                     LINE_COLUMN: [2, 3, 4, 5]},
                    [{"a": 2, "b": "y", "note": None, LINE_COLUMN: 6}])  # fmt: skip
    p1 = _partition(storage, 1, target, key,
                    {"a": [None, 3, 1], "b": ["x", "z", "x"], "note": ["a", "b", "c"],
                     LINE_COLUMN: [7, 8, 9]},
                    [])  # fmt: skip
    why = "duplicate key (a, b) in the file"
    assert staged.duplicates(storage, [p0, p1], key) == [(5, why), (6, why), (9, why)]
    assert staged.duplicates(storage, [p1], key) == []
    assert staged.duplicates(storage, [p0, p1], []) == []
    # a single key: the quick check, then the same answer
    single = staged.duplicates(storage, [p0, p1], ["a"])
    assert single == [(5, "duplicate key (a) in the file"), (6, "duplicate key (a) in the file"),
                      (9, "duplicate key (a) in the file")]  # fmt: skip


def test_files_as_sent_whole_or_without_duplicates(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))
    target = _target({"a": "int", "b": "str"})
    p = _partition(storage, 0, target, ["a"],
                   {"a": [1, 2], "b": ['say "hi"', "two\nlines"], LINE_COLUMN: [2, 3]},
                   [{"a": 1, "b": "", LINE_COLUMN: 4}, {"a": 5, "b": None, LINE_COLUMN: 5}])  # fmt: skip
    # numbers unquoted from Arrow's checks, every value quoted from Python's
    whole = b'1,"say ""hi"""\n2,"two\nlines"\n"1",""\n"5",\n'
    got: list[bytes] = []
    staged.feed(storage, p, ["a", "b"], set())(got.append)
    assert b"".join(got) == whole
    got.clear()
    staged.feed(storage, p, ["a", "b"], {4, 99})(got.append)
    # the file read back as text: quoted only where it must be (the empty text is)
    assert b"".join(got) == b'1,"say ""hi"""\n2,"two\nlines"\n5,\n'
    staged.check_sizes(storage, p)
    path = storage.local_path(p["data"])
    assert path is not None
    path.write_bytes(whole[:-4])
    with pytest.raises(ExportdError) as exc:
        staged.check_sizes(storage, p)
    assert exc.value.error_code == "STAGED_FILE_LOST"


def test_python_rows_in_postgresql_csv() -> None:
    rows = [
        {"i": 1, "f": 0.1, "b": True, "d": date(2024, 2, 29), "s": 'a,"b"', "n": None,
         "t": datetime(2013, 1, 1, 10, tzinfo=UTC), "m": Decimal("1.50")},
    ]  # fmt: skip
    out = staged.pg_csv_rows(rows, ["i", "f", "b", "d", "s", "n", "t", "m"])
    assert out == b'"1","0.1","true","2024-02-29","a,""b""",,"2013-01-01T10:00:00+00:00","1.50"\n'


@pytest.mark.parametrize("kind", ["int", "str"])
def test_a_single_key_partition_by_partition_or_by_the_whole_sort(
    tmp_path: Path, kind: str
) -> None:
    """Partitions whose key ranges do not overlap are checked one by one; ranges that
    touch or overlap go to the whole sort, which finds the repeats across them."""
    storage = open_storage(str(tmp_path))
    target = _target({"a": kind})
    v = (lambda n: n) if kind == "int" else (lambda n: f"k{n:03d}")

    def part(index: int, keys: list[int], first: int) -> dict[str, Any]:
        lines = list(range(first, first + len(keys)))
        return _partition(storage, index, target, ["a"],
                          {"a": [v(k) for k in keys], LINE_COLUMN: lines}, [])  # fmt: skip

    why = "duplicate key (a) in the file"
    apart = [part(0, [2, 1], 2), part(1, [4, 3], 4)]
    assert staged.duplicates(storage, apart, ["a"]) == []
    touching = [part(2, [1, 3], 2), part(3, [4, 3], 4)]
    assert staged.duplicates(storage, touching, ["a"]) == [(5, why)]
    across = [part(4, [1, 9], 2), part(5, [5, 1], 4)]
    assert staged.duplicates(storage, across, ["a"]) == [(5, why)]


@pytest.mark.parametrize(
    "keys",
    [
        [[1, 2, 3], [4, 5], [9, 7]],  # apart: nothing repeats
        [[1, 2, 3], [4, 5], [2, 8]],  # a later partition's range overlaps, and repeats 2
        [[1, 2, 3], [4, 6], [5, 7]],  # ranges overlap, nothing repeats
        [[1, 1, None], [None, 4], [4, 1]],  # repeats within a partition; NULLs repeat nothing
        [[None, None], [3], [None]],
    ],
)
def test_the_duplicates_of_each_prefix_as_the_whole_check_finds_them(
    tmp_path: Path, keys: list[list[int | None]]
) -> None:
    """`PrefixDuplicates` (the streamed publish) gives, prefix by prefix, the lines that
    `duplicates` of that prefix gives, for one key and for two."""
    storage = open_storage(str(tmp_path))
    target = _target({"a": "int", "b": "str"})
    for key in (["a"], ["a", "b"], []):
        parts, line = [], 2
        for i, ks in enumerate(keys):
            lines = list(range(line, line + len(ks)))
            line += len(ks)
            good = {"a": ks, "b": ["x"] * len(ks), LINE_COLUMN: lines}
            parts.append(_partition(storage, i + 10 * len(key), target, key, good, []))
        found = staged.PrefixDuplicates(storage, key)
        for n, p in enumerate(parts, 1):
            whole = {line for line, _ in staged.duplicates(storage, parts[:n], key)}
            assert found.add(p) == whole, (key, n)
