"""A hostile caller over real HTTP: roles, project isolation, injection, secrets, and
oversized or absurd requests. Every refusal is a 4xx with the error body, and nothing
changes behind it."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from exportd.store.engine import normalize_url
from tests.api_support import SMALL_ROWS, Project, make_project, small_sqlite_source
from tests.support import LiveServer, free_port

Call = tuple[str, str, dict[str, Any]]  # method, path, httpx keyword arguments


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    return small_sqlite_source(tmp_path_factory.mktemp("security"))


def is_error(r: httpx.Response, status: int, code: str | None = None) -> bool:
    body = r.json()
    assert set(body) == {"error_code", "error_msg"}, r.text
    assert r.status_code == status, r.text
    return code is None or body["error_code"] == code


class Objects:
    """Fresh objects of project `a` for calls that use one up (cancel, delete)."""

    def __init__(self, p: Project, source: str) -> None:
        self.p, self.source = p, source
        self.task = p["writer"].export("a", dataset_id="flights")["task_id"]
        self.ds = p.dataset["dataset_id"]

    def fresh_task(self) -> str:
        return str(self.p["writer"].export("a", dataset_id="flights")["task_id"])

    def ended_task(self) -> str:
        task = self.fresh_task()
        self.p["writer"].http.post(f"/v1/projects/a/exports/{task}/cancel")
        return task

    def fresh_connection(self) -> str:
        name = "c" + uuid.uuid4().hex[:8]
        r = self.p["root"].http.post(
            "/v1/connections", json={"name": name, "url": self.source, "projects": ["a"]}
        )
        assert r.status_code == 201, r.text
        return name

    def fresh_dataset(self) -> str:
        name = "d" + uuid.uuid4().hex[:8]
        ds = self.p["root"].dataset("a", name=name, url=self.source, table="flights", key="id")
        return str(ds["dataset_id"])


def endpoints(o: Objects) -> list[tuple[str, str, Callable[[], Call]]]:
    """Every endpoint: (name, least role, a call of it on project a's objects)."""
    t, ds, exp = o.task, o.ds, "/v1/projects/a/exports"
    ws = {"headers": {"workspace": "w"}}
    return [
        ("create project", "root", lambda: ("POST", "/v1/projects",
                                            {"json": {"project_id": "p" + uuid.uuid4().hex[:8]}})),
        ("create token", "admin", lambda: ("POST", "/v1/projects/a/tokens", {"json": {"role": "reader"}})),
        ("get settings", "admin", lambda: ("GET", "/v1/projects/a/settings", {})),
        ("put settings", "admin", lambda: ("PUT", "/v1/projects/a/settings", {"json": {"notify": {}}})),
        ("webhook secret", "admin", lambda: ("POST", "/v1/projects/a/webhook-secret", {})),
        ("register dataset", "admin", lambda: ("POST", "/v1/projects/a/datasets", {"json": {
            "name": "n" + uuid.uuid4().hex[:8], "connection": "src-a", "table": "flights",
            "key": "id"}})),
        ("granted connections", "admin", lambda: ("GET", "/v1/projects/a/connections", {})),
        ("create connection", "root", lambda: ("POST", "/v1/connections", {"json": {
            "name": "c" + uuid.uuid4().hex[:8], "url": o.source, "projects": ["a"]}})),
        ("replace connection", "root", lambda: ("PUT", "/v1/connections/src-a", {"json": {
            "url": o.source, "projects": ["a"]}})),
        ("list connections", "root", lambda: ("GET", "/v1/connections", {})),
        ("get connection", "root", lambda: ("GET", "/v1/connections/src-a", {})),
        ("delete connection", "root", lambda: ("DELETE", f"/v1/connections/{o.fresh_connection()}", {})),
        ("list datasets", "reader", lambda: ("GET", "/v1/projects/a/datasets", {})),
        ("describe dataset", "reader", lambda: ("GET", f"/v1/projects/a/datasets/{ds}", {})),
        ("delete dataset", "admin", lambda: ("DELETE", f"/v1/projects/a/datasets/{o.fresh_dataset()}", {})),
        ("create export", "writer", lambda: ("POST", exp, {"json": {"dataset_id": "flights"}})),
        ("list exports", "reader", lambda: ("GET", exp, {})),
        ("get export", "reader", lambda: ("GET", f"{exp}/{t}", {})),
        ("cancel export", "writer", lambda: ("POST", f"{exp}/{o.fresh_task()}/cancel", {})),
        ("delete export", "writer", lambda: ("DELETE", f"{exp}/{o.ended_task()}", {})),
        ("download", "reader", lambda: ("GET", f"{exp}/{t}/download", {})),
        ("manifest", "reader", lambda: ("GET", f"{exp}/{t}/manifest", {})),
        ("events", "reader", lambda: ("GET", f"{exp}/{o.ended_task()}/events", {})),
        ("seed 004", "reader", lambda: ("GET", "/v2/a/export-tasks", {})),
        ("seed 003", "reader", lambda: ("GET", f"/v2/a/datasets/{ds}/export-tasks/{t}", {})),
        ("seed 001", "reader", lambda: ("GET", f"/v2/a/quality/resource/status/{t}", ws)),
    ]  # fmt: skip


ROLES = ["reader", "writer", "admin", "root"]


def test_every_endpoint_enforces_roles_and_project_isolation(source: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=0)
    a = make_project(server, "a", source)
    b = make_project(server, "b", source)
    objects = Objects(a, source)
    for name, least, make in endpoints(objects):
        for role in ROLES:
            method, path, kwargs = make()
            r = a[role].http.request(method, path, **kwargs)
            if ROLES.index(role) < ROLES.index(least):
                assert is_error(r, 403, "FORBIDDEN"), (name, role)
            else:
                assert r.status_code not in (401, 403, 404), (name, role, r.text)
        if path.startswith("/v1/projects/a") or path.startswith("/v2/a"):
            for role in ("reader", "writer", "admin"):  # project b's tokens: a is unknown
                method, path, kwargs = make()
                r = b[role].http.request(method, path, **kwargs)
                assert r.status_code == 404, (name, role, r.text)
                assert r.json() == {
                    "error_code": "PROJECT_NOT_FOUND",
                    "error_msg": "project 'a' not found",
                }, name
        anonymous = httpx.request(method, server.url + path, **kwargs)
        assert is_error(anonymous, 401, "UNAUTHORIZED"), name
        bogus = httpx.request(method, server.url + path, headers={"X-Auth-Token": "ext_nope"})
        assert is_error(bogus, 401, "UNAUTHORIZED"), name


def test_a_reader_cannot_create_or_cancel(source: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "a", source)
    task = p["writer"].export("a", dataset_id="flights")
    r = p["reader"].http.post("/v1/projects/a/exports", json={"dataset_id": "flights"})
    assert is_error(r, 403, "FORBIDDEN")
    r = p["reader"].http.post(f"/v1/projects/a/exports/{task['task_id']}/cancel")
    assert is_error(r, 403, "FORBIDDEN")
    assert p["reader"].http.get("/v1/projects/a/exports").json()["count"] == 1
    assert p["reader"].task("a", task["task_id"])["status"] == "PENDING"


# ---- injection -------------------------------------------------------------------------------

SQL = "x' OR '1'='1' --"
HOSTILE = [SQL, "'; DROP TABLE tasks; --", "../../etc/passwd", "%", "_", "\\", "a" * 255]


def _store_counts(server: LiveServer) -> dict[str, int]:
    engine = sa.create_engine(normalize_url(server.settings.store_url))
    with engine.connect() as conn:
        tables = ("projects", "tokens", "datasets", "tasks", "partitions", "files")
        counts = {
            t: int(conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in tables
        }
    engine.dispose()
    return counts


def test_hostile_list_filters_are_data_or_refused(source: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "a", source)
    for name in ("a_b.csv", "axb.csv", "a+b.csv"):
        p["writer"].export("a", dataset_id="flights", file_name=name)
    before = _store_counts(server)
    api = p["reader"].http

    def names(**params: Any) -> set[str]:
        r = api.get("/v1/projects/a/exports", params=params)
        assert r.status_code == 200, r.text
        return {t["file_name"] for t in r.json()["export_tasks"]}

    for value in HOSTILE:
        for param in ("file_name", "file_name_prefix", "task_id", "dataset_id"):
            assert names(**{param: value[:64]}) == set(), (param, value)
        r = api.get("/v2/a/export-tasks", params={"file_name": value, "task_id": value[:64]})
        assert r.status_code == 200 and r.json()["count"] == 0
    assert names(file_name_prefix="a_") == {"a_b.csv"}
    assert names(file_name_prefix="a%") == set()
    assert names(file_name="axb.csv") == {"axb.csv"}
    for params in (
        {"sort_field": "file_name; DROP TABLE tasks"},
        {"sort_field": "url"},
        {"sort_type": "desc, (SELECT 1)", "sort_field": "file_name"},
        {"status": SQL},
        {"file_name": "a" * 256},
        {"task_id": "t" * 65},
        {"file_name": "a\x00b"},
        {"created_from": SQL},
        {"is_download": SQL},
    ):
        r = api.get("/v1/projects/a/exports", params=params)
        assert is_error(r, 400), params
        if "created_from" not in params:  # the others are seed 004's parameters too
            r = api.get("/v2/a/export-tasks", params=params)
            assert r.status_code == 400 and set(r.json()) == {"error_code", "error_msg"}
    assert _store_counts(server) == before


def test_hostile_paths_and_file_names_are_refused(source: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=1)
    p = make_project(server, "a", source)
    done = p["writer"].export("a", dataset_id="flights", filter={"id": {"lt": 10}})
    p["writer"].wait("a", done["task_id"])
    before = _store_counts(server)
    api = p["writer"].http
    for name in ("../../etc/passwd", "a/b.csv", "a\\b.csv", "..", ".hidden", "a\x00.csv",
                 "manifest.json", "a" * 256, " lead.csv", "x\n.csv"):  # fmt: skip
        r = api.post("/v1/projects/a/exports", json={"dataset_id": "flights", "file_name": name})
        assert is_error(r, 400), name
    for path in (
        "/v1/projects/a/exports/..%2F..%2Fadmin_token",
        "/v1/projects/a/exports/%2e%2e",
        "/v1/projects/a/datasets/..%2Fflights",
        "/v2/a/quality/resource/status/..%2F..",
    ):
        r = api.get(path, headers={"workspace": "w"})
        assert r.status_code == 404 and set(r.json()) == {"error_code", "error_msg"}, path
    for path in (
        "/v1/projects/a/exports/a%00b",
        "/v1/projects/a%00/exports",
        f"/v1/projects/a/exports/{'t' * 65}",
    ):
        assert is_error(api.get(path), 400), path
    dl = f"/v1/projects/a/exports/{done['task_id']}/download"
    for name in ("../../../admin_token", "../manifest.json/..", "/etc/passwd", "exportd.db"):
        r = api.get(dl, params={"name": name})
        assert is_error(r, 404, "FILE_NOT_FOUND"), name
    assert _store_counts(server) == before


def test_hostile_export_requests_are_refused_or_data(source: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=1)
    p = make_project(server, "a", source)
    api = p["writer"].http
    before = _store_counts(server)
    refused = [
        {"filter": {"id; DROP TABLE flights": {"eq": 1}}},
        {"filter": {"carrier": {"eq); DROP TABLE flights; --": 1}}},
        {"filter": {"carrier": {"eq": "a\x00b"}}},
        {"filter": [{"carrier": {"in": ["x"] * 10_001}}]},
        {"fields": ["id", "carrier FROM flights; --"]},
        {"fields": ["id", {"name": "id", "as": "a\x00"}]},
        {"format": "csv'; --"},
        {"dataset_id": "flights' OR '1'='1"},
        {"parallelism": 1000},
        {"parallelism": 10**9},
        {"timeout_seconds": -1},
        {"unknown_field": 1},
    ]
    for extra in refused:
        r = api.post("/v1/projects/a/exports", json={"dataset_id": "flights", **extra})
        assert is_error(r, 400), (extra, r.text)
    r = api.post(
        "/v1/projects/a/exports",
        json={"dataset_id": "flights"},
        headers={"Idempotency-Key": "k" * 256},
    )
    assert is_error(r, 400)
    assert _store_counts(server) == before

    as_data = p["writer"].export(
        "a",
        dataset_id="flights",
        filter=[{"carrier": {"eq": SQL}}, {"note": {"like": "%' OR 1=1 --"}}],
        fields=["id", {"name": "carrier", "as": "c'; DROP TABLE t; --"}],
    )
    done = p["writer"].wait("a", as_data["task_id"])
    assert done["status"] == "COMPLETED" and done["finished_count"] == 0, done
    body = api.get(f"/v1/projects/a/exports/{done['task_id']}/download").text
    assert body.splitlines() == ["id,c'; DROP TABLE t; --"]
    with sqlite3.connect(source.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT count(*) FROM flights").fetchone()[0] == SMALL_ROWS


# ---- oversized and absurd ----------------------------------------------------------------------


def test_oversized_and_absurd_requests_get_4xx(source: str, live_server: Any) -> None:
    server: LiveServer = live_server(workers=0, max_body_bytes=64 * 1024)
    p = make_project(server, "a", source)
    api = p["writer"].http
    before = _store_counts(server)
    big = {"dataset_id": "flights", "filter": {"carrier": {"in": ["x" * 100] * 1000}}}
    r = api.post("/v1/projects/a/exports", json=big)
    assert is_error(r, 413, "PAYLOAD_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the guard counts what arrives
        yield b'{"dataset_id": "flights", "file_name": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    r = api.post(
        "/v1/projects/a/exports", content=chunks(), headers={"content-type": "application/json"}
    )
    assert is_error(r, 413, "PAYLOAD_TOO_LARGE")
    r = api.post(
        "/v1/projects/a/tokens", content=b"{" * 60_000, headers={"content-type": "application/json"}
    )
    assert is_error(r, 400)
    r = api.post(
        "/v1/projects/a/exports",
        content=b"[" * 60_000 + b"]" * 60_000,
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (400, 413) and set(r.json()) == {"error_code", "error_msg"}
    r = api.post(
        "/v1/projects/a/exports", content=b"not json", headers={"content-type": "application/json"}
    )
    assert is_error(r, 400)
    for params in ({"limit": 101}, {"limit": 10**12}, {"offset": 10**12}, {"offset": -1},
                   {"status": ["PENDING"] * 21}):  # fmt: skip
        assert is_error(api.get("/v1/projects/a/exports", params=params), 400), params
    r = api.get("/v1/projects/a/exports", params={"file_name": "x" * 20_000})
    assert 400 <= r.status_code < 500
    assert _store_counts(server) == before


# ---- secrets ----------------------------------------------------------------------------------

SECRET = "hunter2-not-for-your-eyes"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


VERBOSE = {"": logging.DEBUG, "exportd": logging.DEBUG, "sqlalchemy.engine": logging.INFO,
           "uvicorn": logging.DEBUG, "uvicorn.access": logging.INFO, "alembic": logging.INFO}  # fmt: skip


@pytest.fixture
def all_logs() -> Iterator[Capture]:
    """Every log line of the process, as verbose as an operator can make it: exportd at
    DEBUG, every SQL statement (SQLAlchemy's echo), uvicorn's access log."""
    handler = Capture()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    levels = {name: logging.getLogger(name).level for name in VERBOSE}
    for name, level in VERBOSE.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_secrets_appear_in_no_response_and_no_log_line(
    pg_source: str, live_server: Any, all_logs: Capture
) -> None:
    seen: list[httpx.Response] = []

    def keep(r: httpx.Response) -> None:
        r.read()
        seen.append(r)

    server: LiveServer = live_server(workers=2)
    user, rest = pg_source.removeprefix("postgresql://").split("@", 1)
    url = f"postgresql://{user}:{SECRET}@{rest}"
    root = server.client()
    root.http.event_hooks["response"].append(keep)
    first_secret = root.http.post("/v1/projects", json={"project_id": "a"}).json()["webhook_secret"]
    webhook_secret = root.http.post("/v1/projects/a/webhook-secret").json()["webhook_secret"]
    assert root.http.get("/v1/projects/a/settings").json()["webhook_secret_set"] is True
    token = root.http.post("/v1/projects/a/tokens", json={"role": "writer"}).json()["token"]
    ds = root.dataset("a", name="flights", url=url, table="flights", key="id")
    for bad in (
        {"url": f"postgresql://{user}:{SECRET}@127.0.0.1:1/nowhere"},
        {"url": f"postgresql://{user}:{SECRET}@[bad"},
        {"url": f"nosuchdriver://{user}:{SECRET}@host/db"},
        {"url": url, "table": "no_such_table"},
    ):
        r = root.http.post(
            "/v1/projects/a/datasets", json={"name": "bad", "table": "flights", "key": "id", **bad}
        )
        unreachable = r.status_code == 503 and r.json()["error_code"] == "SOURCE_UNAVAILABLE"
        assert 400 <= r.status_code < 500 or unreachable, r.text
    api = server.client(token)
    api.http.event_hooks["response"].append(keep)
    hook = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: delivery fails, is logged
    task = api.export(
        "a",
        dataset_id="flights",
        filter={"id": {"lte": 500}},
        parallelism=2,
        notify={"webhook_url": hook},
    )
    tid = task["task_id"]
    done = api.wait(
        "a", tid, until=lambda t: t["notifications"] and t["notifications"][0]["attempts"]
    )
    assert done["status"] == "COMPLETED" and done["notifications"][0]["last_error"]
    for path in (
        "/v1/projects/a/datasets",
        f"/v1/projects/a/datasets/{ds['dataset_id']}",
        "/v1/projects/a/exports",
        f"/v1/projects/a/exports/{tid}",
        f"/v1/projects/a/exports/{tid}/manifest",
        f"/v1/projects/a/exports/{tid}/download",
        f"/v1/projects/a/exports/{tid}/events",
        "/v2/a/export-tasks?is_download=true",
        f"/v2/a/datasets/{ds['dataset_id']}/export-tasks/{tid}",
        f"/v2/a/quality/resource/status/{tid}",
        "/openapi.json",
    ):
        assert api.http.get(path, headers={"workspace": "w"}).status_code == 200, path
    assert len(seen) > 20

    def shown(secret: str) -> list[str]:
        return [str(r.request.url.path) for r in seen if secret in r.text + str(r.headers)]

    assert shown(token) == ["/v1/projects/a/tokens"]  # once, in the answer creating it
    assert shown(first_secret) == ["/v1/projects"]
    assert shown(webhook_secret) == ["/v1/projects/a/webhook-secret"]
    assert shown(SECRET) == [] and shown(server.admin_token) == []
    assert len(all_logs.lines) > 50  # the capture works: SQL, HTTP, workers
    secrets = (SECRET, token, server.admin_token, first_secret, webhook_secret)
    secrets += (webhook_secret.removeprefix("whsec_"), first_secret.removeprefix("whsec_"))
    for line in all_logs.lines:
        for secret in secrets:
            assert secret not in line, line


def test_dataset_views_never_show_the_url(source: str, live_server: Any, tmp_path: Path) -> None:
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "a", source)
    listed = p["reader"].http.get("/v1/projects/a/datasets").json()
    [ds] = listed["datasets"]
    assert "url" not in ds and source not in str(listed)
    assert [f["name"] for f in ds["fields"]][:3] == ["id", "carrier", "origin"]
    assert {f["kind"] for f in ds["fields"]} >= {"int", "str", "float"}
    assert all(isinstance(f["type"], str) for f in ds["fields"])


def test_nul_characters_get_400_on_postgresql(
    source: str, pg_database: str, live_server: Any
) -> None:
    """PostgreSQL text cannot hold a NUL: every way of sending one is a 400, never a 500."""
    server: LiveServer = live_server(store_url=pg_database, workers=0)
    p = make_project(server, "a", source)
    api = p["root"].http
    before = _store_counts(server)
    ds = {"name": "x", "url": source, "table": "flights", "key": "id"}
    bodies = [
        ("/v1/projects", {"project_id": "b\x00"}),
        ("/v1/projects/a/tokens", {"role": "reader", "name": "a\x00b"}),
        ("/v1/projects/a/datasets", {**ds, "url": source + "\x00"}),
        ("/v1/projects/a/datasets", {**ds, "table": "flig\x00hts"}),
        ("/v1/projects/a/datasets", {**ds, "table": None, "query": "SELECT 'a\x00'"}),
        ("/v1/projects/a/datasets", {**ds, "key": "i\x00d"}),
        ("/v1/projects/a/datasets", {"name": "y", "kind": "files", "path": "/tmp/a\x00"}),
        ("/v1/projects/a/exports", {"dataset_id": "fl\x00ights"}),
        ("/v1/projects/a/exports", {"dataset_id": "flights", "format": "c\x00sv"}),
        ("/v1/projects/a/exports", {"dataset_id": "flights", "file_name": "a\x00.csv"}),
        ("/v1/projects/a/exports", {"dataset_id": "flights", "fields": ["i\x00d"]}),
        ("/v1/projects/a/exports", {"dataset_id": "flights", "filter": {"carrier\x00": {"eq": 1}}}),
        ("/v1/projects/a/exports", {"dataset_id": "flights", "filter": {"carrier": {"eq\x00": 1}}}),
        (
            "/v1/projects/a/exports",
            {"dataset_id": "flights", "filter": {"carrier": {"eq": "\x00"}}},
        ),
    ]
    for path, body in bodies:
        assert is_error(api.post(path, json=body), 400), (path, body)
    for path in ("/v1/projects/a/exports/t%00", "/v1/projects/a/datasets/d%00",
                 "/v2/a/quality/resource/status/t%00", "/v1/projects/a/exports?task_id=%00"):  # fmt: skip
        assert is_error(api.get(path, headers={"workspace": "w"}), 400), path
    assert _store_counts(server) == before
