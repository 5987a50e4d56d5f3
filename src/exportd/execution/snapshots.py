"""Point-in-time exports (docs/consistency.md): the holders of PostgreSQL exported
snapshots, one per task, in the process that opened it.

A holder is one connection, out of the source engine's pool, in a REPEATABLE READ
transaction that ran `pg_export_snapshot()`; the transaction stays open (no idle
timeout for that session, TCP keepalives from the server) for as long as the task's
partitions may still import the snapshot, on any worker and host, with `SET TRANSACTION
SNAPSHOT`. Its own thread pings it and asks the store about the task once a second: it
lets go once the task has ended, its partitions are all done or it was replaced. If it
dies (connection lost, this host killed), the snapshot is gone: whoever sees it first (a
partition that cannot import it, or the holder's thread) opens a fresh one and replaces
it in the store in one move that also sends every partition read under the old one back
to be read again, so that the output never mixes two moments."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from exportd.model import Dataset, DatasetKind, Task
from exportd.model.plan import Consistency
from exportd.outages import source_error
from exportd.runtime import Runtime
from exportd.sources import Source
from exportd.sources.sql import (
    COPY_SUFFIX,
    CopyFailed,
    SnapshotLost,
    SqlSource,
    copy_owner,
    copy_sqlite,
)

if TYPE_CHECKING:
    from exportd.execution.heartbeat import Heartbeat
    from exportd.execution.kinds import PartitionWork
    from exportd.execution.partition import PartitionRun

log = logging.getLogger(__name__)

HOLD_CHECK_SECONDS = 1.0  # how often a holder pings its connection and reads its task

NO_SHARED_SNAPSHOT = {
    "mysql": "START TRANSACTION WITH CONSISTENT SNAPSHOT cannot be shared between "
    "connections: each partition reads its own consistent snapshot, taken when it starts",
    "mariadb": "START TRANSACTION WITH CONSISTENT SNAPSHOT cannot be shared between "
    "connections: each partition reads its own consistent snapshot, taken when it starts",
}


@dataclass
class Holder:
    task_id: str
    snapshot_id: str
    identity: dict[str, Any]  # id, time, wal_lsn, holder_pid, holder_host
    conn: Any  # psycopg.Connection
    raw: Any  # its pool's checkout: a dataset's max_connections counts the holder
    stop: threading.Event = field(default_factory=threading.Event)
    # the connection's user: its watcher's pings, and its closing (back to the pool)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ping(self) -> bool:
        """Whether the holder's transaction is alive (False once it was let go of)."""
        with self.lock:
            if self.stop.is_set():
                return False
            self.conn.execute("SELECT 1")
            return True

    def close(self) -> None:
        with self.lock:
            if self.stop.is_set():
                return
            self.stop.set()
            self._close()

    def _close(self) -> None:
        try:  # back to the pool as a plain session: no new connection replaces it
            self.conn.execute("ROLLBACK")
            self.conn.execute("RESET ALL")  # to the session's defaults (its startup options)
            self.conn.autocommit = False
            self.raw.close()
        except Exception:  # lost (or half reset): closed, never reused
            with contextlib.suppress(Exception):
                self.raw.invalidate()


