"""Test support: source data, a live server on a free port, worker subprocesses, and an
HTTP client for the native API. Nothing here replaces a part of exportd."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn

from exportd.api import create_app
from exportd.settings import Settings

PG_HOST = os.environ.get("EXPORTD_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("EXPORTD_TEST_PG_USER", "postgres")
PG_ADMIN_URL = f"postgresql://{PG_USER}@{PG_HOST}:5432/test"

CARRIERS = ["AA", "B6", "DL", "EV", "UA", "US", "WN", "9E", "MQ", "VX"]
AIRPORTS = ["JFK", "LGA", "EWR", "ATL", "ORD", "LAX", "SFO", "BOS", "MIA", "DEN"]
NOTES = [
    None,
    "",
    "on time",
    'said "late"',
    "a, b, c",
    "two\nlines",
    "café ☕",
    "=cmd()",
    "  pad  ",
]
EPOCH = datetime(2013, 1, 1, tzinfo=UTC)


def pg_url(database: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:5432/{database}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flight_rows(n: int) -> Iterator[tuple[Any, ...]]:
    """Deterministic flight-like rows with NULLs and text that needs quoting."""
    for i in range(1, n + 1):
        h = (i * 2654435761) % 4294967296
        delay = None if h % 37 == 0 else (h % 300) - 30
        yield (
            i,
            CARRIERS[h % len(CARRIERS)],
            AIRPORTS[h % 3],
            AIRPORTS[(h >> 4) % len(AIRPORTS)],
            delay,
            float((h % 4000) + 80) + (h % 7) / 8,
            NOTES[h % len(NOTES)] if h % 5 == 0 else None,
            EPOCH + timedelta(minutes=(h % 525600)),
        )


FLIGHT_COLUMNS = ["id", "carrier", "origin", "dest", "dep_delay", "distance", "note", "dep_time"]


def build_pg_source(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE flights (id bigint PRIMARY KEY, carrier text NOT NULL,
               origin text NOT NULL, dest text NOT NULL, dep_delay integer,
               distance double precision NOT NULL, note text, dep_time timestamptz NOT NULL)"""
        )
        with conn.cursor().copy("COPY flights FROM STDIN") as copy:
            for row in flight_rows(n):
                copy.write_row(row)
        conn.execute("ANALYZE flights")
        # nap(id, every): sleeps 20 ms for one row in `every`, for exports that must still be
        # running when a test acts. Declared STABLE so that the planner drops it from
        # subqueries that do not output it (min/max planning queries stay fast).
        conn.execute(
            """CREATE FUNCTION nap(i bigint, every integer) RETURNS integer LANGUAGE plpgsql
               STABLE AS $$ BEGIN IF i % every = 0 THEN PERFORM pg_sleep(0.02); END IF;
               RETURN 0; END $$"""
        )


def build_sqlite_source(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        """CREATE TABLE flights (id INTEGER PRIMARY KEY, carrier TEXT NOT NULL,
           origin TEXT NOT NULL, dest TEXT NOT NULL, dep_delay INTEGER,
           distance REAL NOT NULL, note TEXT, dep_time TEXT NOT NULL)"""
    )
    conn.executemany(
        "INSERT INTO flights VALUES (?,?,?,?,?,?,?,?)",
        ((*r[:7], r[7].isoformat()) for r in flight_rows(n)),
    )
    conn.commit()
    conn.close()


def s3_client(endpoint: str) -> Any:
    """A boto3 client of the test's own, to look at the bucket from outside exportd."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """exportd's app served by uvicorn on a free loopback port, in a thread of the test."""

    def __init__(self, data_dir: Path, workers: int = 2, **settings: Any) -> None:
        settings.setdefault("source_dirs", [data_dir.parent])  # SQLite sources beside it
        settings.setdefault("lease_seconds", 3.0)
        settings.setdefault("retry_base_seconds", 0.2)
        settings.setdefault("janitor_seconds", 0.5)
        settings.setdefault("poll_seconds", 0.2)
        store_url = settings.pop("store_url", None)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings.setdefault("public_url", self.url)  # links in webhooks and emails
        self.settings = Settings(
            data_dir=data_dir, database_url=store_url, workers=workers, **settings
        )
        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("exportd did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def admin_token(self) -> str:
        return str(self.app.state.runtime.admin_token)

    def env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            EXPORTD_DATA_DIR=str(s.data_dir),
            EXPORTD_LEASE_SECONDS=str(s.lease_seconds),
            EXPORTD_RETRY_BASE_SECONDS=str(s.retry_base_seconds),
            EXPORTD_JANITOR_SECONDS=str(s.janitor_seconds),
            EXPORTD_POLL_SECONDS=str(s.poll_seconds),
            EXPORTD_MAX_ATTEMPTS=str(s.max_attempts),
            EXPORTD_BATCH_SIZE=str(s.batch_size),
        )
        if s.database_url:
            env["EXPORTD_DATABASE_URL"] = s.database_url
        for name in s.model_fields_set:  # every other setting the test gave the server
            value = getattr(s, name)
            if value is not None and f"EXPORTD_{name.upper()}" not in env:
                env[f"EXPORTD_{name.upper()}"] = _env_value(value)
        return env

    def start_worker(
        self, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """An `exportd worker` process sharing this server's store and storage (plus
        `env`, e.g. a fault-injection setting for this worker only)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "exportd", "worker", "--concurrency", str(concurrency)],
            env={**self.env(), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers.append(proc)
        return proc

    def client(self, token: str | None = None) -> Api:
        return Api(self.url, token or self.admin_token)


def _env_value(value: Any) -> str:
    """A setting as its environment variable spells it: lists and mappings as JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(
            value, default=lambda v: v.model_dump() if hasattr(v, "model_dump") else str(v)
        )
    return str(value)


class Api:
    """A thin HTTP client for the tests (assertions look at raw responses)."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)

    def project(self, project_id: str) -> str:
        """Create a project and return a writer token for it."""
        r = self.http.post("/v1/projects", json={"project_id": project_id})
        assert r.status_code == 201, r.text
        r = self.http.post(f"/v1/projects/{project_id}/tokens", json={"role": "writer"})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def dataset(self, project_id: str, **body: Any) -> dict[str, Any]:
        r = self.http.post(f"/v1/projects/{project_id}/datasets", json=body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def export(self, project_id: str, **body: Any) -> dict[str, Any]:
        r = self.http.post(f"/v1/projects/{project_id}/exports", json=body)
        assert r.status_code == 202, r.text
        return dict(r.json())

    def task(self, project_id: str, task_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/projects/{project_id}/exports/{task_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(
        self, project_id: str, task_id: str, timeout: float = 120, until: Any = None
    ) -> dict[str, Any]:
        """Poll until the task is terminal (or `until(task)` holds)."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(project_id, task_id)
            if until(task) if until else task["is_terminal"]:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task did not get there in {timeout}s: {task}")
            time.sleep(0.1)


def expected_cell(value: Any) -> str:
    """How a source value reads back from exportd's CSV (the documented rendering:
    floats without a trailing `.0`, text that a spreadsheet would run prefixed with `'`)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") and abs(value) < 1e15 else text
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return str(value)
