"""Retention (`EXPORTD_RETENTION_DAYS`): the janitor deletes finished tasks that ended
long ago and whose files are gone, with their partitions and files records; a task whose
files are still there, a recent one and an unfinished one stay."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tests.integration.test_links_expiry import finished, setup


def test_retention_deletes_old_finished_tasks_only(
    sqlite_source: str, store_url: str, live_server: Any
) -> None:
    server = live_server(store_url=store_url, retention_days=1.0)
    _, api = setup(server, sqlite_source)
    old, old_with_files, recent = (finished(api, expires_in=3600) for _ in range(3))
    engine = server.app.state.runtime.store.engine
    long_ago = datetime.now(UTC) - timedelta(days=2)
    with engine.begin() as conn:  # time passes for two of them; one has its files expire
        conn.execute(
            sa.text("UPDATE tasks SET end_time = :t WHERE task_id IN (:a, :b)"),
            {"t": long_ago, "a": old["task_id"], "b": old_with_files["task_id"]},
        )
        conn.execute(
            sa.text("UPDATE tasks SET file_expires_at = :t WHERE task_id = :a"),
            {"t": long_ago, "a": old["task_id"]},
        )

    deadline = time.monotonic() + 60
    while api.http.get(f"/v1/projects/p/exports/{old['task_id']}").status_code != 404:
        assert time.monotonic() < deadline, "the old task was not retired"
        time.sleep(0.2)
    with engine.connect() as conn:
        for table in ("partitions", "files", "notifications"):
            left = conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE task_id = :a"), {"a": old["task_id"]}
            ).scalar()
            assert left == 0, table
    kept = api.task("p", old_with_files["task_id"])  # its files are still downloadable
    assert kept["status"] == "COMPLETED" and kept["file_status"] == "GENERATED"
    assert (
        api.http.get(f"/v1/projects/p/exports/{old_with_files['task_id']}/download").status_code
        == 200
    )
    assert api.task("p", recent["task_id"])["status"] == "COMPLETED"
    listed = api.http.get("/v1/projects/p/exports").json()
    ids = {t["task_id"] for t in listed["export_tasks"]}
    assert ids == {old_with_files["task_id"], recent["task_id"]} and listed["count"] == 2
