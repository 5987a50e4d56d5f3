"""Protection of the source (docs/consistency.md): a dataset's `max_connections` holds
across every worker (8 of them, an 8-partition export: never more than 2 backends on the
source, counted from pg_stat_activity while it runs; the status says the partitions wait
for a source connection), its statement timeout stops a read, and the status shows the
age of the oldest transaction the export holds."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import PG_ADMIN_URL, drop_database, pg_url

ROWS = 20_000


@pytest.fixture
def source_db() -> Iterator[tuple[str, str]]:
    name = f"exportd_prot_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id integer PRIMARY KEY, amount bigint NOT NULL)")
        conn.execute(f"INSERT INTO accounts SELECT i, i FROM generate_series(1, {ROWS}) i")
        conn.execute("ANALYZE accounts")
    yield name, url
    drop_database(name)


class Backends:
    """Counts the backends connected to a database, every 10 ms, from another one."""

    def __init__(self, database: str) -> None:
        self.database, self.most, self.samples = database, 0, 0
        self.at_most: list[Any] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            while not self.stop.wait(0.01):
                found = conn.execute(
                    "SELECT application_name, state, left(query, 60) FROM pg_stat_activity"
                    " WHERE datname = %s",
                    (self.database,),
                ).fetchall()
                if len(found) > self.most:
                    self.most, self.at_most = len(found), found
                self.samples += 1

    def __enter__(self) -> Backends:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_max_connections_holds_across_eight_workers(
    source_db: tuple[str, str], pg_database: str, live_server: Any
) -> None:
    name, url = source_db
    server = live_server(store_url=pg_database, workers=8, debug_pause_before_commit=0.2)
    admin = server.client()
    admin.project("p")
    ds = admin.dataset("p", name="accounts", url=url, table="accounts", key="id", max_connections=2)
    assert ds["max_connections"] == 2
    seen: list[dict[str, Any]] = []
    with Backends(name) as backends:
        for fmt in ("csv", "parquet"):
            task = admin.export("p", dataset_id="accounts", format=fmt, parallelism=8)

            def note(t: dict[str, Any]) -> bool:
                seen.append(t["consistency"] or {})
                return bool(t["is_terminal"])

            done = admin.wait("p", task["task_id"], until=note)
            assert done["status"] == "COMPLETED", done
            assert done["finished_count"] == ROWS and len(done["partitions"]) == 8
        # two exports at once: a second holder would leave no connection for a partition
        both = [admin.export("p", dataset_id="accounts", parallelism=8) for _ in range(2)]
        ends = [admin.wait("p", t["task_id"]) for t in both]
        assert [e["status"] for e in ends] == ["COMPLETED", "COMPLETED"], ends
        assert all(e["finished_count"] == ROWS for e in ends)
        delivered = sorted(e["consistency"]["delivered"] for e in ends)
        assert delivered == ["per_partition", "snapshot"], [e["consistency"] for e in ends]
    assert backends.samples > 20
    assert 0 < backends.most <= 2, backends.at_most
    assert any(c.get("waiting_for_source") for c in seen)
    ages = [
        c["oldest_transaction_age_seconds"] for c in seen if c.get("oldest_transaction_age_seconds")
    ]
    assert ages and max(ages) > 0


def test_statement_timeout_stops_a_read(
    source_db: tuple[str, str], pg_database: str, live_server: Any
) -> None:
    _name, url = source_db
    server = live_server(store_url=pg_database, workers=1, max_attempts=1)
    admin = server.client()
    admin.project("p")
    query = "SELECT id, (CASE WHEN id = 5000 THEN pg_sleep(3) END)::text AS slept FROM accounts"
    ds = admin.dataset(
        "p", name="slow", url=url, query=query, key="id", statement_timeout_seconds=1
    )
    assert ds["statement_timeout_seconds"] == 1
    for fmt in ("csv", "jsonl"):  # the COPY fast path and the generic path
        task = admin.export("p", dataset_id="slow", format=fmt, parallelism=1)
        done = admin.wait("p", task["task_id"])
        assert done["status"] == "FAILED", done
        msgs = [p["error_msg"] or "" for p in done["partitions"]]
        assert any("statement timeout" in m for m in msgs), msgs


def test_protection_fields_are_for_databases(live_server: Any, tmp_path: Any) -> None:
    server = live_server(workers=0)
    admin = server.client()
    admin.project("p")
    r = admin.http.post(
        "/v1/projects/p/datasets",
        json={"name": "f", "kind": "files", "path": str(tmp_path / "*.csv"), "max_connections": 2},
    )
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_DATASET", r.text
    r = admin.http.post(
        "/v1/projects/p/datasets",
        json={"name": "f", "url": "sqlite:///x.db", "table": "t", "max_connections": 0},
    )
    assert r.status_code in (400, 422), r.text


def test_mariadb_says_per_partition_and_times_out(live_server: Any) -> None:
    """MariaDB cannot share a snapshot between connections: the export delivers
    per_partition and says so; its statement timeout stops a read (max_statement_time)."""
    import pymysql

    name = f"exportd_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"CREATE TABLE {name}.t (id INT PRIMARY KEY, v INT)")
        cur.executemany(f"INSERT INTO {name}.t VALUES (%s, %s)", [(i, i) for i in range(1, 2001)])
    url = f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    try:
        server = live_server(workers=2, max_attempts=1)
        admin = server.client()
        admin.project("p")
        admin.dataset("p", name="t", url=url, table="t", key="id")
        slow = "SELECT id, IF(id = 1500, SLEEP(3), 0) AS slept FROM t"
        admin.dataset("p", name="slow", url=url, query=slow, key="id", statement_timeout_seconds=1)
        task = admin.export("p", dataset_id="t", parallelism=2, consistency="snapshot")
        done = admin.wait("p", task["task_id"])
        assert done["status"] == "COMPLETED" and done["finished_count"] == 2000, done
        c = done["consistency"]
        assert (c["requested"], c["delivered"]) == ("snapshot", "per_partition")
        assert "cannot be shared" in c["reason"]
        task = admin.export("p", dataset_id="slow", parallelism=1)
        done = admin.wait("p", task["task_id"])
        assert done["status"] == "FAILED", done
        assert any("max_statement_time" in (p["error_msg"] or "") for p in done["partitions"])
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {name}")
        conn.close()


# ---- changing the protection after registration (PATCH) ----------------------------------


def _clients(server: Any, project_id: str) -> tuple[Any, Any]:
    """A new project: (its admin-role client, its writer client)."""
    root = server.client()
    writer = root.project(project_id)
    r = root.http.post(f"/v1/projects/{project_id}/tokens", json={"role": "admin"})
    assert r.status_code == 201, r.text
    return server.client(r.json()["token"]), server.client(writer)


def test_protection_is_changed_by_the_projects_admin_only(
    source_db: tuple[str, str], live_server: Any, tmp_path: Any
) -> None:
    _name, url = source_db
    server = live_server(workers=0)
    root = server.client()
    admin, writer = _clients(server, "p")
    other_admin, _ = _clients(server, "q")
    root.dataset("p", name="accounts", url=url, table="accounts", key="id")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("x\n1\n")
    root.dataset("p", name="files", kind="files", path=str(tmp_path / "in" / "*.csv"))
    path = "/v1/projects/p/datasets/accounts"

    def now() -> dict[str, Any]:
        r = admin.http.get(path)
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in ("max_connections", "statement_timeout_seconds")}

    r = admin.http.patch(path, json={"max_connections": 3, "statement_timeout_seconds": 30})
    assert r.status_code == 200, r.text
    assert (r.json()["max_connections"], r.json()["statement_timeout_seconds"]) == (3, 30)
    assert now() == {"max_connections": 3, "statement_timeout_seconds": 30}
    r = admin.http.patch(path, json={"statement_timeout_seconds": None})  # removed; the other kept
    assert r.status_code == 200, r.text
    assert now() == {"max_connections": 3, "statement_timeout_seconds": None}

    refused = [
        (admin, path, {"max_connections": 0}, 400),
        (admin, path, {"max_connections": 10_001}, 400),
        (admin, path, {"max_connections": "two"}, 400),
        (admin, path, {"statement_timeout_seconds": -1}, 400),
        (admin, path, {"table": "other"}, 400),  # only the protection may change
        (admin, path, {"max_connections": 1, "url": "sqlite:///x.db"}, 400),
        (admin, path, {}, 400),
        (admin, path, [1], 400),
        (admin, "/v1/projects/p/datasets/files", {"max_connections": 2}, 400),
        (admin, "/v1/projects/p/datasets/nope", {"max_connections": 2}, 404),
        (writer, path, {"max_connections": 1}, 403),
        (other_admin, path, {"max_connections": 1}, 404),  # another project's: not found
        (server.client("not-a-token"), path, {"max_connections": 1}, 401),
    ]
    for client, where, body, status in refused:
        r = client.http.patch(where, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error_code"] and r.json()["error_msg"], r.text
        assert now() == {"max_connections": 3, "statement_timeout_seconds": None}, body


def test_a_changed_protection_applies_to_the_next_claims(
    source_db: tuple[str, str], pg_database: str, live_server: Any
) -> None:
    """Registered without limits; lowered to max_connections 1 and a 1 s statement
    timeout by PATCH: the next export delivers per_partition (no connection for a holder
    beside a partition) on at most one backend, and a slow read is stopped."""
    name, url = source_db
    server = live_server(store_url=pg_database, workers=4, max_attempts=1,
                         debug_pause_before_commit=0.1)  # fmt: skip
    admin = server.client()
    admin.project("p")
    admin.dataset("p", name="accounts", url=url, table="accounts", key="id")
    query = "SELECT id, (CASE WHEN id = 5000 THEN pg_sleep(3) END)::text AS slept FROM accounts"
    admin.dataset("p", name="slow", url=url, query=query, key="id")
    r = admin.http.patch("/v1/projects/p/datasets/accounts", json={"max_connections": 1})
    assert r.status_code == 200, r.text
    with Backends(name) as backends:
        task = admin.export("p", dataset_id="accounts", format="csv", parallelism=4)
        done = admin.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED" and done["finished_count"] == ROWS, done
    assert done["consistency"]["delivered"] == "per_partition"
    assert "max_connections 1" in done["consistency"]["reason"]
    assert backends.samples > 5 and 0 < backends.most <= 1, backends.at_most
    r = admin.http.patch("/v1/projects/p/datasets/slow", json={"statement_timeout_seconds": 1})
    assert r.status_code == 200, r.text
    task = admin.export("p", dataset_id="slow", format="jsonl", parallelism=1)
    done = admin.wait("p", task["task_id"])
    assert done["status"] == "FAILED", done
    assert any("statement timeout" in (p["error_msg"] or "") for p in done["partitions"])
