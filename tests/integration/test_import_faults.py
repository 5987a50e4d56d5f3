"""Imports under faults, with exportd workers as real processes: a worker killed with
SIGKILL mid-partition, the coordinator killed inside its publish transaction, a second
publish of the same task, and cancel. On PostgreSQL and SQLite targets the table ends
holding every valid row exactly once, or (cancel) not one row and no staging table."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exportd.model.plan import ImportMode
from exportd.sources.targets import Target
from exportd.store import normalize_url
from tests.imports_support import (
    NULL,
    csv_text,
    pg_target,
    rows,
    setup,
    sqlite_target,
    start_import,
    table_rows,
    upload,
)
from tests.support import LiveServer

N = 6000


@pytest.fixture(params=["postgresql", "sqlite"])
def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_target(tmp_path / "target.db")
    url: str = request.getfixturevalue("pg_database")
    pg_target(url)
    return url


def staging_tables(url: str) -> list[str]:
    engine = sa.create_engine(normalize_url(url))
    try:
        return [n for n in sa.inspect(engine).get_table_names() if n.startswith("exportd_stage_")]
    finally:
        engine.dispose()


def server_for(live_server: Any, tmp_path: Path) -> LiveServer:
    server: LiveServer = live_server(
        store_url=f"sqlite:///{tmp_path / 'store.db'}", workers=0, lease_seconds=2.0,
        batch_size=200,
    )  # fmt: skip
    return server


def wait_until(api: Any, task_id: str, cond: Any, timeout: float = 60) -> dict[str, Any]:
    return dict(api.wait("acme", task_id, timeout=timeout, until=cond))


@dataclass(frozen=True)
class Fault:
    """One fault scenario: the first worker's fault-injection setting, the import's
    extra request fields, what to wait for, what to do then, and how the task ends (an
    import that completes holds every row once; one that does not holds none)."""

    env: dict[str, str]
    until: Callable[[dict[str, Any]], bool] | None
    act: Callable[[LiveServer, Any, dict[str, Any], subprocess.Popen[bytes]], None]
    status: str
    request: dict[str, Any] = field(default_factory=dict)


def _kill_and_replace(server: LiveServer, _api: Any, _task: Any, victim: Any) -> None:
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    server.start_worker(2)


def _kill_inside_publish(server: LiveServer, api: Any, task: Any, victim: Any) -> None:
    time.sleep(1.0)  # inside the publish transaction: the rows are in, not committed
    _kill_and_replace(server, api, task, victim)


def _cancel(_server: LiveServer, api: Any, task: dict[str, Any], _victim: Any) -> None:
    r = api.http.post(f"/v1/projects/acme/imports/{task['task_id']}/cancel")
    assert r.status_code == 202, r.text


def _nothing(*_args: Any) -> None:
    pass


FAULTS = {
    # a worker SIGKILLed mid-partition: its partition is claimed again (lost_count)
    "sigkill-worker-mid-partition": Fault(
        {"EXPORTD_DEBUG_PAUSE_IMPORT_BATCH": "0.2"},
        lambda t: t["finished_count"] > 0 and not t["is_terminal"],
        _kill_and_replace, "COMPLETED",
    ),
    # the coordinator SIGKILLed inside its publish transaction
    "sigkill-coordinator-during-publish": Fault(
        {"EXPORTD_DEBUG_PAUSE_IN_PUBLISH": "30"},
        lambda t: t["current_state"]["status_id"] == 70,
        _kill_inside_publish, "COMPLETED",
    ),
    "cancel": Fault(
        {"EXPORTD_DEBUG_PAUSE_IMPORT_BATCH": "0.3"}, lambda t: t["finished_count"] > 0,
        _cancel, "CANCELED",
    ),
    "timeout": Fault(
        {"EXPORTD_DEBUG_PAUSE_IMPORT_BATCH": "0.3"}, None, _nothing, "TIMEOUT",
        {"timeout_seconds": 2},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FAULTS))
def test_an_import_under_a_fault_holds_every_row_once_or_none(
    target_url: str, live_server: Any, tmp_path: Path, name: str
) -> None:
    fault = FAULTS[name]
    server = server_for(live_server, tmp_path)
    api = setup(server, target_url)
    data = rows(N)
    up = upload(api, "f.csv", csv_text(data).encode())
    victim = server.start_worker(2, env=fault.env)
    task = start_import(api, dataset_id="flights", upload_id=up["upload_id"],
                        null_values=[NULL], parallelism=3, **fault.request)  # fmt: skip
    if fault.until is not None:
        wait_until(api, task["task_id"], fault.until)
    fault.act(server, api, task, victim)
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == fault.status, done
    if fault.status == "COMPLETED":
        assert table_rows(target_url) == Counter(data)
        if name == "sigkill-worker-mid-partition":
            assert max(p["lost_count"] for p in done["partitions"]) >= 1, done["partitions"]
        assert staging_tables(target_url) == []
    else:
        assert table_rows(target_url) == Counter()
        deadline = time.monotonic() + 30  # the cleanup drops the staging tables after the end
        while staging_tables(target_url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert staging_tables(target_url) == []


def test_a_second_publish_of_the_same_task_does_nothing(target_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(normalize_url(target_url))
    target = Target.reflect(engine, "flights")
    target.ensure_marker()
    cols = [c.name for c in target.columns]
    stage = target.stage_name("t" * 32, 0, "tok")
    target.create_stage(stage, cols)
    data = rows(10)
    table = target.stage_table(stage, cols)
    target.load(table, [{**dict(zip(cols, r, strict=True)), "exportd_line": i}
                        for i, r in enumerate(data)])  # fmt: skip
    args = ("t" * 32, [stage], cols, ImportMode.APPEND, ("id",), 10)
    assert target.publish(*args, still_mine=lambda: True)
    assert not target.publish(*args, still_mine=lambda: True)  # the marker says: done
    lost = "u" * 32
    assert not target.publish(lost, [stage], cols, ImportMode.REPLACE, ("id",), 10, lambda: False)
    engine.dispose()
    assert sum(table_rows(target_url).values()) == 10  # once; the lost lease changed nothing
