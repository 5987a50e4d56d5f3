"""Documents over real HTTP: JSON documents in PostgreSQL (jsonb) and SQLite (JSON text)
and in JSON Lines files, with uneven nested attributes; CSV through the header pass
(stages 20-50, observed), JSON Lines as-is, conflicting shapes, arrays indexed or as
JSON, filters on dotted paths, and a worker killed during the header pass."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exportd.execution.janitor import Janitor
from exportd.execution.pool import Worker
from tests.documents_support import (
    build_pg_docs,
    build_sqlite_docs,
    make_docs,
    oracle_header,
    oracle_rows,
    pg_docs_in_order,
    read_csv,
    write_jsonl,
)
from tests.support import PG_ADMIN_URL, drop_database, pg_url

N_DOCS = 1200


@pytest.fixture(scope="session")
def docs_pg() -> Iterator[str]:
    """A PostgreSQL database with `docs` (id, doc jsonb) and `slow_doc(doc, seconds)`,
    a function that returns its document after a nap: a slow source for reading only
    (STABLE, so the planner skips it where the document is not needed)."""
    name = f"exportd_docs_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url(name)
    build_pg_docs(url, make_docs(N_DOCS))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """CREATE FUNCTION slow_doc(d jsonb, s float8) RETURNS jsonb LANGUAGE plpgsql
               STABLE AS $$ BEGIN PERFORM pg_sleep(s); RETURN d; END $$"""
        )
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def docs_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("docs") / "docs.db"
    build_sqlite_docs(path, make_docs(N_DOCS))
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def doc_deployment(request: pytest.FixtureRequest) -> tuple[str | None, str, str]:
    """(store URL, source URL, document column): SQLite both, or PostgreSQL both."""
    if request.param == "sqlite":
        return None, request.getfixturevalue("docs_sqlite"), "body"
    return request.getfixturevalue("pg_database"), request.getfixturevalue("docs_pg"), "doc"


def source_docs(url: str) -> list[Any]:
    """The documents in key order, as the source database gives them back."""
    if url.startswith("postgresql"):
        return pg_docs_in_order(url)
    return make_docs(N_DOCS)


def download(api: Any, project: str, task_id: str) -> bytes:
    r = api.http.get(f"/v1/projects/{project}/exports/{task_id}/download")
    assert r.status_code == 200, r.text
    return bytes(r.content)


def test_documents_to_csv_with_merged_header_and_to_jsonl_as_is(
    doc_deployment: tuple[str | None, str, str], live_server: Any
) -> None:
    store_url, source, column = doc_deployment
    server = live_server(store_url=store_url, workers=2)
    admin = server.client()
    token = admin.project("p")
    ds = admin.dataset(
        "p", name="docs", kind="documents", url=source, table="docs", key="id", document=column
    )
    assert ds["kind"] == "documents" and ds["document"] == column and "url" not in ds
    api = server.client(token)

    task = api.export("p", dataset_id="docs", format="csv", parallelism=3)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    docs = source_docs(source)
    header, rows = read_csv(download(api, "p", task["task_id"]))
    assert header == oracle_header(docs) == done["columns"]
    assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header)
    assert done["total_count"] == N_DOCS and done["total_is_estimate"] is False
    assert done["finished_count"] == N_DOCS
    assert [(p["status"], p["phase"]) for p in done["partitions"]] == [("DONE", "EXPORT")] * 3
    assert {"user.address.city", "tags", "meta", "rare_97.items"} <= set(header)

    task = api.export("p", dataset_id="docs", format="jsonl", parallelism=2)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    assert all(p["current_state"]["status_id"] == 90 for p in done["partitions"])
    lines = download(api, "p", task["task_id"]).decode().splitlines()
    assert [json.loads(line) for line in lines] == docs  # nesting kept, key order as stored


def _selected(doc: dict[str, Any]) -> bool:
    """The test's own reading of the filter used below."""
    city = doc.get("user", {}).get("address", {}).get("city")
    score = doc.get("score")
    tags = doc.get("tags")
    first_tag = tags[0] if isinstance(tags, list) and tags else None
    return (city == "Oslo" and doc["kind"] != "a") or (
        isinstance(score, (int, float)) and score > 100 and first_tag == "red"
    )


