"""Golden tests per format, end to end over real HTTP: a PostgreSQL table of tricky values
(NULL vs empty text, delimiters, quotes, newlines, unicode, very long text, decimals
beyond a double's precision, time zones, binary) is exported in every format and read
back by an independent reader (csv, json, pyarrow, openpyxl); what it reads equals the
source as the test itself reads it with psycopg."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest

from tests.conftest import _create_database
from tests.support import LiveServer, drop_database, pg_url

LONG = "long text " * 10_000  # 100,000 characters
TZ = timezone(timedelta(hours=5, minutes=30))
COLUMNS = ["id", "t", "n", "f", "b", "d", "ts", "tsn", "bin", "i"]
ROWS: list[tuple[Any, ...]] = [
    (1, None, None, None, None, None, None, None, None, None),
    (2, "", Decimal("0"), 0.0, False, date(2024, 2, 29), datetime(2024, 1, 1, tzinfo=UTC),
     datetime(2024, 1, 1, 12, 0, 0, 500000), b"", 0),
    (3, 'a,b "quoted"\nnext line\r\nlast', Decimal("12345678901234567890.1234567891"),
     1e-300, True, date(1999, 12, 31), datetime(2013, 6, 1, 23, 59, 59, 123456, tzinfo=TZ),
     datetime(2013, 6, 1, 0, 0), bytes(range(256)), -(2**63)),
    (4, "=SUM(A1:A9)", Decimal("-0.0000001000"), 1.5e15, True, None,
     datetime(1970, 1, 1, tzinfo=UTC), None, b"\x00,\n\"", 2**63 - 1),
    (5, "café ☕ 𝄞 中文", Decimal("1.5"), 0.1, None, date(2000, 1, 1), None, None, None, 42),
    (6, LONG, Decimal("99999999999999999999.9999999999"), -0.0, False, None, None, None,
     None, None),
    (7, "+1", None, 123.456, None, None, None, None, None, None),
    (8, "-x", None, None, None, None, None, None, None, None),
    (9, "@here", None, float("inf"), None, None, None, None, None, None),
    (10, "\ttab", None, None, None, None, None, None, None, None),
    (11, "NULL", None, None, None, None, None, None, None, None),
    (12, "tab\tinside; semi", None, None, None, None, None, None, None, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def tricky_source() -> Iterator[str]:
    name = _create_database("exportd_tricky")
    url = pg_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE tricky (id bigint PRIMARY KEY, t text, n numeric(30, 10),
               f double precision, b boolean, d date, ts timestamptz, tsn timestamp,
               bin bytea, i bigint)"""
        )
        with conn.cursor().copy(f"COPY tricky ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in ROWS:
                copy.write_row(row)
        _SOURCE[:] = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM tricky ORDER BY id").fetchall()
    yield url
    drop_database(name)


@pytest.fixture(scope="module")
def server(tricky_source: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    live = LiveServer(tmp_path_factory.mktemp("golden"), workers=2, xlsx_sheet_rows=5)
    live.start()
    admin = live.client()
    token = admin.project("g")
    admin.dataset("g", name="tricky", url=tricky_source, table="tricky", key="id")
    yield live.client(token)
    live.stop()


_SOURCE: list[tuple[Any, ...]] = []


def source() -> list[tuple[Any, ...]]:
    """The rows as PostgreSQL gives them back (numeric(30, 10) keeps ten decimals)."""
    return _SOURCE


def export(api: Any, fmt: str, **body: Any) -> tuple[dict[str, Any], bytes]:
    task = api.export("g", dataset_id="tricky", format=fmt, parallelism=3, **body)
    done = api.wait("g", task["task_id"])
    assert done["status"] == "COMPLETED", done
    r = api.http.get(f"/v1/projects/g/exports/{task['task_id']}/download")
    assert r.status_code == 200, r.text
    return done, r.content


def csv_text(v: Any) -> str:
    """The documented CSV rendering, written out independently of exportd's code."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {0.1: "0.1", 1e-300: "1e-300", 1.5e15: "1.5e+15", 123.456: "123.456"}.get(
            v, "Infinity" if v == math.inf else "-0" if math.copysign(1, v) < 0 else "0"
        )
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, datetime) and v.tzinfo:
        return v.astimezone(UTC).isoformat().replace(".123456", ".123456")
    if isinstance(v, datetime):
        return v.isoformat().replace(".500000", ".5")
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t"):
        return "'" + v
    return str(v)


def test_csv_reads_back_equal_and_keeps_null_apart_from_empty(server: Any) -> None:
    done, body = export(server, "csv")
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert rows[0] == COLUMNS
    assert rows[1:] == [[csv_text(v) for v in row] for row in source()]
    lines = body.decode().split("\n")
    assert lines[1] == "1,,,,,,,,,"  # NULL: nothing
    assert lines[2].startswith('2,"",0.0000000000,0,false,2024-02-29,2024-01-01T00:00:00+00:00,')
    assert '"a,b ""quoted""\nnext line\r\nlast"' in body.decode()
    assert "\n4,'=SUM(A1:A9)," in body.decode()
    assert done["files"][0]["rows"] == len(ROWS)


def test_csv_options_change_the_dialect(server: Any) -> None:
    opts = {
        "delimiter": ";", "quote": "'", "header": False, "null": "NULL", "line_ending": "crlf",
        "bom": True, "spreadsheet_safe": False, "timezone": "Asia/Kolkata",
        "datetime_format": "%d/%m/%Y %H:%M", "date_format": "%Y%m%d",
    }  # fmt: skip
    _, body = export(server, "csv", format_options=opts)
    assert body.startswith(b"\xef\xbb\xbf") and b"\r\n" in body
    text = body[3:].decode()
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";", quotechar="'"))
    assert rows[0] == ["1", *["NULL"] * 9]  # no header; NULL as asked
    assert rows[10][1] == "NULL" and "\r\n11;'NULL';" in text  # the text NULL is quoted
    assert rows[3][1] == "=SUM(A1:A9)"  # spreadsheet safety off
    assert rows[2][5:7] == ["19991231", "01/06/2013 23:59"]  # 23:59:59+05:30 is IST already
    assert rows[3][6] == "01/01/1970 05:30"


def test_tsv(server: Any) -> None:
    _, body = export(server, "tsv", fields=["id", "t"])
    rows = list(csv.reader(io.StringIO(body.decode(), newline=""), delimiter="\t"))
    assert rows[0] == ["id", "t"]
    assert rows[1:] == [[str(r[0]), csv_text(r[1])] for r in source()]
    assert '\n12\t"tab\tinside; semi"\n' in body.decode()


def _json_value(v: Any) -> Any:
    """The documented JSON rendering of a source value."""
    if isinstance(v, Decimal):
        return format(v, "f")
    if isinstance(v, float) and math.isinf(v):
        return None
    if isinstance(v, datetime):
        return csv_text(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, bytes):
        return base64.b64encode(v).decode()
    return v


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_formats(server: Any, fmt: str) -> None:
    _, body = export(server, fmt)
    got = json.loads(body) if fmt == "json" else [json.loads(x) for x in body.splitlines()]
    want = [{c: _json_value(v) for c, v in zip(COLUMNS, row, strict=True)} for row in source()]
    assert got == want
    assert got[3]["t"] == "=SUM(A1:A9)"  # JSON is not a spreadsheet: text as it is


def test_json_array_stays_valid_with_empty_partitions(server: Any) -> None:
    for flt in ({"id": {"eq": 5}}, {"id": {"gt": 1000}}):
        _, body = export(server, "json", filter=flt, fields=["id"])
        assert json.loads(body) == ([{"id": 5}] if "eq" in flt["id"] else [])


def test_parquet_preserves_types_and_values(server: Any, tmp_path: Path) -> None:
    done, body = export(server, "parquet", format_options={"compression": "snappy"})
    path = tmp_path / "x.parquet"
    path.write_bytes(body)
    pf = pq.ParquetFile(path)
    table = pf.read()
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "id": "int64", "t": "string", "n": "decimal128(30, 10)", "f": "double", "b": "bool",
        "d": "date32[day]", "ts": "timestamp[us, tz=UTC]", "tsn": "timestamp[us]",
        "bin": "binary", "i": "int64",
    }  # fmt: skip
    assert pf.metadata.row_group(0).column(0).compression == "SNAPPY"
    got = [tuple(r.values()) for r in table.to_pylist()]
    assert got == source()
    assert done["files"][0]["rows"] == len(ROWS)


def test_xlsx_reads_back_with_openpyxl_and_rolls_over_sheets(server: Any, tmp_path: Path) -> None:
    import openpyxl

    done, body = export(server, "xlsx")
    path = tmp_path / "x.xlsx"
    path.write_bytes(body)
    book = openpyxl.load_workbook(path, read_only=True)
    assert book.sheetnames == ["data", "data (2)", "data (3)"]  # 5 rows a sheet in this test
    rows: list[tuple[Any, ...]] = []
    for sheet in book.worksheets:
        values = list(sheet.iter_rows(values_only=True))
        assert list(values[0]) == COLUMNS
        rows.extend(values[1:])
    assert [r[0] for r in rows] == [r[0] for r in source()]
    # a CR is stored as OOXML's escape _x000D_, which openpyxl leaves in inline strings
    assert rows[2][1].replace("_x000D_", "\r") == ROWS[2][1]
    assert rows[3][1] == "=SUM(A1:A9)"  # text, not a formula
    assert rows[5][1] == LONG[:32767]  # Excel's cell limit, counted in the manifest
    assert rows[2][2] == "12345678901234567890.1234567891"  # beyond a double: kept as text
    assert rows[4][2] == 1.5 and rows[2][3] == 1e-300
    got_ts = rows[2][6]
    assert abs(got_ts - datetime(2013, 6, 1, 18, 29, 59, 123456)) < timedelta(milliseconds=1)
    assert rows[2][9] == str(-(2**63)) and rows[8][3] == "Infinity"
    manifest = server.http.get(f"/v1/projects/g/exports/{done['task_id']}/manifest").json()
    [entry] = manifest["files"]
    assert entry["sheets"] == [
        {"name": "data", "rows": 4}, {"name": "data (2)", "rows": 4}, {"name": "data (3)", "rows": 4}
    ]  # fmt: skip
    assert entry["truncated_cells"] == 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"format": "csv", "format_options": {"delimiter": ",,"}}, "delimiter"),
        ({"format": "csv", "format_options": {"quote": '"', "delimiter": '"'}}, "differ"),
        ({"format": "csv", "format_options": {"null": "a,b"}}, "null"),
        ({"format": "csv", "format_options": {"line_ending": "cr"}}, "line_ending"),
        ({"format": "csv", "format_options": {"timezone": "Mars/Olympus"}}, "timezone"),
        ({"format": "csv", "format_options": {"colour": "red"}}, "colour"),
        ({"format": "parquet", "format_options": {"compression": "brotli2"}}, "compression"),
        ({"format": "parquet", "format_options": {"row_group_size": 5}}, "row_group_size"),
        ({"format": "xlsx", "format_options": {"sheet_name": "a/b"}}, "sheet_name"),
    ],
)
def test_bad_format_options_are_400(server: Any, body: dict[str, Any], needle: str) -> None:
    r = server.http.post("/v1/projects/g/exports", json={"dataset_id": "tricky", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_FORMAT_OPTIONS"
    assert needle in r.json()["error_msg"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"format": "parquet", "compression": "gzip"}, "INVALID_COMPRESSION"),
        ({"format": "csv", "compression": "brotli"}, "INVALID_REQUEST"),
        ({"format": "xlsx", "max_bytes_per_file": 10_000}, "INVALID_LAYOUT"),
        ({"format": "xml"}, "INVALID_FORMAT"),
    ],
)
def test_bad_compression_and_layout_are_400(server: Any, body: dict[str, Any], code: str) -> None:
    r = server.http.post("/v1/projects/g/exports", json={"dataset_id": "tricky", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == code


def test_split_and_compressed_files_are_all_listed_with_their_hashes(server: Any) -> None:
    import gzip
    import hashlib

    task = server.export(
        "g", dataset_id="tricky", format="csv", compression="gzip", max_rows_per_file=5,
        parallelism=3, fields=["id", "t"], file_name="split.csv.gz",
    )  # fmt: skip
    done = server.wait("g", task["task_id"])
    assert done["status"] == "COMPLETED", done
    data_files = [f for f in done["files"] if f["kind"] == "data"]
    assert len(data_files) >= 3 and all(f["rows"] <= 5 for f in data_files)
    assert [f["name"] for f in data_files][:2] == ["split-00001.csv.gz", "split-00002.csv.gz"]
    base = f"/v1/projects/g/exports/{task['task_id']}"
    manifest = server.http.get(f"{base}/manifest").json()
    assert [(f["name"], f["rows"], f["sha256"]) for f in manifest["files"]] == [
        (f["name"], f["rows"], f["sha256"]) for f in data_files
    ]
    r = server.http.get(f"{base}/download")
    assert r.status_code == 400 and r.json()["error_code"] == "MULTIPLE_FILES"
    ids = []
    for f in data_files:
        body = server.http.get(f"{base}/download", params={"name": f["name"]}).content
        assert hashlib.sha256(body).hexdigest() == f["sha256"] and len(body) == f["bytes"]
        rows = list(csv.reader(io.StringIO(gzip.decompress(body).decode(), newline="")))
        assert rows[0] == ["id", "t"] and len(rows) - 1 == f["rows"]
        ids.extend(int(r[0]) for r in rows[1:])
    assert ids == [r[0] for r in source()]
    assert manifest["total_rows"] == len(ROWS) == done["finished_count"]
