"""SQL datasets through SQLAlchemy: any table or read-only query of SQLite, PostgreSQL or
MariaDB, partitioned by ranges of a key column (a table without one: PostgreSQL by ctid
page ranges, SQLite by rowid), streamed with server-side cursors. A partition reads in
one transaction: under the task's exported snapshot where it has one, with the dataset's
statement timeout (docs/consistency.md)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from exportd.errors import BadRequest, SourceError, first_line
from exportd.model import Dataset
from exportd.outages import source_error, unreachable
from exportd.sources import Estimate, Selection
from exportd.sources.filters import COERCE, compile_filter
from exportd.sources.policy import SourcePolicy
from exportd.store import SQLITE_COPY_PREFIX, normalize_url

_QUERY_START = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)


class SqlEngines:
    """One engine per source URL, created on first use and disposed with the runtime.
    With a policy (the runtime always gives one), every URL is checked at each use and
    every connection when it is opened (sources/policy.py)."""

    def __init__(self, policy: SourcePolicy | None = None) -> None:
        self._engines: dict[tuple[str, int | None], sa.Engine] = {}
        self._copies: OrderedDict[tuple[str, None], sa.Engine] = OrderedDict()
        self._lock = threading.Lock()
        self.policy = policy

    def get(self, url: str, max_connections: int | None = None) -> sa.Engine:
        """`max_connections` (a dataset's limit): an engine of its own whose pool never
        holds more connections than that (a snapshot's holder is one of them)."""
        if self.policy is not None:
            self.policy.check_url(url)
        with self._lock:
            engine = self._engines.get((url, max_connections))
            if engine is None:
                engine = _create_source_engine(url, self.policy, max_connections)
                self._engines[(url, max_connections)] = engine
            return engine

    def release(self, url: str, max_connections: int | None) -> None:
        """Dispose of the engine of a dataset's former limit (its idle pooled connections
        are closed now rather than at recycling): its `max_connections` changed."""
        with self._lock:
            engine = self._engines.pop((url, max_connections), None)
        if engine is not None:
            engine.dispose()

    COPY_ENGINES = 64  # engines of SQLite copies kept (no pool: nothing held open)

    def copy(self, path: Path) -> sa.Engine:
        """The engine of a task's consistent copy of a SQLite database: exportd's own
        file, made from a source the policy checked, so not checked again (the copies'
        directory is refused as a source). Read only, opened without creating it, and
        with no pool: no connection keeps a deleted copy's disk space."""
        key = (f"copy:{path}", None)
        with self._lock:
            engine = self._copies.get(key)
            if engine is None:
                engine = _copy_engine(path)
                self._copies[key] = engine
                while len(self._copies) > self.COPY_ENGINES:
                    self._copies.popitem(last=False)[1].dispose()
            self._copies.move_to_end(key)
            return engine

    def dispose(self) -> None:
        with self._lock:
            for engine in [*self._engines.values(), *self._copies.values()]:
                engine.dispose()
            self._engines.clear()
            self._copies.clear()


CONNECT_TIMEOUT_SECONDS = 10  # a source that accepts and never answers fails like any other


def _create_source_engine(
    url: str, policy: SourcePolicy | None = None, max_connections: int | None = None
) -> sa.Engine:
    """An engine whose every session is read-only: a dataset's query can never write,
    whatever SQL an administrator registered."""
    try:
        u = normalize_url(url)
        if u.startswith("sqlite"):
            engine = sa.create_engine(
                u,
                connect_args={"timeout": 60, "check_same_thread": False},
                hide_parameters=True,  # filter values are the caller's data: not for logs
            )
        elif u.startswith("postgresql"):
            engine = sa.create_engine(
                u,
                pool_pre_ping=True,
                pool_size=max_connections or 4,
                max_overflow=0 if max_connections else 8,
                connect_args={
                    "options": "-c default_transaction_read_only=on",
                    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                },
                hide_parameters=True,
            )
        else:
            engine = sa.create_engine(
                u,
                pool_pre_ping=True,
                pool_size=max_connections or 4,
                max_overflow=0 if max_connections else 8,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
                hide_parameters=True,
            )
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ValueError) as exc:
        raise BadRequest(f"unusable database URL ({type(exc).__name__})", "INVALID_URL") from None
    if policy is not None:
        policy.guard(engine)
    event.listen(engine, "connect", _read_only_session(engine.dialect.name))
    return engine


# ---- SQLite: a consistent copy per task (docs/consistency.md) ---------------------------

_COPY_NAME = re.compile(r"^[0-9a-f]{32}\.[0-9a-f]{8,32}$")
COPY_SUFFIX = ".sqlite"
COPY_PART = ".part"  # a copy being written (a crash leaves it to the sweeper)


class CopyMissing(SourceError):
    """This worker cannot open the task's copy (another host without the shared
    snapshot directory, or the copy already deleted): the partition fails its attempt,
    never reads the live database instead (that would mix two moments)."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(
            f"the task's consistent copy of the SQLite database ({name}) cannot be opened "
            f"in this worker's snapshot directory ({directory}): every worker of a snapshot "
            "export must share that directory (EXPORTD_SNAPSHOT_DIR); else export with "
            '"consistency": "per_partition"',
            "SNAPSHOT_COPY_MISSING",
        )


class CopyFailed(SourceError):
    """The consistent copy could not be made or written (no space left, say)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the SQLite database could not be copied: {why}", "SNAPSHOT_COPY_FAILED")


def sqlite_copy_file(directory: Path, snapshot: str | None) -> Path | None:
    """The file of a task's snapshot when it is a SQLite copy (`sqlite-copy:<name>`);
    None for any other snapshot. The name is exportd's own, checked: never a path."""
    if not snapshot or not snapshot.startswith(SQLITE_COPY_PREFIX):
        return None
    name = snapshot[len(SQLITE_COPY_PREFIX) :]
    if not _COPY_NAME.match(name):
        raise SnapshotLost("the task's copy identifier is malformed")
    return directory / (name + COPY_SUFFIX)


def copy_owner(file_name: str) -> str | None:
    """The task id of a file of the snapshot directory (a copy, or one being written)."""
    name = file_name.removesuffix(COPY_PART).removesuffix(COPY_SUFFIX)
    return name.split(".", 1)[0] if _COPY_NAME.match(name) else None


def _copy_engine(path: Path) -> sa.Engine:
    def connect() -> sqlite3.Connection:
        try:  # mode=ro: a missing copy is an error, never a new empty database
            return sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=60, check_same_thread=False
            )
        except sqlite3.OperationalError:
            raise CopyMissing(path.name, path.parent) from None

    engine = sa.create_engine(
        f"sqlite:///{path}", creator=connect, poolclass=NullPool, hide_parameters=True
    )
    event.listen(engine, "connect", _read_only_session("sqlite"))
    return engine