def test_filter_on_dotted_paths_with_indexed_arrays(
    doc_deployment: tuple[str | None, str, str], live_server: Any
) -> None:
    store_url, source, column = doc_deployment
    server = live_server(store_url=store_url, workers=2)
    admin = server.client()
    token = admin.project("p")
    admin.dataset(
        "p", name="docs", kind="documents", url=source, table="docs", key="id", document=column
    )
    api = server.client(token)
    task = api.export(
        "p",
        dataset_id="docs",
        format="csv",
        arrays="index",
        parallelism=2,
        filter=[
            {"user.address.city": {"eq": "Oslo"}, "kind": {"ne": "a"}},
            {"score": {"gt": 100}, "tags.0": {"eq": "red"}},
        ],
    )
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    docs = [d for d in source_docs(source) if _selected(d)]
    assert 20 < len(docs) < N_DOCS // 2
    header, rows = read_csv(download(api, "p", task["task_id"]))
    assert header == oracle_header(docs, "index")
    assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header, "index")
    assert "tags.0" in header and "tags" not in header


SHAPES: list[dict[str, Any]] = [
    {"id": 1, "a": 1, "tags": ["x", "y"]},
    {"id": 2, "a": {"b": 2, "c": [7]}, "tags": []},
    {"id": 3, "a": [1, {"b": 3}], "tags": "solo"},
    {"id": 4, "a.b": "dotted", "flag": False},
    {"id": 5},
]

SHAPES_JSON = """id,a,a.b,a.c,tags,a\\.b,flag
1,1,,,"[""x"",""y""]",,
2,,2,[7],[],,
3,"[1,{""b"":3}]",,,solo,,
4,,,,,dotted,false
5,,,,,,
"""

SHAPES_INDEX = """id,a,a.b,a.c.0,a.0,a.1.b,tags,tags.0,tags.1,a\\.b,flag
1,1,,,,,,x,y,,
2,,2,7,,,[],,,,
3,,,,1,3,solo,,,,
4,,,,,,,,,dotted,false
5,,,,,,,,,,
"""


@pytest.mark.parametrize(("arrays", "expected"), [("json", SHAPES_JSON), ("index", SHAPES_INDEX)])
def test_conflicting_shapes_export_without_loss(
    arrays: str, expected: str, tmp_path: Path, live_server: Any
) -> None:
    """A key that is a scalar here, an object there and an array elsewhere: the scalar
    stays in `a`, the object's keys go to `a.b`, ..., the array to `a` as JSON text or to
    `a.0`, `a.1.b`; a key holding a dot is escaped (`a\\.b`)."""
    path = tmp_path / "shapes.db"
    build_sqlite_docs(path, SHAPES)
    server = live_server(workers=2)
    admin = server.client()
    token = admin.project("p")
    admin.dataset(
        "p",
        name="shapes",
        kind="documents",
        url=f"sqlite:///{path}",
        table="docs",
        key="id",
        document="body",
    )
    api = server.client(token)
    task = api.export("p", dataset_id="shapes", format="csv", arrays=arrays, parallelism=2)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    assert download(api, "p", task["task_id"]).decode() == expected

    task = api.export("p", dataset_id="shapes", format="jsonl", parallelism=2)
    api.wait("p", task["task_id"])
    lines = download(api, "p", task["task_id"]).decode().splitlines()
    assert [json.loads(line) for line in lines] == SHAPES