class Holders:
    """The snapshot holders of one process (one runtime), by task."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._by_task: dict[str, Holder] = {}
        self._lock = threading.Lock()

    def keep(self, holder: Holder, source: SqlSource) -> None:
        """Keep a holder recorded in the store, watched on its own thread until it lets
        go (a holder this process kept for the task before is closed)."""
        with self._lock:
            old = self._by_task.pop(holder.task_id, None)
            self._by_task[holder.task_id] = holder
        if old is not None:
            old.close()
        threading.Thread(
            target=self._watch, args=(holder, source), name=f"exportd-snapshot-{holder.task_id[:8]}",
            daemon=True,
        ).start()  # fmt: skip

    def drop(self, holder: Holder) -> None:
        with self._lock:
            if self._by_task.get(holder.task_id) is holder:
                del self._by_task[holder.task_id]
        holder.close()

    def held(self, task_id: str) -> Holder | None:
        with self._lock:
            return self._by_task.get(task_id)

    def release(self, task_id: str) -> None:
        """Let go of the task's snapshot now, if this process holds it (at finish)."""
        with self._lock:
            holder = self._by_task.pop(task_id, None)
        if holder is not None:
            holder.close()

    def close_all(self) -> None:
        with self._lock:
            found, self._by_task = list(self._by_task.values()), {}
        for holder in found:
            holder.close()

    def _watch(self, holder: Holder, source: SqlSource) -> None:
        store = self.rt.store
        while not holder.stop.wait(HOLD_CHECK_SECONDS):
            try:
                state = store.snapshot_state(holder.task_id)
            except Exception as exc:  # a store outage: the holder keeps holding
                log.warning("snapshot holder of %s: %s", holder.task_id, type(exc).__name__)
                continue
            if state is None:
                break
            status, current, gen, open_parts, parts = state
            if status.is_terminal or current != holder.snapshot_id or (parts and not open_parts):
                break
            try:
                if not holder.ping():
                    return
            except Exception as exc:
                if holder.stop.is_set():  # let go of meanwhile (the task finished)
                    return
                log.warning("snapshot holder of %s lost: %s", holder.task_id, exc)
                self.drop(holder)
                # partitions that have not imported it yet would fail: a fresh one now
                # (those that imported it read on, but are read again: one moment)
                try:
                    renew(self.rt, holder.task_id, source, gen, pending_only=True)
                except Exception as err:  # the partitions will see the loss themselves
                    log.warning("no fresh snapshot for %s: %s", holder.task_id, err)
                return
        self.drop(holder)


_HOLDERS: weakref.WeakKeyDictionary[Runtime, Holders] = weakref.WeakKeyDictionary()
_HOLDERS_LOCK = threading.Lock()


def holders(rt: Runtime) -> Holders:
    with _HOLDERS_LOCK:
        found = _HOLDERS.get(rt)
        if found is None:
            found = _HOLDERS[rt] = Holders(rt)
        return found


def open_snapshot(engine: sa.Engine, task_id: str) -> Holder:
    """A connection of its own (the policy's checks and the read-only session of the
    source engine apply) holding a REPEATABLE READ transaction with an exported
    snapshot, and the snapshot's identity: id, time, WAL position, backend pid."""
    try:
        raw = engine.raw_connection()
    except sa.exc.DBAPIError as exc:
        raise source_error(exc, "SOURCE_QUERY_FAILED") from None
    conn: Any = raw.driver_connection  # checked out for the holder's life
    try:
        conn.rollback()
        conn.autocommit = True
        for setting in (
            "SET idle_in_transaction_session_timeout = 0",  # it is idle in a transaction
            "SET statement_timeout = 0",
            "SET tcp_keepalives_idle = 30",
            "SET tcp_keepalives_interval = 10",
            "SET tcp_keepalives_count = 3",
            "SET application_name = 'exportd snapshot holder'",
        ):
            conn.execute(setting)
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = conn.execute(
            "SELECT pg_export_snapshot(), statement_timestamp(), pg_backend_pid(),"
            " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
            " ELSE pg_current_wal_lsn() END)::text"
        ).fetchone()
    except Exception as exc:
        with contextlib.suppress(Exception):
            raw.invalidate()
        if isinstance(exc, sa.exc.DBAPIError) or type(exc).__module__.startswith("psycopg"):
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        raise
    snapshot_id, at, pid, lsn = row
    identity = {
        "id": snapshot_id,
        "time": at.isoformat(),
        "wal_lsn": lsn,
        "holder_pid": pid,
        "holder_host": socket.gethostname(),
    }
    return Holder(task_id, snapshot_id, identity, conn, raw)


