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
    pg_url,
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


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start exportd over a real socket: `live_server(store_url=..., workers=2, **settings)`."""
    started: list[LiveServer] = []

    def start(**kwargs: object) -> LiveServer:
        server = LiveServer(tmp_path / f"data{len(started)}", **kwargs)  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()