def test_header_stages_are_visible_in_the_status(docs_pg: str, live_server: Any) -> None:
    """The API shows each stage of the header discovery. No worker runs in the server:
    the test steps exportd's own Worker, one unit of work at a time, and polls the status
    over HTTP while a step reads a slow source (20 ms per document)."""
    server = live_server(workers=0, batch_size=5)
    admin = server.client()
    token = admin.project("p")
    admin.dataset(
        "p", name="slow", kind="documents", url=docs_pg, key="id", document="doc",
        query="SELECT id, slow_doc(doc, 0.02) AS doc FROM docs WHERE id <= 40",
    )  # fmt: skip
    api = server.client(token)
    task_id = api.export("p", dataset_id="slow", format="csv", parallelism=2)["task_id"]
    rt = server.app.state.runtime
    worker = Worker(rt, "test", Janitor(rt))
    seen: dict[str, list[int]] = {"task": [], "p0": [], "p1": []}
    states: list[dict[str, Any]] = []

    def observe() -> dict[str, Any]:
        t = api.task("p", task_id)
        states.append(t)
        for name, stage in [("task", t["current_state"]["status_id"])] + [
            (f"p{p['index']}", p["current_state"]["status_id"]) for p in t["partitions"]
        ]:
            if not seen[name] or seen[name][-1] != stage:
                seen[name].append(stage)
        return t

    def step() -> None:
        """One unit of work in a thread, observed until it ends."""
        thread = threading.Thread(target=worker.step)
        thread.start()
        while thread.is_alive():
            observe()
            time.sleep(0.02)
        thread.join()
        observe()

    observe()
    for _ in range(7):  # plan, 2 header passes, merge, 2 exports, finish
        step()
    final = api.wait("p", task_id, timeout=10)
    assert final["status"] == "COMPLETED", final

    # 10, 70 and 80 pass within one step here (fast estimate, tiny file): seen or not
    assert [s for s in seen["task"] if s not in (10, 70, 80)] == [0, 20, 30, 60, 90]
    assert seen["task"] == sorted(seen["task"])
    assert seen["p0"] == [0, 20, 40, 50, 60, 90]  # waits for p1 (40), then for the merge
    assert seen["p1"] == [0, 20, 50, 60, 90]  # the last header pass: straight to 50
    at_20 = next(s for s in states if s["current_state"]["status_id"] == 20)
    assert at_20["total_count"] is not None and at_20["total_is_estimate"] is True
    at_30 = next(s for s in states if s["current_state"]["status_id"] == 30)
    assert at_30["total_count"] == 40 and at_30["total_is_estimate"] is False
    assert at_30["columns"] == []  # the header is not known before the merge
    docs = pg_docs_in_order(docs_pg)[:40]
    assert final["columns"] == oracle_header(docs)
    header, rows = read_csv(download(api, "p", task_id))
    assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header)


def test_jsonl_files_as_documents(tmp_path: Path, live_server: Any) -> None:
    src = tmp_path / "src"
    (src / "logs").mkdir(parents=True)
    docs = make_docs(700)
    for n, chunk in enumerate((docs[:250], docs[250:251], docs[251:])):
        write_jsonl(src / "logs" / f"part-{n}.jsonl", chunk)
    (src / "logs" / "readme.txt").write_text("not a document")
    server = live_server(workers=2, source_dirs=[str(src)])
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="logs", kind="documents", path=f"{src}/logs/*.jsonl")
    api = server.client(token)

    task = api.export("p", dataset_id="logs", format="csv", parallelism=4)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    assert len(done["partitions"]) == 4
    header, rows = read_csv(download(api, "p", task["task_id"]))
    assert header == oracle_header(docs)
    assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header)
    assert done["total_count"] == 700 and done["total_is_estimate"] is False

    task = api.export(
        "p", dataset_id="logs", format="jsonl", parallelism=3,
        filter={"user.age": {"gte": 45}, "flag": {"is_null": True}},
    )  # fmt: skip
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    got = [json.loads(line) for line in download(api, "p", task["task_id"]).decode().splitlines()]
    want = [
        d for d in docs
        if isinstance(d.get("user", {}).get("age"), int) and d["user"]["age"] >= 45 and "flag" not in d
    ]  # fmt: skip
    assert got == want and len(want) > 50

    task = api.export(
        "p", dataset_id="logs", format="csv", fields=["id", {"name": "user.name", "as": "who"}]
    )
    done = api.wait("p", task["task_id"])
    assert done["columns"] == ["id", "who"]
    assert all(p["phase"] == "EXPORT" for p in done["partitions"])
    header, rows = read_csv(download(api, "p", task["task_id"]))
    assert rows == [[str(d["id"]), d.get("user", {}).get("name", "")] for d in docs]


