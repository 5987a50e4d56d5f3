"""The connection policy over real HTTP: which sources a project may read is the server
administrator's decision (connection profiles); SQLite files only under the source
directories; exportd's own store never, however its URL is spelled; connection failures
that say nothing about what listens where."""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa

from exportd.store.tables import datasets as datasets_table
from tests.support import PG_ADMIN_URL, PG_USER, Api, LiveServer, build_sqlite_source, free_port

PASSWORD = "Pa55-" + uuid.uuid4().hex[:12]


def project_admin(server: LiveServer, project_id: str) -> tuple[Api, Api]:
    """A new project: (its admin-role client, its writer client)."""
    root = server.client()
    writer = root.project(project_id)
    r = root.http.post(f"/v1/projects/{project_id}/tokens", json={"role": "admin"})
    assert r.status_code == 201, r.text
    return server.client(r.json()["token"]), server.client(writer)


def dataset_count(server: LiveServer, project_id: str) -> int:
    r = server.client().http.get(f"/v1/projects/{project_id}/datasets")
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


def connection_names(server: LiveServer) -> list[str]:
    r = server.client().http.get("/v1/connections")
    assert r.status_code == 200, r.text
    return [c["name"] for c in r.json()["connections"]]


def register(api: Api, project_id: str, **body: Any) -> httpx.Response:
    return api.http.post(f"/v1/projects/{project_id}/datasets", json={"name": "x", **body})


def assert_refused(r: httpx.Response, statuses: tuple[int, ...], codes: tuple[str, ...]) -> None:
    assert r.status_code in statuses, r.text
    assert set(r.json()) == {"error_code", "error_msg"}, r.text
    assert r.json()["error_code"] in codes, r.text


# ---- the store as a dataset -----------------------------------------------------------------


def sqlite_store_spellings(server: LiveServer, src: Path) -> list[str]:
    """Ways of naming the embedded store's file: relative, `..`, doubled slashes, URIs,
    another driver name, a symlink and a hard link placed in a source directory."""
    store = Path(server.settings.store_url.removeprefix("sqlite:///"))
    (src / "link.db").symlink_to(store)
    os.link(store, src / "hard.db")
    data = store.parent
    return [
        f"sqlite:///{store}",
        f"sqlite:////{store}",
        f"sqlite+pysqlite:///{store}",
        f"sqlite:///{os.path.relpath(store)}",
        f"sqlite:///{data}/../{data.name}/./{store.name}",
        f"sqlite:///file:{store}?uri=true",
        f"sqlite:///file://localhost{store}?mode=ro&uri=true",
        f"sqlite:///{store}?uri=true",
        f"sqlite:///{src}/link.db",
        f"sqlite:///{src}/hard.db",
    ]


def test_the_sqlite_store_is_refused_for_everyone(live_server: Any, tmp_path: Path) -> None:
    """A project admin registering exportd.db read every tenant's secrets; now every
    spelling is refused, for the server administrator's profiles too, and nothing is kept."""
    src = tmp_path / "src"
    src.mkdir()
    server = live_server(workers=1, source_dirs=[str(tmp_path)])  # the data dir is in it
    admin, _ = project_admin(server, "mallory")
    secret = server.client().http.post("/v1/projects/mallory/webhook-secret").json()
    root = server.client()
    for url in sqlite_store_spellings(server, src):
        query = {"query": "SELECT project_id, webhook_secret FROM projects", "key": "project_id"}
        r = register(admin, "mallory", url=url, **query)
        assert_refused(r, (403,), ("URL_NOT_ALLOWED",))
        r = register(root, "mallory", url=url, **query)
        assert_refused(r, (400, 403), ("SOURCE_NOT_ALLOWED", "INVALID_URL"))
        r = root.http.post("/v1/connections", json={"name": "c", "url": url, "projects": ["*"]})
        assert_refused(r, (400, 403), ("SOURCE_NOT_ALLOWED", "INVALID_URL"))
        assert secret["webhook_secret"] not in r.text
    assert dataset_count(server, "mallory") == 0
    assert connection_names(server) == []