def copy_sqlite(engine: sa.Engine, directory: Path, name: str) -> dict[str, Any]:
    """A consistent copy of the source database into `directory`/`name`.sqlite, made in
    one read transaction of the source, so it is the database at one moment: in WAL
    mode by the online backup API in one step (`backup(pages=-1)`), while a writer goes
    on (the copy reads the snapshot its transaction began with); in rollback-journal
    mode as a whole file under the transaction's SHARED lock, while a writer's commit
    waits for the copy to end (its busy timeout). The copy is written aside and renamed when complete, in rollback-journal
    mode (its readers need no -wal/-shm files). Returns the copy's identity."""
    final = directory / (name + COPY_SUFFIX)
    part = directory / (name + COPY_SUFFIX + COPY_PART)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CopyFailed(f"the snapshot directory cannot be made ({exc.strerror})") from None
    try:
        raw = engine.raw_connection()  # the policy's checks apply to the source
    except sa_exc.DBAPIError as exc:
        raise source_error(exc, "SOURCE_QUERY_FAILED") from None
    try:
        src: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
        started, at = time.monotonic(), datetime.now(UTC)
        method = _copy_whole_file(src, part) or _copy_by_backup(src, part)
        took = time.monotonic() - started
        dst = sqlite3.connect(part)
        try:
            dst.execute("PRAGMA journal_mode = DELETE")
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            page_size = int(dst.execute("PRAGMA page_size").fetchone()[0])
        finally:
            dst.close()
        os.replace(part, final)
    except (sqlite3.Error, OSError) as exc:
        part.unlink(missing_ok=True)
        raise CopyFailed(first_line(exc)) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        raw.close()
    return {
        "kind": "sqlite_copy",
        "id": SQLITE_COPY_PREFIX + name,
        "time": at.isoformat(),
        "copy": final.name,
        "pages": pages,
        "page_size": page_size,
        "bytes": final.stat().st_size,
        "copy_seconds": round(took, 3),
        "method": method,
        "host": _host(),
    }