def test_bad_document_requests_are_400(docs_sqlite: str, tmp_path: Path, live_server: Any) -> None:
    docs_dir = str(Path(docs_sqlite.removeprefix("sqlite:///")).parent)  # the SQLite source's
    server = live_server(workers=0, source_dirs=[str(tmp_path / "allowed"), docs_dir])
    admin = server.client()
    token = admin.project("p")
    admin.dataset(
        "p", name="docs", kind="documents", url=docs_sqlite, table="docs", key="id", document="body"
    )
    admin.dataset("p", name="rows", kind="sql", url=docs_sqlite, table="docs", key="id")
    api = server.client(token)
    bad_exports = [
        ({"filter": {"user.age": {"regex": "1"}}}, "INVALID_OPERATOR"),
        ({"filter": {"user..age": {"eq": 1}}}, "INVALID_FIELD"),
        ({"filter": {"user.age": {"eq": {"x": 1}}}}, "INVALID_FILTER_VALUE"),
        ({"filter": {"user.age": {"between": [1]}}}, "INVALID_FILTER_VALUE"),
        ({"fields": ["a", "b\x00"]}, "INVALID_FIELD"),
        ({"arrays": "flat"}, "INVALID_REQUEST"),
        ({"path": "/etc/passwd"}, "INVALID_REQUEST"),
    ]
    for extra, code in bad_exports:
        r = api.http.post("/v1/projects/p/exports", json={"dataset_id": "docs", **extra})
        assert (r.status_code, r.json()["error_code"]) == (400, code), (extra, r.text)
    r = api.http.post("/v1/projects/p/exports", json={"dataset_id": "rows", "arrays": "index"})
    assert r.status_code == 400
    bad_datasets = [
        {"kind": "documents", "url": docs_sqlite, "table": "docs", "key": "id"},
        {"kind": "documents", "url": docs_sqlite, "table": "docs", "key": "id", "document": "nope"},
        {"kind": "documents", "path": "/etc/*.conf"},
        {"kind": "documents", "path": f"{tmp_path}/allowed/../x.jsonl"},
        {"kind": "documents", "path": "relative/*.jsonl"},
        {"kind": "documents", "path": f"{tmp_path}/allowed/none-*.jsonl"},
        {"kind": "documents", "path": f"{tmp_path}/allowed/x.jsonl", "url": docs_sqlite},
    ]
    for n, body in enumerate(bad_datasets):
        r = admin.http.post("/v1/projects/p/datasets", json={"name": f"bad{n}", **body})
        assert r.status_code == 400, (body, r.text)
    assert len(admin.http.get("/v1/projects/p/datasets").json()["datasets"]) == 2
    writer = server.client(token)
    r = writer.http.post(
        "/v1/projects/p/datasets",
        json={"name": "mine", "kind": "documents", "path": f"{tmp_path}/x"},
    )
    assert r.status_code == 403


def test_worker_killed_during_header_pass(docs_pg: str, pg_database: str, live_server: Any) -> None:
    """SIGKILL a worker process while it collects headers: its partition's lease expires,
    another worker collects them again, and every document is exported exactly once."""
    server = live_server(store_url=pg_database, workers=0, lease_seconds=2.0, batch_size=10)
    admin = server.client()
    token = admin.project("p")
    admin.dataset(
        "p", name="slow", kind="documents", url=docs_pg, key="id", document="doc",
        query="SELECT id, slow_doc(doc, 0.01) AS doc FROM docs WHERE id <= 300",
    )  # fmt: skip
    api = server.client(token)
    first = server.start_worker(concurrency=2)
    task_id = api.export("p", dataset_id="slow", format="csv", parallelism=2)["task_id"]

    def collecting(t: dict[str, Any]) -> bool:
        return any(
            p["status"] == "RUNNING"
            and p["current_state"]["status_id"] == 20
            and p["phase"] == "HEADERS"
            for p in t["partitions"]
        )

    api.wait("p", task_id, timeout=60, until=collecting)
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = api.task("p", task_id)
    assert killed["current_state"]["status_id"] == 20
    assert all(p["status"] in ("RUNNING", "PENDING", "WAITING") for p in killed["partitions"])

    server.start_worker(concurrency=2)
    reclaimed = api.wait(
        "p", task_id, timeout=60,
        until=lambda t: t["is_terminal"] or any(
            p["error_code"] == "LEASE_EXPIRED" and p["phase"] == "HEADERS" for p in t["partitions"]
        ),
    )  # fmt: skip
    assert not reclaimed["is_terminal"], "no partition was seen reclaimed"
    done = api.wait("p", task_id, timeout=120)
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])

    docs = pg_docs_in_order(docs_pg)[:300]
    header, rows = read_csv(download(api, "p", task_id))
    assert header == oracle_header(docs)
    assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header)
    ids = Counter(r[header.index("id")] for r in rows)
    assert len(ids) == 300 and set(ids.values()) == {1}
    parts_dir = server.settings.data_dir / "files" / "parts" / task_id
    assert not parts_dir.exists() or not any(parts_dir.iterdir())