@pytest.fixture
def other_role() -> Iterator[str]:
    """A second PostgreSQL login (trust auth on loopback), dropped afterwards."""
    name = f"exportd_other_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def pg_store_spellings(store_url: str, other_user: str) -> list[str]:
    """The PostgreSQL store's database by other names of its server, another user, the
    Unix socket and harmless query parameters."""
    db = sa.make_url(store_url).database
    return [
        store_url,
        f"postgresql://{PG_USER}@localhost:5432/{db}",
        f"postgresql+psycopg://{PG_USER}:{PASSWORD}@127.0.0.1/{db}",
        f"postgres://{PG_USER}@127.0.0.1:5432/{db}?application_name=report&sslmode=disable",
        f"postgresql://{other_user}@127.0.0.1:5432/{db}",
        f"postgresql://{other_user}@localhost/{db}?connect_timeout=5",
        f"postgresql:///{db}?host=/var/run/postgresql&user={PG_USER}",
    ]


def test_the_postgresql_store_is_refused_however_it_is_spelled(
    live_server: Any, pg_database: str, pg_source: str, other_role: str
) -> None:
    server = live_server(store_url=pg_database, workers=1)
    admin, _ = project_admin(server, "mallory")
    root = server.client()
    for url in pg_store_spellings(pg_database, other_role):
        table = {"table": "tokens", "key": "token_hash"}
        r = register(admin, "mallory", url=url, **table)
        assert_refused(r, (403,), ("URL_NOT_ALLOWED",))
        r = register(root, "mallory", url=url, **table)
        assert_refused(r, (403,), ("SOURCE_NOT_ALLOWED",))
        r = root.http.post("/v1/connections", json={"name": "c", "url": url, "projects": ["*"]})
        assert_refused(r, (403,), ("SOURCE_NOT_ALLOWED",))
    assert dataset_count(server, "mallory") == 0
    assert connection_names(server) == []
    # another database of the same server is a source like any other
    ok = register(root, "mallory", url=pg_source, table="flights", key="id")
    assert ok.status_code == 201, ok.text


def test_a_foreign_sqlite_file_outside_the_source_dirs_is_refused(
    live_server: Any, tmp_path: Path
) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    build_sqlite_source(allowed / "ok.db", 10)
    build_sqlite_source(outside / "foreign.db", 10)
    server = live_server(workers=1, source_dirs=[str(allowed)])
    admin, _ = project_admin(server, "p")
    root = server.client()
    (allowed / "escape.db").symlink_to(outside / "foreign.db")
    table = {"table": "flights", "key": "id"}
    for url in (
        f"sqlite:///{outside}/foreign.db",
        f"sqlite:///{allowed}/../outside/foreign.db",
        f"sqlite:///{allowed}/escape.db",
        f"sqlite:///{allowed}/missing.db",  # would be created by opening it
        "sqlite://",
        "sqlite:///:memory:",
    ):
        assert_refused(register(admin, "p", url=url, **table), (403,), ("URL_NOT_ALLOWED",))
        assert_refused(register(root, "p", url=url, **table), (403,), ("SOURCE_NOT_ALLOWED",))
        r = root.http.post("/v1/connections", json={"name": "c", "url": url, "projects": ["p"]})
        assert_refused(r, (403,), ("SOURCE_NOT_ALLOWED",))
    assert not (allowed / "missing.db").exists()
    assert dataset_count(server, "p") == 0 and connection_names(server) == []
    r = root.http.post(
        "/v1/connections",
        json={"name": "ok", "url": f"sqlite:///{allowed}/ok.db", "projects": ["p"]},
    )
    assert r.status_code == 201, r.text
    assert register(admin, "p", connection="ok", **table).status_code == 201


# ---- connection profiles and their grants ---------------------------------------------------


