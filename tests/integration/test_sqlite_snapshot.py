"""Point-in-time exports of SQLite sources (docs/consistency.md): at plan, one consistent
copy of the database (the online backup API, in one read transaction) is made into the
snapshot directory and every partition reads it. A writer keeps moving amounts between
the accounts of a SQLite table (their total never changes) while 8-partition exports run:
with `snapshot` the exported total is the invariant every time, through the ADBC fast
path, the generic path and rowid partitions of a table without a key; the copy is gone
once the task has ended (COMPLETED, CANCELED); a worker killed mid-export still gives
every row exactly once; `per_partition` says what it is."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCOUNTS = 20_000
START = 1_000
TOTAL = ACCOUNTS * START
REPEATS = 10


def _build(path: Path, journal: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)")
    # the same rows in a table without a declared key: rowid partitions
    conn.execute("CREATE TABLE ledger (id INTEGER NOT NULL, amount INTEGER NOT NULL)")
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?)", ((i, START) for i in range(1, ACCOUNTS + 1))
    )
    conn.execute("INSERT INTO ledger SELECT id, amount FROM accounts")
    conn.commit()
    conn.close()


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "bank.db"
    _build(path, "wal")
    yield path


class Writer:
    """Moves amounts between random accounts of both tables, one committed transfer
    after another, until stopped (its own connection: another writer than exportd's
    reads, as a live application's)."""

    def __init__(self, path: Path) -> None:
        self.path, self.stop, self.moves = path, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rnd = random.Random(7)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            while not self.stop.is_set():
                a, b = rnd.randrange(1, ACCOUNTS + 1), rnd.randrange(1, ACCOUNTS + 1)
                d = rnd.randrange(1, 50)
                for table in ("accounts", "ledger"):
                    conn.execute(f"UPDATE {table} SET amount = amount - ? WHERE id = ?", (d, a))
                    conn.execute(f"UPDATE {table} SET amount = amount + ? WHERE id = ?", (d, b))
                conn.commit()
                self.moves += 1
                time.sleep(0.0005)  # a live application, not a bulk load: readers get turns
        finally:
            conn.close()

    def __enter__(self) -> Writer:
        self.thread.start()
        while self.moves < 20:  # under way before the first export
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _total(api: Any, task_id: str, fmt: str) -> tuple[int, int]:
    """(rows, sum of amounts) of the downloaded result; every account exactly once."""
    body = api.http.get(f"/v1/projects/p/exports/{task_id}/download").content
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(body))
        ids, amounts = table.column("id").to_pylist(), table.column("amount").to_pylist()
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in body.decode().splitlines()]
        ids, amounts = [r["id"] for r in rows], [r["amount"] for r in rows]
    else:
        lines = body.decode().splitlines()[1:]
        ids = [int(line.split(",")[0]) for line in lines]
        amounts = [int(line.split(",")[1]) for line in lines]
    assert sorted(ids) == list(range(1, ACCOUNTS + 1))
    return len(ids), sum(amounts)


def _setup(live_server: Any, db: Path, **settings: Any) -> tuple[Any, Any]:
    settings.setdefault("workers", 4)
    server = live_server(**settings)
    admin = server.client()
    admin.project("p")
    url = f"sqlite:///{db}"
    admin.dataset("p", name="accounts", url=url, table="accounts", key="id")
    admin.dataset("p", name="ledger", url=url, table="ledger")
    return server, admin


def _copies(server: Any) -> list[str]:
    directory = server.settings.snapshot_path
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _no_copies_left(server: Any, keep: tuple[str, ...] = ()) -> None:
    """The task's cleanup follows its terminal move (right after it, or a moment later)."""
    deadline = time.monotonic() + 30
    while [c for c in _copies(server) if c not in keep] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c for c in _copies(server) if c not in keep] == []


