"""Imports end to end over real HTTP: flights-shaped data as CSV, JSON Lines and Parquet
into PostgreSQL and SQLite tables, read back equal; bad rows rejected with their lines;
modes; and bad requests refused with a 4xx that creates nothing."""

from __future__ import annotations

from collections import Counter
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