def _copy_whole_file(src: sqlite3.Connection, part: Path) -> str | None:
    """A source in a rollback-journal mode, copied as a file (by the kernel: `sendfile`)
    under a read transaction: while it holds its SHARED lock no writer can commit, so
    the file is the database at one moment; then synced. About ten times less time than
    the backup API, which goes page by page through both pagers. None for a WAL source
    (its last commits may be in the -wal file only), which the backup API copies."""
    (mode,) = src.execute("PRAGMA journal_mode").fetchone()
    found = [row[2] for row in src.execute("PRAGMA database_list") if row[1] == "main"]
    if str(mode).lower() == "wal" or not found or not found[0]:
        return None
    src.execute("BEGIN")
    try:
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the SHARED lock
        shutil.copyfile(found[0], part)
    finally:
        src.execute("ROLLBACK")
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    return "file"


def _copy_by_backup(src: sqlite3.Connection, part: Path) -> str:
    dst = sqlite3.connect(part)
    try:
        src.backup(dst, pages=-1)
    finally:
        dst.close()
    return "backup"


def _host() -> str:
    import socket

    return socket.gethostname()


def _read_only_session(dialect: str) -> Any:
    statement = {
        "sqlite": "PRAGMA query_only = ON",
        "mysql": "SET SESSION TRANSACTION READ ONLY",
        "mariadb": "SET SESSION TRANSACTION READ ONLY",
    }.get(dialect)

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if statement:
            cur = dbapi_conn.cursor()
            cur.execute(statement)
            cur.close()

    return on_connect


_KINDS: tuple[tuple[str, type], ...] = (
    ("bool", bool),
    ("int", int),
    ("float", float),
    ("decimal", Decimal),
    ("datetime", datetime),
    ("date", date),
    ("str", str),
    ("bytes", bytes),
    ("json", dict),
    ("json", list),
)


def _kind_of_class(cls: type) -> str:
    return next((kind for kind, base in _KINDS if issubclass(cls, base)), "unknown")


def python_kind(sql_type: Any) -> str:
    """The coarse kind of a column: how filter values are coerced and cells written."""
    try:
        return _kind_of_class(sql_type.python_type)
    except (NotImplementedError, AttributeError):
        return "unknown"


def _value_kind(value: Any) -> str:
    return "unknown" if value is None else _kind_of_class(type(value))


