"""Parquet copy-through assembly on a real local storage: partitions write their parts
through PartOutput, the coordinator's assembly lays their row groups one after another
under one merged footer, and the file is read back by pyarrow and by DuckDB (an
independent Parquet reader). Parts that differ are re-encoded instead."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from exportd.formats import Column, Format, Segment, get_format
from exportd.formats.parquet_footer import (
    CC_COLUMN_INDEX,
    CC_META,
    CC_OFFSET_INDEX,
    CMD_BLOOM_FILTER,
    FMD_ROW_GROUPS,
    RG_COLUMNS,
    decode,
)
from exportd.formats.splitting import Layout, PartOutput, read_index
from exportd.storage.local import LocalStorage

COLUMNS = [
    Column("id", "int", "BIGINT"),
    Column("name", "str", "TEXT"),
    Column("amount", "decimal", "NUMERIC(12, 2)"),
    Column("score", "float", "DOUBLE PRECISION"),
    Column("day", "date", "DATE"),
    Column("at", "datetime", "TIMESTAMP WITH TIME ZONE"),
    Column("ok", "bool", "BOOLEAN"),
]


def rows(lo: int, hi: int) -> list[tuple[Any, ...]]:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    return [
        (
            i,
            None if i % 11 == 0 else f"name {i % 97}",
            Decimal(i) / 4 - 100,
            None if i % 13 == 0 else i * 0.5,
            date(2020, 1, 1) + timedelta(days=i % 400),
            base + timedelta(minutes=i),
            None if i % 7 == 0 else i % 2 == 0,
        )
        for i in range(lo, hi)
    ]


def write_parts(
    storage: LocalStorage, fmt: Format, partitions: list[list[tuple[Any, ...]]]
) -> list[Segment]:
    segments = []
    for i, part in enumerate(partitions):
        with PartOutput(storage, f"parts/t/{i:05d}/", fmt, COLUMNS, Layout()) as out:
            for k in range(0, len(part), 333):
                out.write(part[k : k + 333])
            result = out.finish()
        segments.extend(read_index(storage, result.key))
    return segments


def footer_of(data: bytes) -> tuple[int, dict[int, Any]]:
    """(where the footer starts, the decoded FileMetaData) of a Parquet file's bytes."""
    (length,) = struct.unpack("<I", data[-8:-4])
    return len(data) - 8 - length, decode(data[-8 - length : -8])


def stats(pf: pq.ParquetFile) -> list[list[dict[str, Any]]]:
    md = pf.metadata
    out = []
    for g in range(md.num_row_groups):
        group = []
        for c in range(md.num_columns):
            s = md.row_group(g).column(c).statistics
            assert s is not None and s.has_min_max
            group.append(s.to_dict())
        out.append(group)
    return out