@pytest.mark.parametrize("allow_partial", [False, True])
def test_header_pass_failure_follows_the_partial_success_rule(
    allow_partial: bool, tmp_path: Path, live_server: Any
) -> None:
    """A document that is not JSON: without partial success it fails its partition's
    header pass (after its retries) and the task; with it, that document is one failed
    item (its key and the reason) and every other document is exported."""
    docs = make_docs(100)
    path = tmp_path / "broken.db"
    build_sqlite_docs(path, docs)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE docs SET body = '{not json' WHERE id = 90")
    server = live_server(workers=2, max_attempts=2)
    admin = server.client()
    token = admin.project("p")
    admin.dataset(
        "p",
        name="d",
        kind="documents",
        url=f"sqlite:///{path}",
        table="docs",
        key="id",
        document="body",
    )
    api = server.client(token)
    task = api.export(
        "p", dataset_id="d", parallelism=2, allow_partial=allow_partial, max_error_rate=0.5
    )
    done = api.wait("p", task["task_id"])
    [failed] = done["failed_items"]
    assert failed["partition"] == 1 and failed["error_code"] == "INVALID_DOCUMENT"
    assert "key 90" in failed["error_msg"]
    if not allow_partial:
        assert (done["status"], done["error_code"], done["files"]) == (
            "FAILED",
            "PARTITIONS_FAILED",
            [],
        )
        assert [p["status"] for p in done["partitions"]] == ["CANCELED", "FAILED"]
        return
    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert failed["key"] == "document of key 90" and done["failed_count"] == 1
    kept = [d for d in docs if d["id"] != 90]
    header, rows = read_csv(download(api, "p", task["task_id"]))
    assert header == oracle_header(kept)
    assert Counter(tuple(r) for r in rows) == oracle_rows(kept, header)
    assert [p["status"] for p in done["partitions"]] == ["DONE", "DONE"]
    assert done["finished_count"] == 99 and done["success_rate"] == 99.0


def test_jsonl_to_csv_through_arrow_is_identical_to_the_python_path(
    tmp_path: Path, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON Lines -> CSV/TSV with the merged header: the Arrow path (header pass renders,
    export joins) and the Python path (fast paths off) give the same bytes, for clean
    files, files Arrow must leave to Python (conflicting types, `{}` where an object is
    elsewhere, arrays of objects), and a split layout (which always takes Python)."""
    src = tmp_path / "src"
    (src / "logs").mkdir(parents=True)
    clean = [{k: v for k, v in d.items() if k not in ("meta",) and not k.startswith("rare")}
             for d in make_docs(900)]  # fmt: skip
    clean += [{"id": 901, "late": {"minutes": 91.0, "band": "=x"}, "tags": ["a,b", 'q"']}]
    write_jsonl(src / "logs" / "a-clean.jsonl", clean)
    write_jsonl(src / "logs" / "b-tricky.jsonl", [*make_docs(300), {"id": "x"}, {"kind": 5}])
    write_jsonl(src / "logs" / "c-clean.jsonl", clean[:50])
    requests: list[dict[str, Any]] = [
        {"format": "csv", "parallelism": 5},
        {
            "format": "tsv",
            "parallelism": 2,
            "format_options": {"null": "NULL", "line_ending": "crlf"},
        },
        {"format": "csv", "parallelism": 3, "compression": "gzip"},
        {"format": "csv", "parallelism": 2, "max_rows_per_file": 400},
    ]
    import exportd.execution.export.passes

    cached: list[int] = []  # the export passes that joined cells rendered by Arrow
    real = exportd.execution.export.passes.cached_csv
    monkeypatch.setattr(
        exportd.execution.export.passes, "cached_csv", lambda *a: cached.append(1) or real(*a)
    )
    outputs: dict[bool, list[tuple[Any, ...]]] = {}
    for fast in (True, False):
        server = live_server(workers=2, source_dirs=[str(src)], fast_paths=fast)
        admin = server.client()
        token = admin.project("p")
        admin.dataset("p", name="logs", kind="documents", path=f"{src}/logs/*.jsonl")
        api = server.client(token)
        outputs[fast] = []
        for body in requests:
            task = api.export("p", dataset_id="logs", **body)
            done = api.wait("p", task["task_id"])
            assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
            files = [
                api.http.get(
                    f"/v1/projects/p/exports/{task['task_id']}/download", params={"name": f["name"]}
                ).content
                for f in done["files"]
                if f["kind"] == "data"
            ]
            outputs[fast].append((done["columns"], done["finished_count"], files))
        assert len(cached) == (5 + 2 + 3 if fast else 0)  # not with a split layout
        cached.clear()
    assert outputs[True] == outputs[False]
    docs = clean + make_docs(300) + [{"id": "x"}, {"kind": 5}] + clean[:50]
    columns, count, [body] = outputs[True][0]
    assert columns == oracle_header(docs) and count == len(docs)
    header, rows = read_csv(body)
    assert Counter(tuple(r) for r in rows) == oracle_rows(docs, header)