def _split_table(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def describe_sql(engine: sa.Engine, table: str | None, query: str | None) -> list[dict[str, Any]]:
    """The fields of a table (reflected) or of a read-only query (from a one-row sample)."""
    try:
        if table:
            schema, name = _split_table(table)
            cols = sa.inspect(engine).get_columns(name, schema=schema)
            return [
                {
                    "name": c["name"],
                    "type": _type_text(c["type"], engine.dialect),
                    "kind": python_kind(c["type"]),
                }
                for c in cols
            ]
        assert query is not None
        with engine.connect() as conn:
            sub = sa.text(query).columns().subquery("q")
            result = conn.execute(sa.select(sa.text("*")).select_from(sub).limit(1))
            names = list(result.keys())
            row = result.first()
        return [
            {"name": n, "type": "unknown", "kind": _value_kind(row[i]) if row else "unknown"}
            for i, n in enumerate(names)
        ]
    except sa_exc.NoSuchTableError:
        raise BadRequest(f"table {table!r} does not exist", "INVALID_DATASET") from None
    except sa_exc.DBAPIError as exc:
        raise BadRequest(
            f"the dataset could not be read: {_db_error_text(exc)}", "INVALID_DATASET"
        ) from None


def _type_text(sql_type: Any, dialect: sa.Dialect) -> str:
    """The type as the database names it (`TIMESTAMP WITH TIME ZONE`, `NUMERIC(20, 6)`)."""
    try:
        return str(sql_type.compile(dialect=dialect))
    except Exception:  # a type the dialect cannot render: its generic name
        return str(sql_type)


def check_query(query: str) -> None:
    if not _QUERY_START.match(query) or ";" in query.rstrip().rstrip(";"):
        raise BadRequest(
            "query must be a single SELECT (or WITH ... SELECT) statement", "INVALID_QUERY"
        )


class SnapshotLost(SourceError):
    """The task's exported snapshot can no longer be imported (its holder's transaction
    ended: connection lost, host gone): the task's partitions are re-run under a fresh one."""

    def __init__(self, error_msg: str) -> None:
        super().__init__(error_msg, "SNAPSHOT_LOST")


def read_setup(dialect: str, sel: Selection, dataset: Dataset) -> list[str]:
    """The statements that open a partition's read transaction, before its first query:
    the task's snapshot (PostgreSQL: REPEATABLE READ importing it) and the dataset's
    statement timeout. Shared by the generic path and the fast paths."""
    out: list[str] = []
    timeout = dataset.options.get("statement_timeout_seconds")
    if dialect == "postgresql":
        if sel.snapshot:
            out.append("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            out.append(f"SET TRANSACTION SNAPSHOT '{_snapshot_literal(sel.snapshot)}'")
        if timeout:
            out.append(f"SET LOCAL statement_timeout = {int(timeout) * 1000}")
    elif dialect == "mariadb":  # a session setting: always set (0: none), the pool reuses it
        out.append(f"SET SESSION max_statement_time = {int(timeout or 0)}")
    elif dialect == "mysql":
        out.append(f"SET SESSION max_execution_time = {int(timeout or 0) * 1000}")
    return out


def setup_dialect(engine: sa.Engine) -> str:
    """The dialect `read_setup` speaks: MariaDB apart from MySQL (known once connected)."""
    if getattr(engine.dialect, "is_mariadb", False):
        return "mariadb"
    return str(engine.dialect.name)


_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f-]{1,100}$")


def _snapshot_literal(snapshot: str) -> str:
    if not _SNAPSHOT_ID.match(snapshot):  # pg_export_snapshot()'s own shape, never input
        raise SnapshotLost("the task's snapshot identifier is malformed")
    return snapshot


def run_setup(execute: Any, statements: list[str]) -> None:
    """Run `read_setup`'s statements with a driver's `execute`; a snapshot that cannot be
    imported any more raises SnapshotLost."""
    for statement in statements:
        if statement.startswith("SET TRANSACTION SNAPSHOT"):
            try:
                execute(statement)
            except Exception as exc:
                if unreachable(exc):
                    raise
                raise SnapshotLost(f"the task's snapshot is gone: {first_line(exc)}") from None
        else:
            execute(statement)


def _db_error_text(exc: sa_exc.DBAPIError) -> str:
    """The database's own message, first line only, without the statement or parameters."""
    return first_line(exc.orig) if exc.orig is not None else type(exc).__name__


class SqlSource:
    def __init__(self, dataset: Dataset, engine: sa.Engine) -> None:
        self.dataset = dataset
        self.engine = engine
        self.kinds = {f["name"]: f.get("kind", "unknown") for f in dataset.fields}
        names = [f["name"] for f in dataset.fields]
        if dataset.table:
            schema, table = _split_table(dataset.table)
            self.from_: Any = sa.table(table, *[sa.column(n) for n in names], schema=schema)
        else:
            self.from_ = sa.text(dataset.query or "").columns(*[sa.column(n) for n in names])
            self.from_ = self.from_.subquery("q")
        # how the rows are split: a declared key first; a table without one by its
        # physical place (PostgreSQL ctid pages, SQLite rowid); else one partition
        dialect = engine.dialect.name
        self.split = "key" if dataset.key else "none"
        if not dataset.key and dataset.table and dialect == "postgresql":
            self.split = "ctid"
        elif not dataset.key and dataset.table and dialect == "sqlite":
            self.split = "rowid"
        if self.split == "key":
            self.key: Any = self.from_.c[dataset.key]
        elif self.split == "rowid":
            self.key = sa.literal_column("rowid")
        else:
            self.key = None

    def _where(self, sel: Selection) -> Any:
        return compile_filter(sel.filter, lambda f: self.from_.c[f])

    def _range(self, bounds: dict[str, Any]) -> Any:
        if "pages" in bounds:  # [lo, hi) pages of the heap; hi None: to the end
            lo, hi = bounds["pages"]
            ctid: Any = sa.literal_column("ctid")
            cond = [ctid >= sa.text(f"'({int(lo)},0)'::tid")] if lo else []
            if hi is not None:
                cond.append(ctid < sa.text(f"'({int(hi)},0)'::tid"))
            return sa.and_(*cond) if cond else sa.true()
        if self.key is None:
            return sa.true()
        coerce = COERCE.get(bounds.get("kind", "unknown"), lambda v: v)
        cond = []
        if bounds.get("lo") is not None:
            cond.append(self.key >= coerce(bounds["lo"]))
        if bounds.get("hi") is not None:
            cond.append(self.key < coerce(bounds["hi"]))
        expr = sa.and_(*cond) if cond else sa.true()
        if bounds.get("nulls"):
            expr = sa.or_(expr, self.key.is_(None)) if cond else sa.true()
        return expr

    def _select(self, sel: Selection) -> sa.Select[Any]:
        return sa.select(*[self.from_.c[c] for c in sel.columns]).select_from(self.from_)

    def partition_select(
        self, sel: Selection, bounds: dict[str, Any], exprs: list[Any] | None = None
    ) -> sa.Select[Any]:
        """One partition's rows in key order: the selection, or `exprs` over its columns."""
        base = self._select(sel) if exprs is None else sa.select(*exprs).select_from(self.from_)
        stmt = base.where(self._range(bounds), self._where(sel))
        return stmt if self.key is None else stmt.order_by(self.key)  # ctid: heap order

    def estimate(self, sel: Selection) -> Estimate:
        stmt = sa.select(sa.func.count()).select_from(self.from_).where(self._where(sel))
        try:
            with self.engine.connect() as conn:
                if self.engine.dialect.name == "postgresql":
                    probe: Any = sa.select(sa.literal_column("1")).select_from(self.from_)
                    plan = self._explain_rows(conn, probe.where(self._where(sel)))
                    if plan is not None:
                        return Estimate(plan, True)
                if not sel.filter and self._key_is_rowid(conn):
                    lo, hi = self._key_bounds(conn)
                    return Estimate(0 if lo is None else int(hi) - int(lo) + 1, True)
                return Estimate(int(conn.execute(stmt).scalar() or 0), False)
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None

    def _key_bounds(self, conn: sa.Connection) -> tuple[Any, Any]:
        """The key's min and max as two subqueries: SQLite reads an index end for a lone
        min() or max(), but scans the whole table for `SELECT min(k), max(k)`."""
        lo = sa.select(sa.func.min(self.key)).select_from(self.from_).scalar_subquery()
        hi = sa.select(sa.func.max(self.key)).select_from(self.from_).scalar_subquery()
        row = conn.execute(sa.select(lo, hi)).one()
        return row[0], row[1]

    def _key_is_rowid(self, conn: sa.Connection) -> bool:
        """SQLite: the key is the table's INTEGER PRIMARY KEY (its rowid: unique, and its
        min and max are two B-tree seeks). Its range then estimates the rows without the
        full scan a count(*) makes (0.3 s per 3 million rows, before any row is read)."""
        table = self.dataset.table
        if self.engine.dialect.name != "sqlite" or not table or "." in table:
            return False
        if self.split == "rowid":
            return True
        info = conn.exec_driver_sql("SELECT name, type, pk FROM pragma_table_info(?)", (table,))
        pks = [(name, (typ or "").upper()) for name, typ, pk in info if pk]
        return pks == [(self.dataset.key, "INTEGER")]

    def _explain_rows(self, conn: sa.Connection, stmt: sa.Select[Any]) -> int | None:
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        row = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + compiled.string, compiled.params)
        plan = row.scalar()
        if isinstance(plan, str):
            import json

            plan = json.loads(plan)
        if plan is None:
            return None
        try:
            return int(plan[0]["Plan"]["Plan Rows"])
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def plan(self, sel: Selection, parallelism: int) -> list[dict[str, Any]]:
        if self.split == "ctid":
            return self._page_ranges(parallelism)
        if self.split == "none":
            return [{"lo": None, "hi": None, "nulls": True, "kind": "unknown"}]
        kind = "int" if self.split == "rowid" else self.kinds.get(self.dataset.key, "unknown")
        try:
            with self.engine.connect() as conn:
                lo, hi = self._key_bounds(conn)
                if lo is None or parallelism <= 1:
                    return [{"lo": None, "hi": None, "nulls": True, "kind": kind}]
                if isinstance(lo, (int, float)) and not isinstance(lo, bool):
                    cuts = _even_cuts(lo, hi, parallelism)
                else:
                    sampled = self._sampled_cuts(conn, parallelism)
                    cuts = self._quantile_cuts(conn, parallelism) if sampled is None else sampled
                nulls = self._key_may_be_null(conn)
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        cuts = [_jsonable(c) for c in cuts]
        edges: list[Any] = [None, *cuts, None]
        last = len(edges) - 2
        return [
            {"lo": edges[i], "hi": edges[i + 1], "nulls": nulls and i == last, "kind": kind}
            for i in range(len(edges) - 1)
        ]

    def _page_ranges(self, parallelism: int) -> list[dict[str, Any]]:
        """PostgreSQL, a table without a key: ranges of heap pages, as many as asked, from
        the table's size in pages (`relpages`, or its file size when it was never
        analyzed); the last range is open so that pages added since are read too. Each
        range is a TID range scan (PostgreSQL 14+): no index, no sort."""
        schema, table = _split_table(self.dataset.table or "")
        name = f"{schema}.{table}" if schema else table
        size = sa.text(
            "SELECT greatest(c.relpages::bigint, pg_relation_size(c.oid) /"
            " current_setting('block_size')::bigint) FROM pg_class c"
            " WHERE c.oid = to_regclass(:name)"
        )
        try:
            with self.engine.connect() as conn:
                pages = int(conn.execute(size, {"name": name}).scalar() or 0)
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        parts = max(1, min(parallelism, pages))
        cuts = [pages * i // parts for i in range(1, parts)]
        edges: list[Any] = [0, *cuts, None]
        return [{"pages": [edges[i], edges[i + 1]]} for i in range(parts)]

    def _key_may_be_null(self, conn: sa.Connection) -> bool:
        """Whether the last range must also take the rows whose key is NULL. A table is
        asked (an index lookup when the key is indexed, none for SQLite's rowid): without
        such rows, the last range stays a plain range that the key's index serves (`k >=
        lo OR k IS NULL` makes PostgreSQL read the whole index and filter it). A query
        dataset always takes them."""
        if not self.dataset.table:
            return True
        if self._key_is_rowid(conn):
            return False
        probe = sa.select(sa.literal(1)).select_from(self.from_).where(self.key.is_(None)).limit(1)
        return conn.execute(probe).first() is not None

    SAMPLE_ROWS = 20_000  # rows a sampled split reads (text, uuid, timestamp keys)

    def _sampled_cuts(self, conn: sa.Connection, parallelism: int) -> list[Any] | None:
        """PostgreSQL tables with a key that is not a number (text, uuid, timestamps):
        the cuts at quantiles of a sample of the table's pages (`TABLESAMPLE SYSTEM`, about
        SAMPLE_ROWS rows) instead of `parallelism` scans to OFFSETs. Any increasing cuts
        cover every row exactly once; the sample only makes the ranges even. None: not a
        PostgreSQL table, small enough to split exactly, or a sample without rows."""
        if self.engine.dialect.name != "postgresql" or not self.dataset.table:
            return None
        schema, table = _split_table(self.dataset.table)
        name = f"{schema}.{table}" if schema else table
        tuples = conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:n)"), {"n": name}
        ).scalar()
        if tuples is None or tuples < 5 * self.SAMPLE_ROWS:
            return None
        percent = min(100.0, 100.0 * self.SAMPLE_ROWS / float(tuples))
        sample = sa.tablesample(self.from_, sa.func.system(percent), name="s")
        key = sample.c[self.dataset.key]
        fractions = [i / parallelism for i in range(1, parallelism)]
        stmt = (
            sa.select(
                sa.func.percentile_disc(sa.literal(fractions, sa.ARRAY(sa.Float))).within_group(key)
            )
            .select_from(sample)
            .where(key.is_not(None))
        )
        found = conn.execute(stmt).scalar()
        if not found:
            return None
        cuts: list[Any] = []
        for value in found:
            if value is not None and (not cuts or value > cuts[-1]):
                cuts.append(value)
        return cuts or None

    def _quantile_cuts(self, conn: sa.Connection, parallelism: int) -> list[Any]:
        n = (
            conn.execute(
                sa.select(sa.func.count()).select_from(self.from_).where(self.key.is_not(None))
            ).scalar()
            or 0
        )
        cuts: list[Any] = []
        for i in range(1, parallelism):
            value = conn.execute(
                sa.select(self.key)
                .where(self.key.is_not(None))
                .order_by(self.key)
                .offset(n * i // parallelism)
                .limit(1)
            ).scalar()
            if value is not None and (not cuts or value > cuts[-1]):
                cuts.append(value)
        return cuts

    def read(
        self, sel: Selection, bounds: dict[str, Any], batch_size: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        stmt = self.partition_select(sel, bounds)
        dialect = self.engine.dialect.name
        setup = read_setup(setup_dialect(self.engine), sel, self.dataset)
        try:
            with self.engine.connect() as conn, conn.begin():
                run_setup(conn.exec_driver_sql, setup)
                if dialect == "sqlite":
                    yield from _sqlite_batches(conn, stmt, batch_size)
                    return
                result = conn.execute(
                    stmt.execution_options(stream_results=True, max_row_buffer=batch_size)
                )
                while batch := result.fetchmany(batch_size):
                    yield batch  # type: ignore[misc]
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None

    def count(self, sel: Selection, bounds: dict[str, Any]) -> int:
        stmt = (
            sa.select(sa.func.count())
            .select_from(self.from_)
            .where(self._range(bounds), self._where(sel))
        )
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(stmt).scalar() or 0)
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None


def _sqlite_batches(
    conn: sa.Connection, stmt: sa.Select[Any], batch_size: int
) -> Iterator[list[tuple[Any, ...]]]:
    """SQLite's own cursor, which reads lazily: its tuples are the rows. The columns are
    untyped (no result processing), so SQLAlchemy would only wrap each row in a Row, at
    a third of the export's time."""
    cursor = conn.execute(stmt).cursor  # no stream_results: nothing is read ahead
    while batch := cursor.fetchmany(batch_size):
        yield batch  # type: ignore[misc]


def _even_cuts(lo: Any, hi: Any, parts: int) -> list[Any]:
    cuts: list[Any] = []
    for i in range(1, parts):
        if isinstance(lo, int):
            c: Any = lo + (hi - lo + 1) * i // parts
        else:
            c = lo + (hi - lo) * i / parts
        if c > lo and (not cuts or c > cuts[-1]) and c <= hi:
            cuts.append(c)
    return cuts


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value
