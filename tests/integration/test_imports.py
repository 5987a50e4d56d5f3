"""Imports end to end over real HTTP: flights-shaped data as CSV, JSON Lines and Parquet
into PostgreSQL and SQLite tables, read back equal; bad rows rejected with their lines;
modes; and bad requests refused with a 4xx that creates nothing."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from tests.imports_support import (
    NULL,
    csv_text,
    jsonl_text,
    pg_target,
    report_rows,
    rows,
    setup,
    sqlite_target,
    start_import,
    table_rows,
    upload,
    write_parquet,
)
from tests.support import LiveServer

N = 6000


@pytest.fixture
def pg_target_url(pg_database: str) -> str:
    pg_target(pg_database)
    return pg_database


@pytest.fixture(params=["postgresql", "sqlite"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_target(tmp_path / "target.db")
    url: str = request.getfixturevalue("pg_target_url")
    return url


def test_csv_import_reads_back_equal(target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=2, batch_size=1000)
    api = setup(server, target_url)
    data = rows(N)
    up = upload(api, "flights.csv", csv_text(data).encode())
    assert up["bytes"] > 0 and len(up["sha256"]) == 64
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=3)  # fmt: skip
    assert task["kind"] == "import"
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED", done
    assert done["finished_count"] == N and done["failed_count"] == 0
    assert len(done["partitions"]) == 3
    assert done["current_state"] == {"status_id": 90, "status": "Import completed"}
    assert table_rows(target_url) == Counter(data)


def test_a_large_file_without_parallelism_gets_a_partition_per_import_partition_bytes(
    pg_target_url: str, live_server: Any
) -> None:
    server: LiveServer = live_server(workers=2, import_partition_bytes=1 << 16)
    api = setup(server, pg_target_url)
    data = rows(N)
    text = csv_text(data).encode()
    up = upload(api, "flights.csv", text)
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"], null_values=[NULL])
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED" and done["finished_count"] == N, done
    want = -(-len(text) // (1 << 16))
    assert want > 4 and len(done["partitions"]) == want  # more than the default 4
    # a streamed publish's first ranges ramp up (an eighth, a quarter, ... of 64 KB)
    counts = [p["finished_count"] for p in done["partitions"]]
    assert counts[0] < counts[1] < counts[2] and 4 * counts[0] <= min(counts[3:-1]), counts
    assert table_rows(pg_target_url) == Counter(data)
    # named, the parallelism is the request's
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=2, mode="replace")  # fmt: skip
    assert len(api.wait("acme", task["task_id"], timeout=120)["partitions"]) == 2


def test_jsonl_and_parquet_into_postgresql(
    pg_target_url: str, live_server: Any, tmp_path: Path
) -> None:
    server: LiveServer = live_server(workers=2, batch_size=1000)
    api = setup(server, pg_target_url)
    data = rows(N)
    half = N // 2
    up = upload(api, "a.jsonl", jsonl_text(data[:half]).encode())
    t1 = start_import(api, dataset_id="flights", upload_id=up["upload_id"], parallelism=2)
    parquet = tmp_path / "b.parquet"
    write_parquet(parquet, data[half:], row_group_size=700)
    up2 = upload(api, "b.parquet", parquet.read_bytes())
    t2 = start_import(api, dataset_id="flights", upload_id=up2["upload_id"], parallelism=2)
    for t in (t1, t2):
        done = api.wait("acme", t["task_id"], timeout=120)
        assert done["status"] == "COMPLETED", done
        assert len(done["partitions"]) == 2
    assert table_rows(pg_target_url) == Counter(data)


BAD_ROWS = [
    (9, "9000001,AA,JFK,LAX,not-a-number,100.0,\\N,2013-01-01T00:00:00+00:00", "dep_delay"),
    (19, "9000002,\\N,JFK,LAX,5,100.0,\\N,2013-01-01T00:00:00+00:00", "carrier"),
    (29, "9000003,AAA,JFK,LAX,5,100.0,\\N,2013-01-01T00:00:00+00:00", "carrier"),
    (39, '9000004,AA,JFK,LAX,5,100.0,"broken,2013-01-01T00:00:00+00:00', "quot"),
    (49, "9000005,AA,JFK,LAX,5,far,\\N,2013-01-01T00:00:00+00:00", "distance"),
    (59, "3,AA,JFK,LAX,5,100.0,\\N,2013-01-01T00:00:00+00:00", "duplicate"),
    (2999, "9000006,AA,JFK", "fields"),
]


def bad_file(data: list[tuple[Any, ...]]) -> tuple[str, dict[int, str]]:
    """The CSV of `data` with bad records put in (before the n-th good record), and the
    line each starts on -> a word its reason must hold. Records may span lines."""
    records = [csv_text([r]).split("\n", 1)[1].removesuffix("\n") for r in data]
    out, bad, line = ["id,carrier,origin,dest,dep_delay,distance,note,dep_time"], {}, 2
    pending = {min(at, len(records)): (text, why) for at, text, why in BAD_ROWS}
    for i, rec in enumerate([*records, None]):
        if i in pending:
            text, why = pending[i]
            out.append(text)
            bad[line] = why
            line += 1
        if rec is not None:
            out.append(rec)
            line += rec.count("\n") + 1
    return "\n".join(out) + "\n", bad


def test_bad_rows_are_rejected_with_their_lines(target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=2, batch_size=500)
    api = setup(server, target_url)
    data = rows(N)
    text, bad = bad_file(data)
    up = upload(api, "bad.csv", text.encode())
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=3, max_errors=10)  # fmt: skip
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert done["failed_count"] == len(bad) and done["finished_count"] == N
    assert sorted(i["line"] for i in done["failed_items"]) == sorted(bad)
    report = report_rows(api, done)
    assert [int(r["line"]) for r in report] == sorted(bad)
    lines = text.splitlines()
    for r in report:
        assert bad[int(r["line"])] in r["reasons"], r
        assert r["original"] == lines[int(r["line"]) - 1]  # a bad record is one line
    assert table_rows(target_url) == Counter(data)  # every valid row, the first of the key
    manifest = api.http.get(f"/v1/projects/acme/imports/{task['task_id']}/manifest").json()
    assert manifest["rejected_rows"] == len(bad)
    assert manifest["files"][0]["name"] == "rejected_rows.csv"


def test_too_many_errors_imports_nothing(
    pg_target_url: str, store_url: str, live_server: Any
) -> None:
    server: LiveServer = live_server(workers=2, store_url=store_url)  # both store backends
    api = setup(server, pg_target_url)
    text, bad = bad_file(rows(500))
    up = upload(api, "bad.csv", text.encode())
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], max_errors=3)  # fmt: skip
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "FAILED" and done["error_code"] == "TOO_MANY_ERRORS", done
    assert sorted(i["line"] for i in done["failed_items"]) == sorted(bad)
    assert table_rows(pg_target_url) == Counter()
    assert_no_staging(pg_target_url)


def assert_no_staging(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    names = sa.inspect(engine).get_table_names()
    engine.dispose()
    assert [n for n in names if n.startswith("exportd_stage_")] == []


def test_modes_upsert_and_replace(target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=2)
    api = setup(server, target_url)
    data = rows(300)
    first = upload(api, "a.csv", csv_text(data).encode())
    t = start_import(api, dataset_id="flights", upload_id=first["upload_id"], null_values=[NULL])
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    changed = [(r[0], "ZZ", *r[2:]) for r in data[:100]] + rows(400)[300:]
    up = upload(api, "b.csv", csv_text(changed).encode())
    t = start_import(api, dataset_id="flights", upload_id=up["upload_id"], null_values=[NULL],
                     mode="upsert")  # fmt: skip
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    assert table_rows(target_url) == Counter(changed + data[100:])
    t = start_import(api, dataset_id="flights", upload_id=first["upload_id"], null_values=[NULL],
                     mode="replace", parallelism=2)  # fmt: skip
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    assert table_rows(target_url) == Counter(data)
    manifest = api.http.get(f"/v1/projects/acme/imports/{t['task_id']}/manifest").json()
    # PostgreSQL: replace COPYs the staged files in (upsert merged through staging tables)
    expected = "files" if target_url.startswith("postgresql") else "staging"
    assert manifest["published_from"] == expected, manifest


def test_mapping_renames_constants_and_no_header(pg_target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=1)
    api = setup(server, pg_target_url)
    data = rows(50)
    text = csv_text([(*r[:6], None, r[7]) for r in data]).splitlines()[1:]
    body = "\n".join(line.replace("\\N", "") for line in text) + "\n"
    up = upload(api, "plain.csv", body.encode())
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"], header=False,
                        mapping={"#6": None}, constants={"note": "imported"})  # fmt: skip
    done = api.wait("acme", task["task_id"])
    assert done["status"] == "COMPLETED", done
    assert table_rows(pg_target_url) == Counter((*r[:6], "imported", r[7]) for r in data)


def test_bad_requests_create_nothing(pg_target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=1, max_upload_bytes=10_000)
    admin = server.client()
    api = setup(server, pg_target_url)
    admin.dataset("acme", name="readonly", kind="sql", url=pg_target_url, table="flights", key="id")
    other = server.client(admin.project("other"))
    admin.dataset("other", name="flights", kind="sql", url=pg_target_url, table="flights",
                  key="id", writable=True)  # fmt: skip
    up = upload(api, "f.csv", csv_text(rows(20)).encode())

    def refused(status: int, code: str, project: str = "acme", who: Any = api, **body: Any) -> None:
        r = who.http.post(f"/v1/projects/{project}/imports", json=body)
        assert (r.status_code, r.json()["error_code"]) == (status, code), r.text

    src = {"upload_id": up["upload_id"]}
    refused(400, "DATASET_NOT_FOUND", dataset_id="nope", **src)
    refused(403, "DATASET_NOT_WRITABLE", dataset_id="readonly", **src)
    refused(400, "UNKNOWN_COLUMN", dataset_id="flights", mapping={"note": "nope"}, **src)
    refused(400, "UNKNOWN_FILE_COLUMN", dataset_id="flights", mapping={"nope": "note"}, **src)
    refused(400, "UNSUPPORTED_FORMAT", dataset_id="flights", format="xml", **src)
    refused(400, "UPLOAD_NOT_FOUND", project="other", who=other, dataset_id="flights", **src)
    r = api.http.post(
        "/v1/projects/acme/uploads", params={"name": "big.csv"}, content=b"x" * 20_000
    )
    assert (r.status_code, r.json()["error_code"]) == (413, "UPLOAD_TOO_LARGE"), r.text
    r = api.http.post("/v1/projects/acme/datasets", json={"name": "w", "kind": "sql",
                      "url": pg_target_url, "table": "flights", "writable": True})  # fmt: skip
    assert r.status_code == 403, r.text
    assert api.http.get("/v1/projects/acme/imports").json()["count"] == 0
    assert other.http.get("/v1/projects/other/imports").json()["count"] == 0
    uploads = [p for p in (server.settings.data_dir).rglob("*") if p.is_file() and "big" in p.name]
    assert uploads == []


def test_idempotency_key(pg_target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=1)
    api = setup(server, pg_target_url)
    up = upload(api, "f.csv", csv_text(rows(20)).encode())
    body = {"dataset_id": "flights", "upload_id": up["upload_id"], "null_values": [NULL]}
    h = {"Idempotency-Key": "k1"}
    a = api.http.post("/v1/projects/acme/imports", json=body, headers=h)
    b = api.http.post("/v1/projects/acme/imports", json=body, headers=h)
    assert (a.status_code, b.status_code) == (202, 200)
    assert a.json()["task_id"] == b.json()["task_id"]
    where = f"/v1/projects/acme/imports/{a.json()['task_id']}"
    assert a.headers["location"] == b.headers["location"] == where
    c = api.http.post("/v1/projects/acme/imports", json={**body, "mode": "replace"}, headers=h)
    assert c.status_code == 409
    assert api.wait("acme", a.json()["task_id"])["status"] == "COMPLETED"
    assert sum(table_rows(pg_target_url).values()) == 20


def test_seed_001_view_and_listing(pg_target_url: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=1)
    api = setup(server, pg_target_url)
    up = upload(api, "flights.csv", csv_text(rows(20)).encode())
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], notify={"webhook_url": "https://example.com/h"})  # fmt: skip
    r = api.http.get(f"/v2/acme/quality/resource/status/{task['task_id']}",
                     headers={"workspace": "w1"})  # fmt: skip
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["action"] == "REPORT" and view["file_name"] == "flights.csv"
    body = json.loads(view["import_body"])
    assert body["upload_id"] == up["upload_id"] and body["null_values"] == [NULL]
    assert "webhook_url" not in json.dumps(body)  # secrets removed
    for action, count in (("IMPORT", 1), ("REPORT", 1), ("EXPORT", 0)):
        got = api.http.get("/v1/projects/acme/exports", params={"action": action}).json()
        assert got["count"] == count, (action, got)
    assert api.http.get("/v1/projects/acme/imports").json()["count"] == 1
    assert api.http.get("/v2/acme/export-tasks").json()["count"] == 0  # seed 004: exports


def test_client_and_cli(pg_target_url: str, live_server: Any, tmp_path: Path) -> None:
    import anyio
    from typer.testing import CliRunner

    from exportd.cli.client import AsyncClient, Client
    from exportd.cli.commands import app

    server: LiveServer = live_server(workers=2)
    setup(server, pg_target_url)
    token = server.client().http.post("/v1/projects/acme/tokens", json={"role": "writer"})
    token_value = token.json()["token"]
    data = rows(90)
    for i, part in enumerate((data[:30], data[30:60])):
        (tmp_path / f"p{i}.csv").write_text(csv_text(part))
    with Client(server.url, token_value) as c:
        task = c.create_import("acme", "flights", file=tmp_path / "p0.csv", null_values=[NULL])
        assert c.wait("acme", task.task_id).status == "COMPLETED"

    async def run_async() -> str:
        async with AsyncClient(server.url, token_value) as ac:
            t = await ac.create_import("acme", "flights", file=tmp_path / "p1.csv",
                                       null_values=[NULL])  # fmt: skip
            return (await ac.wait("acme", t.task_id)).status

    assert anyio.run(run_async) == "COMPLETED"
    (tmp_path / "p2.jsonl").write_text(jsonl_text(data[60:]))
    result = CliRunner().invoke(
        app, ["import", "acme", "flights", str(tmp_path / "p2.jsonl"), "--url", server.url,
              "--token", token_value, "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "COMPLETED"
    assert table_rows(pg_target_url) == Counter(data)


@pytest.fixture
def mariadb_target() -> Iterator[str]:
    import uuid

    import pymysql

    name = f"exportd_imp_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(
            f"""CREATE TABLE {name}.flights (id BIGINT PRIMARY KEY, carrier VARCHAR(2) NOT NULL,
                origin VARCHAR(8) NOT NULL, dest VARCHAR(8) NOT NULL, dep_delay INT NULL,
                distance DOUBLE NOT NULL, note TEXT NULL, dep_time DATETIME(6) NOT NULL)
                CHARACTER SET utf8mb4"""
        )
    yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE {name}")
    conn.close()


def test_tsv_gzip_into_mariadb_with_upsert(mariadb_target: str, live_server: Any) -> None:
    import gzip

    import sqlalchemy as sa

    server: LiveServer = live_server(workers=2)
    api = setup(server, mariadb_target)
    data = rows(400)
    up = upload(api, "f.tsv", csv_text(data, delimiter="\t").encode())
    t = start_import(api, dataset_id="flights", upload_id=up["upload_id"], null_values=[NULL],
                     parallelism=2)  # fmt: skip
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    changed = [(r[0], "ZZ", *r[2:]) for r in data[:50]]
    up = upload(api, "g.csv.gz", gzip.compress(csv_text(changed).encode()))
    t = start_import(api, dataset_id="flights", upload_id=up["upload_id"], null_values=[NULL],
                     mode="upsert")  # fmt: skip
    done = api.wait("acme", t["task_id"])
    assert done["status"] == "COMPLETED", done
    engine = sa.create_engine(mariadb_target)
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT * FROM flights")).all()
    engine.dispose()
    as_utc = [(*r[:7], r[7].replace(tzinfo=UTC)) for r in got]
    assert Counter(as_utc) == Counter(changed + data[50:])


def test_xlsx_and_zstd_into_sqlite(live_server: Any, tmp_path: Path) -> None:
    import zstandard
    from openpyxl import Workbook

    url = sqlite_target(tmp_path / "t.db")
    server: LiveServer = live_server(workers=2)
    api = setup(server, url)
    data = rows(200)
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["id", "carrier", "origin", "dest", "dep_delay", "distance", "note", "dep_time"])
    for r in data[:100]:
        sheet.append([*r[:7], r[7].isoformat()])
    sheet.append([9000001, "AA", "JFK"])  # row 102: the NOT NULL cells are empty
    book.save(tmp_path / "f.xlsx")
    up = upload(api, "f.xlsx", (tmp_path / "f.xlsx").read_bytes())
    t = start_import(api, dataset_id="flights", upload_id=up["upload_id"], max_errors=1)
    done = api.wait("acme", t["task_id"])
    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert {i["line"] for i in done["failed_items"]} == {102}
    body = zstandard.ZstdCompressor().compress(jsonl_text(data[100:]).encode())
    up = upload(api, "g.jsonl.zst", body)
    t = start_import(api, dataset_id="flights", upload_id=up["upload_id"])
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    # a sheet has no "" cell; "=cmd()" is a formula, read as its cached value (none here)
    in_sheet = [(*r[:6], None if not r[6] or r[6][0] == "=" else r[6], r[7]) for r in data[:100]]
    assert table_rows(url) == Counter(in_sheet + data[100:])


def test_sources_a_connection_path_and_a_project_key(
    pg_target_url: str, live_server: Any, tmp_path: Path
) -> None:
    server: LiveServer = live_server(workers=1)
    api = setup(server, pg_target_url)
    admin = server.client()
    folder = tmp_path / "incoming"
    folder.mkdir()
    data = rows(60)
    (folder / "a.csv").write_text(csv_text(data[:30]))
    r = admin.http.post("/v1/connections", json={"name": "drop", "url": folder.as_uri(),
                                                 "projects": ["acme"]})  # fmt: skip
    assert r.status_code == 201, r.text
    t = start_import(api, dataset_id="flights", connection="drop", path="a.csv",
                     null_values=[NULL])  # fmt: skip
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    r = api.http.post("/v1/projects/acme/imports", json={"dataset_id": "flights",
                      "connection": "drop", "path": "../a.csv"})  # fmt: skip
    assert r.status_code == 403, r.text
    r = api.http.post("/v1/projects/acme/imports", json={"dataset_id": "flights",
                      "path": str(folder / "a.csv")})  # fmt: skip
    assert (r.status_code, r.json()["error_code"]) == (403, "CONNECTION_REQUIRED")
    files_root = Path(server.settings.files_url.removeprefix("file://"))
    (files_root / "exports" / "acme" / "in").mkdir(parents=True)
    (files_root / "exports" / "acme" / "in" / "b.csv").write_text(csv_text(data[30:]))
    t = start_import(api, dataset_id="flights", key="in/b.csv", null_values=[NULL])
    assert api.wait("acme", t["task_id"])["status"] == "COMPLETED"
    assert table_rows(pg_target_url) == Counter(data)
