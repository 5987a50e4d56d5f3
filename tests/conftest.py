"""Shared fixtures: real PostgreSQL databases (a fresh one per test where state matters),
SQLite files, source datasets, and exportd served over a real socket."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support import (
    PG_ADMIN_URL,
    LiveServer,
    build_pg_source,
    build_sqlite_source,
    drop_database,
    free_port,
    pg_url,
    s3_client,
)

SOURCE_ROWS = int(os.environ.get("EXPORTD_TEST_ROWS", "200000"))


def _create_database(prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    name = _create_database("exportd_t")
    yield pg_url(name)
    drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store on both backends: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = _create_database("exportd_store")
    yield pg_url(name)
    drop_database(name)


@pytest.fixture(scope="session")
def pg_source() -> Iterator[str]:
    """A PostgreSQL database holding the `flights` source table (SOURCE_ROWS rows) and a
    `slow_flights` view that sleeps now and then, for tests that need a running export."""
    name = _create_database("exportd_src")
    url = pg_url(name)
    build_pg_source(url, SOURCE_ROWS)
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("src") / "flights.db"
    build_sqlite_source(path, SOURCE_ROWS)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-speaking server (moto's server mode) on a free loopback port, with the
    AWS environment variables that exportd (and its worker processes) read."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "exportd-test")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "exportd-test-secret")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_storage_url(s3_endpoint: str) -> str:
    """A fresh, empty bucket: `s3://bucket/root?endpoint_url=...`."""
    bucket = f"exportd-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/root?endpoint_url={s3_endpoint}&region=us-east-1"


@pytest.fixture
def live_server(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LiveServer]]:
    """Start exportd over a real socket: `live_server(store_url=..., workers=2, **settings)`.
    The source directories default to the session's temporary root, where the tests'
    SQLite sources are (the server's own data directory is there too, and stays refused)."""
    started: list[LiveServer] = []

    def start(**kwargs: object) -> LiveServer:
        kwargs.setdefault("source_dirs", [tmp_path_factory.getbasetemp()])
        server = LiveServer(tmp_path / f"data{len(started)}", **kwargs)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