def test_files_datasets_of_a_project_stay_in_its_own_directory(
    live_server: Any, tmp_path: Path
) -> None:
    """The source directories are shared by all projects: a project token names a files
    connection (a directory granted to it), never a path of its own choosing."""
    src = tmp_path / "src"
    for project in ("a", "b"):
        (src / project).mkdir(parents=True)
        (src / project / "rows.csv").write_text(f"id,owner\n1,{project}\n2,{project}\n")
    server = live_server(workers=1, source_dirs=[str(src), str(tmp_path)])
    a_admin, a_writer = project_admin(server, "a")
    b_admin, _ = project_admin(server, "b")
    root = server.client()
    for project in ("a", "b"):
        r = root.http.post("/v1/connections", json={
            "name": f"files-{project}", "url": f"file://{src}/{project}", "projects": [project]})  # fmt: skip
        assert r.status_code == 201 and r.json()["backend"] == "files", r.text
    r = root.http.post("/v1/connections", json={"name": "all", "url": f"file://{tmp_path}",
                                                "projects": ["*"]})  # fmt: skip
    assert_refused(r, (403,), ("SOURCE_NOT_ALLOWED",))  # it holds exportd's data directory
    b_file = {"kind": "files", "path": f"{src}/b/rows.csv"}
    assert_refused(register(a_admin, "a", **b_file), (403,), ("CONNECTION_REQUIRED",))
    assert_refused(register(a_admin, "a", connection="files-b", **b_file), (404,),
                   ("CONNECTION_NOT_FOUND",))  # fmt: skip
    assert_refused(register(a_admin, "a", connection="files-a", **b_file), (400,),
                   ("INVALID_PATH",))  # fmt: skip
    assert dataset_count(server, "a") == 0
    ds = register(a_admin, "a", connection="files-a", kind="files", path=f"{src}/a/*.csv")
    assert ds.status_code == 201 and ds.json()["connection"] == "files-a", ds.text
    done = a_writer.wait("a", a_writer.export("a", dataset_id="x")["task_id"])
    assert done["status"] == "COMPLETED", done
    r = a_writer.http.get(f"/v1/projects/a/exports/{done['task_id']}/download")
    assert r.text.splitlines() == ["id,owner", "1,a", "2,a"]
    assert register(b_admin, "b", connection="files-b", kind="files", path=f"{src}/b/rows.csv")


def test_a_project_uses_only_the_connections_granted_to_it(
    live_server: Any, pg_source: str
) -> None:
    server = live_server(workers=1)
    a_admin, _ = project_admin(server, "a")
    b_admin, b_writer = project_admin(server, "b")
    root = server.client()
    url = pg_source.replace(f"{PG_USER}@", f"{PG_USER}:{PASSWORD}@")
    r = root.http.post("/v1/connections", json={"name": "wh", "url": url, "projects": ["a"]})
    assert r.status_code == 201, r.text
    for token_api in (a_admin, b_admin, b_writer):  # profiles are the server admin's alone
        for method, path, body in (
            ("GET", "/v1/connections", None),
            ("GET", "/v1/connections/wh", None),
            ("POST", "/v1/connections", {"name": "mine", "url": url, "projects": ["*"]}),
            ("PUT", "/v1/connections/wh", {"url": url, "projects": ["*"]}),
            ("DELETE", "/v1/connections/wh", None),
        ):
            r = token_api.http.request(method, path, json=body)
            assert_refused(r, (403,), ("FORBIDDEN",))
    assert connection_names(server) == ["wh"]
    r = root.http.put("/v1/connections/nope", json={"url": url, "projects": ["b"]})
    assert_refused(r, (404,), ("CONNECTION_NOT_FOUND",))  # PUT replaces; POST creates
    assert connection_names(server) == ["wh"]
    assert b_admin.http.get("/v1/projects/b/connections").json() == {"connections": [], "count": 0}
    assert a_admin.http.get("/v1/projects/a/connections").json() == {
        "connections": [{"name": "wh", "backend": "postgresql"}], "count": 1,
    }  # fmt: skip
    body = {"table": "flights", "key": "id"}
    not_granted = register(b_admin, "b", connection="wh", **body)
    unknown = register(b_admin, "b", connection="nope", **body)
    assert not_granted.status_code == unknown.status_code == 404, not_granted.text
    assert (
        not_granted.json()["error_code"] == unknown.json()["error_code"] == "CONNECTION_NOT_FOUND"
    )
    assert not_granted.json()["error_msg"].replace("wh", "nope") == unknown.json()["error_msg"]
    assert dataset_count(server, "b") == 0
    both = register(a_admin, "a", connection="wh", url=pg_source, **body)
    assert_refused(both, (403,), ("URL_NOT_ALLOWED",))
    ds = register(a_admin, "a", connection="wh", **body)
    assert ds.status_code == 201, ds.text
    assert ds.json()["connection"] == "wh" and ds.json()["fields"][0]["name"] == "id"