def test_parts_are_copied_through_under_one_footer(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    fmt = get_format("parquet", {"row_group_size": 1000})
    partitions = [rows(0, 2500), [], rows(2500, 2600), rows(2600, 5000)]
    segments = write_parts(storage, fmt, partitions)
    written = fmt.assemble(storage, "exports/out.parquet", segments, COLUMNS)
    data = (tmp_path / "files" / "exports" / "out.parquet").read_bytes()
    assert written.bytes == len(data)
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    out_path = tmp_path / "files" / "exports" / "out.parquet"

    # read back by pyarrow and by DuckDB: the source's rows, in order
    want = rows(0, 5000)
    table = pq.read_table(out_path)
    assert [tuple(r.values()) for r in table.to_pylist()] == want
    got = duckdb.sql(
        'SELECT id, name, amount, score, day, epoch_us("at"), ok '
        f"FROM read_parquet('{out_path}') ORDER BY id"
    ).fetchall()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert got == [(*r[:5], (r[5] - epoch) // timedelta(microseconds=1), r[6]) for r in want]
    [(count, total)] = duckdb.sql(
        f"SELECT count(*), sum(amount) FROM read_parquet('{out_path}') WHERE name = 'name 5'"
    ).fetchall()
    assert count == sum(1 for r in want if r[1] == "name 5")
    assert total == sum(r[2] for r in want if r[1] == "name 5")

    # the parts' row groups, in order, with their statistics and codec
    parts = [pq.ParquetFile(tmp_path / "files" / s.key) for s in segments if s.rows]
    pf = pq.ParquetFile(out_path)
    assert pf.metadata.num_rows == 5000
    assert pf.num_row_groups == sum(p.num_row_groups for p in parts) == 3 + 1 + 3
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    assert sizes == [1000, 1000, 500, 100, 1000, 1000, 400]
    assert stats(pf) == [g for p in parts for g in stats(p)]
    assert stats(pf)[0][0]["min"] == 0 and stats(pf)[-1][0]["max"] == 4999
    assert {
        pf.metadata.row_group(g).column(c).compression
        for g in range(pf.num_row_groups)
        for c in range(pf.metadata.num_columns)
    } == {"ZSTD"}
    assert pf.schema_arrow == parts[0].schema_arrow

    # copied through: each part's bytes between its magic and its footer, verbatim
    pos = 4
    for seg in (s for s in segments if s.rows):
        part = (tmp_path / "files" / seg.key).read_bytes()
        body_end, _ = footer_of(part)
        assert data[pos : pos + body_end - 4] == part[4:body_end]
        pos += body_end - 4
    assert footer_of(data)[0] == pos


def test_an_export_of_empty_partitions_and_one_full_one(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    fmt = get_format("parquet")
    segments = write_parts(storage, fmt, [[], rows(0, 10), []])
    fmt.assemble(storage, "exports/out.parquet", segments, COLUMNS)
    table = pq.read_table(tmp_path / "files" / "exports" / "out.parquet")
    assert [tuple(r.values()) for r in table.to_pylist()] == rows(0, 10)


def store_table(storage: LocalStorage, key: str, table: pa.Table, **options: Any) -> Segment:
    with storage.open_write(key) as out:
        pq.write_table(table, out, **options)
    return Segment(key, table.num_rows, storage.size(key))


def test_parts_of_other_schemas_or_codecs_are_rewritten(tmp_path: Path) -> None:
    """Parts that differ (a narrower integer type; a codec other than the one asked for,
    e.g. written by an older exportd) are decoded and written again, in row groups of
    `row_group_size` rows."""
    storage = LocalStorage(tmp_path / "files")
    fmt = get_format("parquet", {"row_group_size": 1000})
    columns = [Column("id", "int", "BIGINT"), Column("name", "str", "TEXT")]
    names = [f"n{i}" for i in range(1700)]
    narrow = pa.table({"id": pa.array(range(1500), pa.int32()), "name": names[:1500]})
    wide = pa.table({"id": pa.array(range(1500, 1700), pa.int64()), "name": names[1500:]})
    zstd = {"compression": "zstd", "row_group_size": 1000}
    cases = {
        "schemas": [narrow.cast(pa.schema([("id", pa.int32()), ("name", pa.string())])), wide],
        "codecs": [narrow.cast(wide.schema), wide],
    }
    for case, (first, second) in cases.items():
        segments = [
            store_table(storage, f"parts/{case}/a.parquet", first, **(
                {"compression": "lz4", "row_group_size": 1000} if case == "codecs" else zstd
            )),
            store_table(storage, f"parts/{case}/b.parquet", second, **zstd),
        ]  # fmt: skip
        fmt.assemble(storage, f"exports/{case}.parquet", segments, columns)
        pf = pq.ParquetFile(tmp_path / "files" / "exports" / f"{case}.parquet")
        assert pf.schema_arrow.field("id").type == pa.int64()
        assert pf.read().column("id").to_pylist() == list(range(1700))
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        assert sizes == [1000, 700]  # regrouped: not copied through
        assert pf.metadata.row_group(0).column(0).compression == "ZSTD"


def test_page_indexes_and_bloom_filters_move_with_their_row_groups(tmp_path: Path) -> None:
    """Parts with page indexes and bloom filters (which exportd itself does not write):
    their offsets are shifted with the bytes, so they still point at the same bytes."""
    storage = LocalStorage(tmp_path / "files")
    fmt = get_format("parquet", {"row_group_size": 1000})
    columns = [Column("id", "int", "BIGINT"), Column("name", "str", "TEXT")]
    options = {
        "compression": "zstd", "row_group_size": 1000, "write_page_index": True,
        "bloom_filter_options": {"name": {"ndv": 2000}},
    }  # fmt: skip
    tables = [
        pa.table(
            {"id": pa.array(range(lo, hi), pa.int64()), "name": [f"n{i}" for i in range(lo, hi)]}
        )
        for lo, hi in ((0, 1200), (1200, 3000))
    ]
    segments = [
        store_table(storage, f"parts/p/{i}.parquet", t, **options) for i, t in enumerate(tables)
    ]
    fmt.assemble(storage, "exports/out.parquet", segments, columns)
    path = tmp_path / "files" / "exports" / "out.parquet"
    data = path.read_bytes()
    parts = [(tmp_path / "files" / s.key).read_bytes() for s in segments]

    def located(blob: bytes) -> list[bytes]:
        """The bytes each column chunk's page indexes and bloom filter point at."""
        _, meta = footer_of(blob)
        found = []
        for rg in meta[FMD_ROW_GROUPS][1][1]:
            for chunk in rg[RG_COLUMNS][1][1]:
                for off, length in ((CC_COLUMN_INDEX, 7), (CC_OFFSET_INDEX, 5)):
                    at, n = chunk[off][1], chunk[length][1]
                    found.append(blob[at : at + n])
                cmd = chunk[CC_META][1]
                if CMD_BLOOM_FILTER in cmd:
                    at, n = cmd[CMD_BLOOM_FILTER][1], cmd[CMD_BLOOM_FILTER + 1][1]
                    found.append(blob[at : at + n])
        return found

    assert located(data) == located(parts[0]) + located(parts[1])
    assert sum(1 for b in located(data) if b) == 4 * 2 * 2 + 4  # 4 row groups of 2 chunks
    assert pq.read_table(path).column("id").to_pylist() == list(range(3000))
    for name, want in (("n2500", 1), ("absent", 0)):  # DuckDB probes the bloom filters
        query = f"SELECT count(*) FROM read_parquet('{path}') WHERE name = '{name}'"
        [(n,)] = duckdb.sql(query).fetchall()
        assert n == want


def test_a_column_of_distinct_values_leaves_its_dictionary_at_the_limit(tmp_path: Path) -> None:
    """A key column (every value distinct) stops filling its dictionary at
    `parquet.DICTIONARY_PAGE_LIMIT` (128 KB) and goes on in plain pages (pyarrow's 1 MB would hold the whole
    row group's 131,072 int64s); a column of few values keeps its small dictionary. The
    values read back are the rows written."""
    storage = LocalStorage(tmp_path)
    written = rows(0, 131_072)
    [segment] = write_parts(storage, get_format("parquet"), [written])
    pf = pq.ParquetFile(storage.local_path(segment.key))
    chunk = pf.metadata.row_group(0).column(0)
    few = pf.metadata.row_group(0).column(1)
    assert (chunk.path_in_schema, few.path_in_schema) == ("id", "name")
    assert chunk.has_dictionary_page and few.has_dictionary_page
    # the dictionary page (compressed) is what lies before the first data page: 17 KB
    # here, 134 KB when it holds all 131,072 keys (the 1 MB limit)
    assert chunk.data_page_offset - chunk.dictionary_page_offset < 64_000
    assert few.data_page_offset - few.dictionary_page_offset < 2_000  # 97 names
    table = pf.read()
    assert table.column("id").to_pylist() == [r[0] for r in written]
    assert table.column("name").to_pylist() == [r[1] for r in written]
