"""Dataset registration: fields read from the database, clear errors, read-only sources."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.conftest import SOURCE_ROWS


@pytest.fixture
def admin(live_server: Any) -> Any:
    server = live_server(workers=1)
    api = server.client()
    api.project("acme")
    return api


def test_a_query_dataset_can_never_write(admin: Any, pg_source: str) -> None:
    with psycopg.connect(pg_source, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS audit (n int)")
        conn.execute(
            """CREATE OR REPLACE FUNCTION scribble() RETURNS int LANGUAGE sql VOLATILE AS
               $$ INSERT INTO audit VALUES (1) RETURNING n $$"""
        )
    for query, why in (
        ("SELECT f.id, scribble() AS n FROM flights f", "read-only transaction"),
        ("WITH d AS (DELETE FROM flights WHERE id < 9 RETURNING *) SELECT * FROM d", "top level"),
    ):
        r = admin.http.post(
            "/v1/projects/acme/datasets",
            json={"name": "sneaky", "url": pg_source, "key": "id", "query": query},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error_code"] == "INVALID_DATASET"
        assert why in r.json()["error_msg"]
    with psycopg.connect(pg_source) as conn:
        assert conn.execute("SELECT count(*) FROM flights").fetchone() == (SOURCE_ROWS,)
        assert conn.execute("SELECT count(*) FROM audit").fetchone() == (0,)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"table": "no_such_table", "key": "id"}, "INVALID_DATASET"),
        ({"table": "flights", "key": "no_such_column"}, "INVALID_KEY"),
        ({"table": "flights", "query": "SELECT 1", "key": "id"}, "INVALID_DATASET"),
        ({"query": "SELECT 1; DROP TABLE flights", "key": "id"}, "INVALID_QUERY"),
        ({"query": "DELETE FROM flights", "key": "id"}, "INVALID_QUERY"),
    ],
)
def test_bad_registrations(admin: Any, pg_source: str, body: dict[str, Any], code: str) -> None:
    r = admin.http.post("/v1/projects/acme/datasets", json={"name": "x", "url": pg_source, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == code
    assert pg_source not in r.text
    assert admin.http.get("/v1/projects/acme/datasets").json()["count"] == 0


def test_unreachable_database_does_not_echo_the_url(admin: Any) -> None:
    url = "postgresql://exportd:s3cret-pw@127.0.0.1:1/nowhere"
    r = admin.http.post(
        "/v1/projects/acme/datasets",
        json={"name": "x", "url": url, "table": "t", "key": "id"},
    )
    assert r.status_code == 503  # the source may come up later: not the request's fault
    assert "s3cret-pw" not in r.text and r.json()["error_code"] == "SOURCE_UNAVAILABLE"
    assert "127.0.0.1" not in r.text and "refused" not in r.text.lower()
    assert admin.http.get("/v1/projects/acme/datasets").json()["count"] == 0


def test_fields_and_kinds_are_read_from_the_table(admin: Any, pg_source: str) -> None:
    ds = admin.dataset("acme", name="flights", url=pg_source, table="public.flights", key="id")
    kinds = {f["name"]: f["kind"] for f in ds["fields"]}
    assert kinds == {
        "id": "int", "carrier": "str", "origin": "str", "dest": "str", "dep_delay": "int",
        "distance": "float", "note": "str", "dep_time": "datetime",
    }  # fmt: skip
    assert (
        admin.http.post(
            "/v1/projects/acme/datasets",
            json={"name": "flights", "url": pg_source, "table": "flights", "key": "id"},
        ).json()["error_code"]
        == "DATASET_EXISTS"
    )