def test_a_connection_url_appears_in_no_response(live_server: Any, pg_source: str) -> None:
    seen: list[httpx.Response] = []

    def keep(r: httpx.Response) -> None:
        r.read()
        seen.append(r)

    server = live_server(workers=2)
    admin, writer = project_admin(server, "a")
    root = server.client()
    for api in (root, admin, writer):
        api.http.event_hooks["response"].append(keep)
    url = pg_source.replace(f"{PG_USER}@", f"{PG_USER}:{PASSWORD}@")
    root.http.post("/v1/connections", json={"name": "wh", "url": url, "projects": ["a"]})
    root.http.put("/v1/connections/wh", json={"url": url, "projects": ["a", "*"]})
    root.http.get("/v1/connections")
    root.http.get("/v1/connections/wh")
    admin.http.get("/v1/projects/a/connections")
    for body in (
        {"table": "no_such_table", "key": "id"},
        {"query": "SELECT nope FROM flights", "key": "id"},
        {"table": "flights", "key": "no_such_column"},
    ):
        assert register(admin, "a", connection="wh", **body).status_code == 400
    ds = admin.dataset("a", name="flights", connection="wh", table="flights", key="id")
    admin.http.get("/v1/projects/a/datasets")
    admin.http.get(f"/v1/projects/a/datasets/{ds['dataset_id']}")
    task = writer.export("a", dataset_id="flights", filter={"id": {"lte": 300}})
    assert writer.wait("a", task["task_id"])["status"] == "COMPLETED"
    writer.http.get(f"/v1/projects/a/exports/{task['task_id']}/manifest")
    assert len(seen) >= 12
    host_port = sa.make_url(pg_source).render_as_string().split("@", 1)[1].split("/", 1)[0]
    database = sa.make_url(pg_source).database
    for r in seen:
        for secret in (url, pg_source, PASSWORD, host_port, database):
            assert secret not in r.text, (str(r.request.url), r.text)


# ---- what connection errors tell ------------------------------------------------------------