def shares_snapshot(source: Source, dataset: Dataset) -> str | None:
    """None when the source can share one snapshot between the partitions; else why not."""
    sqlite = isinstance(source, SqlSource) and source.engine.dialect.name == "sqlite"
    if sqlite and dataset.kind in (DatasetKind.SQL, DatasetKind.DOCUMENTS):  # a copy: both
        database = source.engine.url.database  # type: ignore[attr-defined]
        if not database or database == ":memory:" or database.startswith("file:"):
            return "an in-memory or URI-named SQLite database is not copied"
        return None
    if dataset.kind is not DatasetKind.SQL:
        if dataset.kind is DatasetKind.FILES:
            return "files are read as they are when each partition reads them"
        return "documents are read per partition (a header pass and an export pass)"
    if not isinstance(source, SqlSource):
        return "each partition reads at its own moment"
    dialect = source.engine.dialect.name
    if dialect != "postgresql":
        return NO_SHARED_SNAPSHOT.get(dialect, f"{dialect} cannot share a snapshot")
    limit = dataset.options.get("max_connections")
    if limit is not None and int(limit) < 2:
        return "max_connections 1 leaves no connection for a snapshot's holder beside a partition"
    return None


def start(rt: Runtime, task: Task, dataset: Dataset, source: Source, token: str) -> bool:
    """At plan (the coordinator): decide what the task delivers and, for a snapshot,
    open its holder and record it. False: the coordinator's lease is lost."""
    requested = task.plan.consistency
    why_not = shares_snapshot(source, dataset)
    info: dict[str, Any] = {
        "requested": requested.value if requested else None,
        "delivered": Consistency.PER_PARTITION.value,
        "reason": None,
        "snapshot": None,
        "snapshot_restarts": 0,
        "note": None,
    }
    if requested is Consistency.PER_PARTITION:
        info["reason"] = "asked for: each partition reads at its own moment"
    elif why_not is not None:
        info["reason"] = why_not
    if requested is Consistency.PER_PARTITION or why_not is not None:
        return bool(rt.store.set_consistency(task.task_id, token, task.snapshot_gen, None, info))
    assert isinstance(source, SqlSource)
    if source.engine.dialect.name == "sqlite":
        return _start_copy(rt, task, source, token, info)
    if not rt.store.holder_slot_free(task.task_id):  # checked again when it is recorded
        return _no_holder_slot(rt, task, token, info)
    registry = holders(rt)
    holder = open_snapshot(source.engine, task.task_id)
    info.update(delivered=Consistency.SNAPSHOT.value, snapshot=holder.identity)
    info["reason"] = "one PostgreSQL snapshot exported and imported by every partition"
    recorded = rt.store.set_consistency(
        task.task_id, token, task.snapshot_gen, holder.snapshot_id, info
    )
    if recorded is None:  # other exports' snapshots take the dataset's connections
        holder.close()
        return _no_holder_slot(rt, task, token, info)
    if not recorded:
        holder.close()
        return False
    registry.keep(holder, source)
    return True


SQLITE_COPY_REASON = (
    "one consistent copy of the SQLite database (the online backup API, in one read "
    "transaction), made at plan and read by every partition"
)


def _start_copy(
    rt: Runtime, task: Task, source: SqlSource, token: str, info: dict[str, Any]
) -> bool:
    """SQLite: a consistent copy of the database into the snapshot directory, recorded as
    the task's snapshot; every read of the task's partitions reads it (Runtime.source).
    A copy that cannot be made (no space, say) delivers per_partition with that reason
    when the request did not ask for a snapshot; else the planning read fails."""
    directory = rt.settings.snapshot_path
    drop_copies(rt, task.task_id)  # a copy of an earlier planning of this task
    name = f"{task.task_id}.{secrets.token_hex(8)}"
    try:
        identity = copy_sqlite(source.engine, directory, name)
    except CopyFailed as exc:  # the policy's refusals and source errors propagate
        if task.plan.consistency is Consistency.SNAPSHOT:
            raise
        info["reason"] = f"no consistent copy of the SQLite database: {exc.error_msg}"
        return bool(rt.store.set_consistency(task.task_id, token, task.snapshot_gen, None, info))
    info.update(delivered=Consistency.SNAPSHOT.value, snapshot=identity, reason=SQLITE_COPY_REASON)
    recorded = rt.store.set_consistency(
        task.task_id, token, task.snapshot_gen, identity["id"], info
    )
    if not recorded:  # the lease is lost: the next coordinator makes its own copy
        (directory / f"{name}{COPY_SUFFIX}").unlink(missing_ok=True)  # this one's only
    return bool(recorded)


