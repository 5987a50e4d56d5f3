"""CSV and TSV header cells are neutralised like text cells (`'` before `= + - @ TAB CR`):
`as` renames, source column names and document keys, in the generic writer and in every
fast path (PostgreSQL COPY, SQLite through Arrow, documents through Arrow), which give
the same bytes. XLSX writes such names as text, never as formulas."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exportd.fastpaths import fast_path
from exportd.fastpaths.pg_copy_csv import PgCopyCsv
from exportd.fastpaths.sqlite_csv import SqliteArrowCsv
from exportd.formats import Column, get_format
from exportd.formats.splitting import Layout
from exportd.sources import Selection
from exportd.sources.sql import SqlEngines
from tests.formats.test_fast_paths import columns_of, make_source, run
from tests.support import Api, LiveServer

# source column names a spreadsheet would run, and one it would not
NAMES = ["=cmd()", "+sum", "-minus", "@at", "\ttab", "\rcr", "plain"]
RENAMES = {"id": '=HYPERLINK("http://127.0.0.1/x")', "plain": "@renamed"}


def neutralised(name: str) -> str:
    return "'" + name if name[:1] in ("=", "+", "-", "@", "\t", "\r") else name


def header_of(body: bytes, delimiter: str) -> list[str]:
    return next(csv.reader(io.StringIO(body.decode("utf-8"), newline=""), delimiter=delimiter))


def create_table(execute: Any, quote: str = '"') -> None:
    cols = ", ".join(f"{quote}{n}{quote} TEXT" for n in NAMES)
    execute(f"CREATE TABLE heads (id INTEGER PRIMARY KEY, {cols})")
    for i in range(1, 4):
        values = ", ".join(f"'v{i}{n[-1]}'" for n in NAMES)
        execute(f"INSERT INTO heads VALUES ({i}, {values})")


@pytest.fixture
def pg_heads(pg_database: str) -> str:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        create_table(conn.execute)
    return pg_database


@pytest.fixture
def sqlite_heads(tmp_path: Path) -> str:
    path = tmp_path / "src" / "heads.db"
    path.parent.mkdir(exist_ok=True)
    conn = sqlite3.connect(path)
    create_table(conn.execute)
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
def engines() -> Any:
    e = SqlEngines()
    yield e
    e.dispose()


@pytest.mark.parametrize("name", ["csv", "tsv"])
@pytest.mark.parametrize("source", ["pg_heads", "sqlite_heads"])
def test_fast_paths_neutralise_header_cells_as_the_generic_path(
    request: pytest.FixtureRequest, engines: SqlEngines, tmp_path: Path, source: str, name: str
) -> None:
    """Source column names, through each SQL fast path and the generic writer."""
    src = make_source(engines, request.getfixturevalue(source), "heads")
    fmt = get_format(name)
    sel = Selection(["id", *NAMES], [])
    expected_path = PgCopyCsv if source == "pg_heads" else SqliteArrowCsv
    assert isinstance(fast_path(src, fmt, Layout(), columns_of(src, sel.columns)), expected_path)
    bounds = {"lo": None, "hi": None, "nulls": True}
    slow = run(tmp_path, src, fmt, sel, bounds, fast=False)
    fast = run(tmp_path, src, fmt, sel, bounds, fast=True)
    assert fast == slow
    delimiter = "," if name == "csv" else "\t"
    assert header_of(fast, delimiter) == ["id", *map(neutralised, NAMES)]
    assert "'=cmd()" in fast.decode().splitlines()[0]


def test_header_cells_stay_as_they_are_without_spreadsheet_safety() -> None:
    fmt = get_format("csv", {"spreadsheet_safe": False})
    head = fmt.head([Column(n) for n in NAMES])  # type: ignore[attr-defined]
    assert header_of(head, ",") == NAMES


def download(api: Api, project: str, body: dict[str, Any]) -> bytes:
    task = api.export(project, **body)
    done = api.wait(project, task["task_id"])
    assert done["status"] == "COMPLETED", done
    r = api.http.get(f"/v1/projects/{project}/exports/{task['task_id']}/download")
    assert r.status_code == 200, r.text
    return r.content


def fields_with_renames() -> list[Any]:
    return [{"name": n, "as": RENAMES[n]} if n in RENAMES else n for n in ["id", *NAMES]]


def exports_over_http(server: LiveServer, pg: str, sqlite: str, docs: Path) -> dict[str, bytes]:
    """Each source's export as CSV and TSV, with `as` renames (SQL) and document keys."""
    admin = server.client()
    api = server.client(admin.project("p"))
    admin.dataset("p", name="pg", url=pg, table="heads", key="id")
    admin.dataset("p", name="lite", url=sqlite, table="heads", key="id")
    admin.dataset("p", name="docs", kind="documents", path=str(docs))
    out = {}
    for fmt in ("csv", "tsv"):
        for ds in ("pg", "lite"):
            body = {"dataset_id": ds, "format": fmt, "fields": fields_with_renames()}
            out[f"{ds}.{fmt}"] = download(api, "p", {**body, "parallelism": 2})
        out[f"docs.{fmt}"] = download(api, "p", {"dataset_id": "docs", "format": fmt})
    return out


def test_renames_and_document_keys_are_neutralised_on_every_path(
    pg_heads: str, sqlite_heads: str, tmp_path: Path, live_server: Any
) -> None:
    """Over HTTP, with the fast paths on and off: the same bytes, a neutralised header."""
    docs = tmp_path / "src" / "docs.jsonl"
    docs.write_text("".join(json.dumps({k: f"d{i}" for k in NAMES}) + "\n" for i in range(5)))
    runs = []
    for fast in (True, False):
        server = live_server(fast_paths=fast, source_dirs=[str(tmp_path / "src")])
        runs.append(exports_over_http(server, pg_heads, sqlite_heads, docs))
    assert runs[0] == runs[1]
    sql_header = ["id", *NAMES]
    sql_header = [neutralised(RENAMES.get(n, n)) for n in sql_header]
    for ds in ("pg", "lite"):
        assert header_of(runs[0][f"{ds}.csv"], ",") == sql_header
        assert header_of(runs[0][f"{ds}.tsv"], "\t") == sql_header
    doc_header = header_of(runs[0]["docs.csv"], ",")
    assert sorted(doc_header) == sorted(map(neutralised, NAMES))
    assert header_of(runs[0]["docs.tsv"], "\t") == doc_header


def test_xlsx_header_names_are_strings_not_formulas(
    sqlite_heads: str, tmp_path: Path, live_server: Any
) -> None:
    server = live_server(source_dirs=[str(tmp_path / "src")])
    admin = server.client()
    api = server.client(admin.project("p"))
    admin.dataset("p", name="lite", url=sqlite_heads, table="heads", key="id")
    body = download(api, "p", {"dataset_id": "lite", "format": "xlsx", "fields": ["=cmd()"]})
    with zipfile.ZipFile(io.BytesIO(body)) as book:
        sheet = book.read("xl/worksheets/sheet1.xml").decode()
        strings = (
            book.read("xl/sharedStrings.xml").decode()
            if "xl/sharedStrings.xml" in (book.namelist())
            else ""
        )
    assert "<f>" not in sheet  # no formula cell anywhere
    assert "=cmd()" in sheet + strings  # the name, as text