@pytest.fixture
def not_postgresql() -> Iterator[int]:
    """A loopback port where something else listens: it answers HTTP and hangs up."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1])
    stop.set()
    thread.join()
    sock.close()


def test_connection_errors_do_not_tell_what_listens_where(
    live_server: Any, not_postgresql: int
) -> None:
    server = live_server(workers=1)
    admin, _ = project_admin(server, "p")
    root = server.client()
    targets = {
        "closed": f"postgresql://{PG_USER}:{PASSWORD}@127.0.0.1:{free_port()}/db",
        "http": f"postgresql://{PG_USER}:{PASSWORD}@127.0.0.1:{not_postgresql}/db",
        "nodb": f"postgresql://{PG_USER}:{PASSWORD}@127.0.0.1:5432/no_such_{uuid.uuid4().hex[:6]}",
        "mysql": f"mysql://root:{PASSWORD}@127.0.0.1:{not_postgresql}/db",
    }
    answers: list[tuple[int, dict[str, Any]]] = []
    for name, url in targets.items():
        r = root.http.post("/v1/connections", json={"name": name, "url": url, "projects": ["p"]})
        assert r.status_code == 201 and r.json()["reachable"] is False, r.text
        for api, body in ((admin, {"connection": name}), (root, {"url": url})):
            r = register(api, "p", table="t", key="id", **body)
            answers.append((r.status_code, r.json()))
            assert PASSWORD not in r.text and str(not_postgresql) not in r.text
    assert {a for a, _ in answers} == {503}
    assert len({(b["error_code"], b["error_msg"]) for _, b in answers}) == 1, answers
    assert answers[0][1]["error_code"] == "SOURCE_UNAVAILABLE"
    assert dataset_count(server, "p") == 0


# ---- end to end, and the checks at every later use ------------------------------------------


def test_an_export_through_a_connection_and_the_checks_at_use(
    live_server: Any, pg_source: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_sqlite_source(src / "lite.db", 50)
    server = live_server(workers=2, source_dirs=[str(src)], max_attempts=1)
    admin, writer = project_admin(server, "a")
    root = server.client()
    for name, url in (("wh", pg_source), ("lite", f"sqlite:///{src}/lite.db")):
        r = root.http.post("/v1/connections", json={"name": name, "url": url, "projects": ["a"]})
        assert r.status_code == 201 and r.json()["reachable"] is True, r.text
        admin.dataset("a", name=name, connection=name, table="flights", key="id")

    task = writer.export("a", dataset_id="wh", fields=["id", "carrier"],
                         filter={"id": {"lte": 1000}}, parallelism=3)  # fmt: skip
    done = writer.wait("a", task["task_id"])
    assert done["status"] == "COMPLETED" and done["finished_count"] == 1000, done
    r = writer.http.get(f"/v1/projects/a/exports/{task['task_id']}/download")
    rows = list(csv.reader(io.StringIO(r.text, newline="")))
    with psycopg.connect(pg_source) as conn:
        want = conn.execute("SELECT id, carrier FROM flights WHERE id <= 1000").fetchall()
    assert rows[0] == ["id", "carrier"]
    assert sorted(tuple(x) for x in rows[1:]) == sorted((str(i), c) for i, c in want)

    # the SQLite file swapped for a link to the store: refused when the source is opened
    store = server.settings.store_url.removeprefix("sqlite:///")
    (src / "lite.db").unlink()
    (src / "lite.db").symlink_to(store)
    failed = writer.wait("a", writer.export("a", dataset_id="lite")["task_id"])
    assert failed["status"] == "FAILED" and failed["error_code"] == "SOURCE_NOT_ALLOWED", failed

    # a dataset stored before the policy (a project admin's URL of the store): refused too
    engine = sa.create_engine(server.settings.store_url)
    with engine.begin() as conn:
        row = conn.execute(sa.select(datasets_table).where(datasets_table.c.name == "wh")).one()
        conn.execute(datasets_table.insert().values(
            {**row._mapping, "dataset_id": "ds_legacy", "name": "legacy",
             "url": server.settings.store_url, "table_name": "tokens", "key": "token_hash",
             "options": {}, "fields": [{"name": "token_hash", "kind": "str"}]}))  # fmt: skip
    engine.dispose()
    failed = writer.wait("a", writer.export("a", dataset_id="legacy")["task_id"])
    assert failed["status"] == "FAILED" and failed["error_code"] == "SOURCE_NOT_ALLOWED", failed

    # the grant withdrawn: the dataset's next export cannot use the connection
    r = root.http.put("/v1/connections/wh", json={"url": pg_source, "projects": ["other"]})
    assert r.status_code == 200, r.text
    failed = writer.wait("a", writer.export("a", dataset_id="wh")["task_id"])
    assert failed["status"] == "FAILED" and failed["error_code"] == "SOURCE_UNAVAILABLE", failed
    assert pg_source not in str(failed)
    assert root.http.delete("/v1/connections/wh").status_code == 204
    assert connection_names(server) == ["lite"]
