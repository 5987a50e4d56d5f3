"""Splitting into files and compression: partitions write segments through PartOutput on
a real local storage, the files are packed and assembled as the coordinator does, and the
results are read back (gzip/zstd decoders, csv, json, pyarrow)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import zstandard

from exportd.errors import BadRequest
from exportd.formats import Column, Format, get_format
from exportd.formats.splitting import Layout, PartOutput, file_names, pack, read_index
from exportd.storage.local import LocalStorage

COLUMNS = [Column("id", "int", "BIGINT"), Column("name", "str", "TEXT")]


def rows(lo: int, hi: int) -> list[tuple[Any, ...]]:
    return [(i, f'name {i}, with "quotes"' if i % 3 else "plain é") for i in range(lo, hi)]


def export(
    tmp_path: Path, fmt: Format, layout: Layout, partitions: list[list[tuple[Any, ...]]]
) -> tuple[LocalStorage, list[tuple[str, int, bytes]]]:
    """Write each partition in batches of 7 rows, then pack and assemble the files."""
    storage = LocalStorage(tmp_path / "files")
    segments = []
    for i, part in enumerate(partitions):
        with PartOutput(storage, f"parts/t/{i:05d}/", fmt, COLUMNS, layout) as out:
            for k in range(0, len(part), 7):
                out.write(part[k : k + 7])
            result = out.finish()
        assert result.rows == len(part)
        segments.extend(read_index(storage, result.key))
    groups = pack(segments, fmt, COLUMNS, layout)
    files = []
    for name, group in zip(
        file_names("out" + fmt.extension, fmt.extension, len(groups)), groups, strict=True
    ):
        written = fmt.assemble(storage, f"exports/{name}", group, COLUMNS)
        data = (tmp_path / "files" / "exports" / name).read_bytes()
        assert written.bytes == len(data)
        files.append((name, sum(s.rows for s in group), data))
    return storage, files


def read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_max_rows_per_file_is_a_hard_bound_across_partitions(tmp_path: Path) -> None:
    parts = [rows(0, 25), rows(25, 26), [], rows(26, 60)]
    _, files = export(tmp_path, get_format("csv"), Layout(max_rows=10), parts)
    assert [f[0] for f in files][:2] == ["out-00001.csv", "out-00002.csv"]
    assert all(0 < f[1] <= 10 for f in files)
    got = []
    for _, n, data in files:
        body = read_csv(data)
        assert body[0] == ["id", "name"] and len(body) - 1 == n
        got.extend(body[1:])
    assert got == [[str(a), b] for a, b in rows(0, 60)]
    # 25 rows -> 10, 10, 5; the next partition's single row joins the 5
    assert [f[1] for f in files] == [10, 10, 6, 10, 10, 10, 4]


@pytest.mark.parametrize("fmt_name", ["csv", "jsonl", "json"])
def test_max_bytes_per_file_is_exact_for_uncompressed_text(tmp_path: Path, fmt_name: str) -> None:
    fmt = get_format(fmt_name)
    _, files = export(tmp_path, fmt, Layout(max_bytes=300), [rows(0, 40), rows(40, 100)])
    assert len(files) > 3
    assert all(len(data) <= 300 for _, _, data in files)
    got: list[Any] = []
    for _, n, data in files:
        if fmt_name == "csv":
            items = read_csv(data)[1:]
        elif fmt_name == "json":
            items = json.loads(data)
        else:
            items = [json.loads(x) for x in data.splitlines()]
        assert len(items) == n
        got.extend(items)
    assert len(got) == 100


def test_a_row_larger_than_the_byte_limit_gets_a_file_of_its_own(tmp_path: Path) -> None:
    big = [(1, "x" * 5000), (2, "small"), (3, "y" * 5000)]
    _, files = export(tmp_path, get_format("csv"), Layout(max_bytes=2000), [big])
    assert [n for _, n, _ in files] == [1, 1, 1]
    assert read_csv(files[0][2])[1] == ["1", "x" * 5000]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("fmt_name", ["csv", "json"])
def test_compressed_parts_concatenate_into_one_valid_stream(
    tmp_path: Path, codec: str, fmt_name: str
) -> None:
    fmt = get_format(fmt_name, {}, codec)
    assert fmt.extension.endswith(".gz" if codec == "gzip" else ".zst")
    _, [(_, n, data)] = export(
        tmp_path, fmt, Layout(), [rows(0, 30), [], rows(30, 31), rows(31, 50)]
    )
    if codec == "gzip":
        plain = gzip.decompress(data)  # reads every member
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        plain = reader.read()
    if fmt_name == "csv":
        assert read_csv(plain)[1:] == [[str(a), b] for a, b in rows(0, 50)]
    else:
        assert [r["id"] for r in json.loads(plain)] == list(range(50))
    assert n == 50


def test_compressed_split_files_each_decompress(tmp_path: Path) -> None:
    fmt = get_format("csv", {}, "gzip")
    _, files = export(tmp_path, fmt, Layout(max_rows=15), [rows(0, 50)])
    assert [f[0] for f in files] == [f"out-{i:05d}.csv.gz" for i in range(1, 5)]
    got = [r for _, _, data in files for r in read_csv(gzip.decompress(data))[1:]]
    assert got == [[str(a), b] for a, b in rows(0, 50)]


def test_parquet_split_keeps_the_parts_row_groups(tmp_path: Path) -> None:
    fmt = get_format("parquet", {"row_group_size": 1000})
    parts = [rows(0, 1500), rows(1500, 1700), rows(1700, 4000)]
    _, files = export(tmp_path, fmt, Layout(max_rows=2500), parts)
    assert [n for _, n, _ in files] == [1700, 2300]
    ids = []
    for i, (_, n, data) in enumerate(files):
        path = tmp_path / f"f{i}.parquet"
        path.write_bytes(data)
        pf = pq.ParquetFile(path)
        assert pf.metadata.num_rows == n
        if i == 0:  # two partitions copied through: their row groups, as they wrote them
            assert [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)] == [
                1000,
                500,
                200,
            ]
        ids.extend(pf.read().column("id").to_pylist())
    assert ids == list(range(4000))


def test_empty_export_still_yields_one_valid_file(tmp_path: Path) -> None:
    for name in ("csv", "json", "parquet"):
        fmt = get_format(name)
        _, [(_, n, data)] = export(tmp_path / name, fmt, Layout(max_rows=5), [[], []])
        assert n == 0
        if name == "csv":
            assert data == b"id,name\n"
        elif name == "json":
            assert json.loads(data) == []
        else:
            (tmp_path / "e.parquet").write_bytes(data)
            assert pq.read_table(tmp_path / "e.parquet").schema.names == ["id", "name"]


def test_a_byte_limit_below_the_header_is_refused() -> None:
    with pytest.raises(BadRequest) as err:
        Layout(max_bytes=5).check(get_format("csv"), [Column("a_long_column_name")])
    assert err.value.error_code == "INVALID_LAYOUT"


def test_file_names() -> None:
    assert file_names("x.csv.gz", ".csv.gz", 1) == ["x.csv.gz"]
    assert file_names("x.csv.gz", ".csv.gz", 2) == ["x-00001.csv.gz", "x-00002.csv.gz"]
    assert file_names("report", ".csv", 2) == ["report-00001", "report-00002"]