def _manifest(api: Any, task_id: str) -> dict[str, Any]:
    r = api.http.get(f"/v1/projects/p/exports/{task_id}/manifest")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_snapshot_reads_one_copy_every_time(accounts: Path, live_server: Any) -> None:
    server, api = _setup(live_server, accounts, debug_pause_before_commit=0.02)
    # the ADBC fast path (csv), the generic path (jsonl, parquet), rowid partitions
    cases = [("accounts", "csv"), ("accounts", "jsonl"), ("ledger", "csv"), ("ledger", "parquet")]
    with Writer(accounts) as writer:
        for i in range(REPEATS):
            name, fmt = cases[i % len(cases)]
            moves = writer.moves
            task = api.export("p", dataset_id=name, format=fmt, parallelism=8)
            done = api.wait("p", task["task_id"])
            assert done["status"] == "COMPLETED", done
            assert len(done["partitions"]) == 8
            c = done["consistency"]
            assert (c["requested"], c["delivered"]) == (None, "snapshot"), c
            snap = c["snapshot"]
            assert snap["kind"] == "sqlite_copy" and snap["time"] and snap["pages"] > 0, snap
            assert snap["method"] == "backup"  # a WAL source: the online backup API
            assert c["oldest_transaction_age_seconds"] is None  # nothing held on the source
            assert _total(api, task["task_id"], fmt) == (ACCOUNTS, TOTAL), (i, name, fmt)
            assert writer.moves > moves  # the table was written while it was exported
            _no_copies_left(server)  # deleted with the task's cleanup
    manifest = _manifest(api, task["task_id"])
    assert manifest["consistency"]["snapshot"] == snap
    assert manifest["consistency"]["delivered"] == "snapshot"


def test_rollback_journal_source_and_per_partition(tmp_path: Path, live_server: Any) -> None:
    """A source in rollback-journal mode: the copy's read transaction makes the writer's
    commits wait for it (not fail), and the total is the invariant; per_partition reads
    the live database and says so."""
    db = tmp_path / "bank.db"
    _build(db, "delete")
    server, api = _setup(live_server, db)
    with Writer(db) as writer:
        for _ in range(2):
            moves = writer.moves
            task = api.export("p", dataset_id="accounts", format="csv", parallelism=8)
            done = api.wait("p", task["task_id"])
            assert done["status"] == "COMPLETED", done
            assert done["consistency"]["delivered"] == "snapshot"
            assert done["consistency"]["snapshot"]["method"] == "file"  # under a SHARED lock
            assert _total(api, task["task_id"], "csv") == (ACCOUNTS, TOTAL)
            assert writer.moves > moves  # the table was written while it was exported
        task = api.export(
            "p", dataset_id="accounts", format="csv", parallelism=8, consistency="per_partition"
        )
        done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", done
    c = done["consistency"]
    assert (c["requested"], c["delivered"], c["snapshot"]) == ("per_partition",) * 2 + (None,)
    assert "each partition reads at its own moment" in c["reason"]
    rows, _ = _total(api, task["task_id"], "csv")  # the total is the mode's risk: not asserted
    assert rows == ACCOUNTS
    assert _manifest(api, task["task_id"])["consistency"]["delivered"] == "per_partition"
    _no_copies_left(server)


def test_copy_is_gone_after_cancel(accounts: Path, live_server: Any) -> None:
    server, api = _setup(live_server, accounts, workers=1, debug_pause_before_commit=1.0)
    task = api.export("p", dataset_id="accounts", format="jsonl", parallelism=8)

    def running(t: dict[str, Any]) -> bool:
        return t["is_terminal"] or any(p["status"] == "RUNNING" for p in t["partitions"])

    seen = api.wait("p", task["task_id"], until=running)
    assert not seen["is_terminal"], seen
    copy = seen["consistency"]["snapshot"]["copy"]
    assert _copies(server) == [copy]  # the partitions read it, in exportd's own directory
    r = api.http.post(f"/v1/projects/p/exports/{task['task_id']}/cancel")
    assert r.status_code in (200, 202), r.text
    done = api.wait("p", task["task_id"])
    assert done["status"] == "CANCELED", done
    _no_copies_left(server)


def test_the_copy_is_never_a_source(accounts: Path, live_server: Any) -> None:
    """The snapshot directory is exportd's own: a dataset on a file in it is refused."""
    server, api = _setup(live_server, accounts, workers=1, debug_pause_before_commit=1.0)
    task = api.export("p", dataset_id="accounts", format="csv", parallelism=2)
    seen = api.wait("p", task["task_id"], until=lambda t: t["consistency"] is not None)
    copy = server.settings.snapshot_path / seen["consistency"]["snapshot"]["copy"]
    r = api.http.post(
        "/v1/projects/p/datasets",
        json={"name": "stolen", "url": f"sqlite:///{copy}", "table": "accounts", "key": "id"},
    )
    assert r.status_code in (400, 403), r.text
    assert r.json()["error_code"] == "SOURCE_NOT_ALLOWED"
    api.wait("p", task["task_id"])