def drop_copies(rt: Runtime, task_id: str) -> int:
    """Delete every SQLite copy of the task (and one left half written) from this host's
    snapshot directory; how many files went. Idempotent: the task's cleanup."""
    directory = rt.settings.snapshot_path
    if not directory.is_dir():
        return 0
    gone = 0
    for path in directory.glob(f"{task_id}.*"):
        if copy_owner(path.name) == task_id:
            path.unlink(missing_ok=True)
            gone += 1
    return gone


def planning_source(rt: Runtime, task_id: str, dataset: Dataset, source: Source) -> Source:
    """The source the rest of the planning reads (estimate, bounds): the task's SQLite
    copy once there is one, so that the bounds are of the moment the partitions read."""
    if not isinstance(source, SqlSource) or source.engine.dialect.name != "sqlite":
        return source
    state = rt.store.snapshot_state(task_id)
    if state is None or not state[1]:
        return source
    return rt.source(dataset, state[1])


def _no_holder_slot(rt: Runtime, task: Task, token: str, info: dict[str, Any]) -> bool:
    info.update(delivered=Consistency.PER_PARTITION.value, snapshot=None)
    info["reason"] = (
        "the dataset's max_connections are taken by other exports' snapshots: one more "
        "would leave no connection for a partition"
    )
    return bool(rt.store.set_consistency(task.task_id, token, task.snapshot_gen, None, info))


def renew(rt: Runtime, task_id: str, source: SqlSource, gen: int, pending_only: bool) -> bool:
    """The snapshot of generation `gen` is lost: open a fresh one here and replace it
    (once per generation, whoever comes first); True when this call replaced it. A
    fresh snapshot that cannot be opened raises (SourceError: an outage is ridden out)."""
    registry = holders(rt)
    holder = open_snapshot(source.engine, task_id)  # a SourceError: the caller's to handle
    why = (
        "the snapshot's holder was lost: every partition is read again under a fresh "
        "snapshot, so that the output is of one moment"
    )
    if rt.store.replace_snapshot(
        task_id, gen, holder.snapshot_id, holder.identity, why, pending_only
    ):
        log.warning(
            "%s: snapshot lost, partitions read again under %s", task_id, holder.snapshot_id
        )
        registry.keep(holder, source)
        return True
    holder.close()
    return False


def under_snapshot(work: PartitionWork) -> PartitionWork:
    """A partition's work that reads the task's snapshot: when the snapshot cannot be
    imported any more, a fresh one replaces it (this partition is then sent back with
    every other); when another worker replaced it first, the partition is handed back
    without using an attempt, to read the fresh one."""

    def run(run: PartitionRun, hb: Heartbeat) -> None:
        try:
            work(run, hb)
        except SnapshotLost as exc:
            task = run.task
            if not isinstance(run.source, SqlSource) or not task.snapshot_id:
                raise
            log.warning("%s: %s", run.where, exc.error_msg)
            if not renew(run.rt, task.task_id, run.source, task.snapshot_gen, False):
                run.rt.store.hand_back_partition(
                    task.task_id, run.part.index, run.lease.token, exc.error_code,
                    exc.error_msg[:2000], SNAPSHOT_RETRY_SECONDS,
                )  # fmt: skip

    return run


SNAPSHOT_RETRY_SECONDS = 0.5