def test_sigkill_of_a_worker_mid_export(accounts: Path, live_server: Any) -> None:
    """The worker that planned the task (and made its copy) is killed mid-export: the
    partitions it held are taken up again by another worker process, which reads the
    same copy; every row exactly once, the total the invariant."""
    server, api = _setup(live_server, accounts, workers=0, lease_seconds=2.0,
                         debug_pause_before_commit=0.5)  # fmt: skip
    with Writer(accounts):
        victim = server.start_worker(concurrency=2)
        task = api.export("p", dataset_id="accounts", format="csv", parallelism=8)

        def some_done(t: dict[str, Any]) -> bool:
            states = [p["status"] for p in t["partitions"]]
            return t["is_terminal"] or ("DONE" in states and "RUNNING" in states)

        assert not api.wait("p", task["task_id"], timeout=60, until=some_done)["is_terminal"]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        server.start_worker(concurrency=2)
        done = api.wait("p", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED", done
    assert max(p["lost_count"] for p in done["partitions"]) >= 1
    assert done["consistency"]["delivered"] == "snapshot"
    assert _total(api, task["task_id"], "csv") == (ACCOUNTS, TOTAL)
    _no_copies_left(server)


def test_every_read_path_reads_the_copy(tmp_path: Path) -> None:
    """Through Runtime.source, a task's copy serves the planning bounds, the generic
    reader, bisection's key ranges, the ADBC CSV fast path and rowid partitions: once the
    live database has changed, every one of them still reads the copy's moment. A copy
    this worker cannot open fails with SNAPSHOT_COPY_MISSING and is never created."""
    from datetime import UTC, datetime

    from exportd.fastpaths import sqlite_csv
    from exportd.formats import Column, get_format
    from exportd.model import Dataset, DatasetKind
    from exportd.runtime import Runtime
    from exportd.settings import Settings
    from exportd.sources import Selection
    from exportd.sources.sql import CopyMissing, SqlSource, copy_sqlite, describe_sql
    from exportd.sources.sql_ranges import KeyRanges, Lower

    db = tmp_path / "bank.db"
    _build(db, "wal")
    rt = Runtime(Settings(data_dir=tmp_path / "data", source_dirs=[tmp_path]))
    try:
        url = f"sqlite:///{db}"
        live = rt.engines.get(url)

        def dataset(table: str, key: str) -> Dataset:
            fields = describe_sql(live, table, None)
            return Dataset(table, "p", table, DatasetKind.SQL, url, table, None, key, fields, {}, datetime.now(UTC))  # fmt: skip

        accounts, ledger = dataset("accounts", "id"), dataset("ledger", "")
        name = f"{'a' * 32}.{'b' * 16}"
        identity = copy_sqlite(live, rt.settings.snapshot_path, name)
        assert identity["id"] == "sqlite-copy:" + name and identity["pages"] > 0
        with sqlite3.connect(db) as conn:  # the live database moves on
            conn.execute("UPDATE accounts SET amount = 0")
            conn.execute("UPDATE ledger SET amount = 0")
            conn.execute("INSERT INTO accounts VALUES (?, 5)", (ACCOUNTS + 1,))
        sel = Selection(["id", "amount"], [], snapshot=identity["id"])
        src = rt.source(accounts, identity["id"])
        assert isinstance(src, SqlSource)
        parts = src.plan(sel, 4)
        assert parts[-1]["hi"] is None and parts[-2]["hi"] <= ACCOUNTS  # the copy's bounds
        rows = [r for p in parts for b in src.read(sel, p, 1000) for r in b]
        assert (len(rows), sum(r[1] for r in rows)) == (ACCOUNTS, TOTAL)
        ranged = [r for b in KeyRanges(src, sel, parts[0]).read(Lower(), None, 500) for r in b]
        assert ranged and all(r[1] == START for r in ranged)
        fast = sqlite_csv.build(
            src, get_format("csv"), [Column("id", "int"), Column("amount", "int")]
        )
        assert fast is not None
        batches = list(fast._batches(fast.query(sel, parts[1], [])))
        amounts = [a for b in batches for a in b.column(1).to_pylist()]
        assert amounts and set(amounts) == {START}
        keyless = rt.source(ledger, identity["id"])
        assert isinstance(keyless, SqlSource) and keyless.split == "rowid"
        lparts = keyless.plan(sel, 8)
        lrows = [r for p in lparts for b in keyless.read(sel, p, 1000) for r in b]
        assert sorted(r[0] for r in lrows) == list(range(1, ACCOUNTS + 1))
        assert sum(r[1] for r in lrows) == TOTAL
        # without the copy (another host, say): a clear failure, never the live database
        missing = "sqlite-copy:" + f"{'c' * 32}.{'d' * 16}"
        with pytest.raises(CopyMissing) as err:
            list(rt.source(accounts, missing).read(sel, parts[0], 1000))
        assert err.value.error_code == "SNAPSHOT_COPY_MISSING"
        assert sorted(p.name for p in rt.settings.snapshot_path.iterdir()) == [name + ".sqlite"]
    finally:
        rt.close()


def test_no_copy_possible_says_why(accounts: Path, live_server: Any, tmp_path: Path) -> None:
    """A snapshot directory that cannot be written: by default the export delivers
    per_partition and says why; asked for a snapshot, it fails with SNAPSHOT_COPY_FAILED."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    _, api = _setup(live_server, accounts, workers=2, max_attempts=1,
                    snapshot_dir=str(blocker / "snapshots"))  # fmt: skip
    task = api.export("p", dataset_id="accounts", format="csv", parallelism=4)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED" and done["finished_count"] == ACCOUNTS, done
    c = done["consistency"]
    assert c["delivered"] == "per_partition" and "no consistent copy" in c["reason"], c
    task = api.export("p", dataset_id="accounts", format="csv", consistency="snapshot")
    done = api.wait("p", task["task_id"])
    assert (done["status"], done["error_code"]) == ("FAILED", "SNAPSHOT_COPY_FAILED"), done


def test_the_sweeper_removes_copies_no_task_reads(accounts: Path, live_server: Any) -> None:
    """In the snapshot directory: the current copy of a running task stays; a copy of an
    unknown task, one half written, an earlier copy of the running task and a copy of an
    ended task go (the first three past the grace period: here, all of them are)."""
    from datetime import UTC, datetime, timedelta

    from exportd.execution.sweeper import Sweeper

    server, api = _setup(live_server, accounts, workers=1, debug_pause_before_commit=2.0)
    running = api.export("p", dataset_id="accounts", format="csv", parallelism=4)
    seen = api.wait("p", running["task_id"], until=lambda t: t["consistency"] is not None)
    current = seen["consistency"]["snapshot"]["copy"]
    ended = api.export("p", dataset_id="accounts", format="csv", parallelism=1)
    r = api.http.post(f"/v1/projects/p/exports/{ended['task_id']}/cancel")
    assert r.status_code in (200, 202), r.text
    assert api.wait("p", ended["task_id"])["status"] == "CANCELED"
    directory = server.settings.snapshot_path
    planted = [
        f"{'e' * 32}.{'1' * 16}.sqlite",  # a task the store does not know
        f"{'e' * 32}.{'2' * 16}.sqlite.part",  # a copy a crash cut short
        f"{running['task_id']}.{'3' * 16}.sqlite",  # an earlier planning's copy
        f"{ended['task_id']}.{'4' * 16}.sqlite",  # a copy of a task that has ended
        "unrelated.txt",  # not a copy: never touched
    ]
    for name in planted:
        (directory / name).write_bytes(b"x")
    sweeper = Sweeper(server.app.state.runtime)
    assert not api.task("p", running["task_id"])["is_terminal"]
    assert sweeper.sweep_copies(datetime.now(UTC) + timedelta(seconds=5)) == 4
    assert sorted(p.name for p in directory.iterdir()) == sorted([current, "unrelated.txt"])
    assert api.wait("p", running["task_id"])["status"] == "COMPLETED"
    _no_copies_left(server, keep=("unrelated.txt",))
