"""The connection policy: which databases and files a dataset may read, for every caller.

Three rules, checked when a URL is registered and again whenever a source connection is
opened (a file swapped for a symlink, or a host name that now resolves elsewhere, gains
nothing):
- a SQLite source is an existing file, named by an absolute path, under one of the
  configured source directories (`EXPORTD_SOURCE_DIRS`), and not exportd's own data
  (the files of its data directory, its local storage);
- exportd's own store is never a source, however its URL is spelled: a SQLite file is
  compared by identity (device and inode), a PostgreSQL database after connecting, by the
  server's identity (system identifier, else start time) and the database's own name;
- a connection that fails says only that the source is unavailable: whether nothing
  listens, something else answers, the host is unknown or the password wrong is logged
  for the administrator, never shown to a caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from exportd.errors import BadRequest, Forbidden, Unavailable, first_line
from exportd.store import normalize_url

log = logging.getLogger(__name__)

UNAVAILABLE_MSG = "the source database could not be reached (details are in the server log)"
STORE_MSG = "this source is exportd's own store: it cannot be a dataset"
OUTSIDE_MSG = (
    "a SQLite source must be an existing file under a configured source directory "
    "(EXPORTD_SOURCE_DIRS), and not one of exportd's own files"
)

# backend -> the drivers a source may use (those exportd ships and tests)
DRIVERS: dict[str, frozenset[str]] = {
    "sqlite": frozenset({"pysqlite"}),
    "postgresql": frozenset({"psycopg"}),
    "mysql": frozenset({"pymysql"}),
    "mariadb": frozenset({"pymysql"}),
}
SQLITE_SIDECARS = ("", "-wal", "-shm", "-journal")


class SourceNotAllowed(Forbidden):
    error_code = "SOURCE_NOT_ALLOWED"


class SourceUnavailable(Unavailable):
    error_code = "SOURCE_UNAVAILABLE"


@dataclass(frozen=True)
class PgIdentity:
    """Which PostgreSQL database a connection reached: its name as the server knows it,
    and the server (the cluster's system identifier when readable, its start time)."""

    database: str
    system_id: str | None
    started: str

    def same_database(self, other: PgIdentity) -> bool:
        if self.database != other.database:
            return False
        if self.system_id and other.system_id:
            return self.system_id == other.system_id
        return self.started == other.started


def pg_identity(dbapi_conn: Any) -> PgIdentity:
    """Ask a connected server who it is (its transaction is rolled back afterwards)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SELECT current_database(), pg_postmaster_start_time()::text")
        database, started = cur.fetchone()
        dbapi_conn.rollback()
        try:  # readable by default; an administrator may have revoked it
            cur.execute("SELECT system_identifier::text FROM pg_control_system()")
            system_id = cur.fetchone()[0]
        except Exception:
            system_id = None
        dbapi_conn.rollback()
    finally:
        cur.close()
    return PgIdentity(str(database), system_id, str(started))


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def sqlite_path(url: sa.URL) -> str:
    """The file a SQLite URL names: an absolute path and nothing else (no `file:` URI,
    no `?uri=true` nor other options, no relative path that depends on the process's
    working directory, no in-memory database)."""
    database = url.database or ""
    if url.query or database.lower().startswith("file:"):
        raise SourceNotAllowed(
            "a SQLite source URL takes no options and no file: URI: sqlite:////absolute/path",
            "SOURCE_NOT_ALLOWED",
        )
    if not database or database == ":memory:" or not os.path.isabs(database):
        raise SourceNotAllowed(OUTSIDE_MSG, "SOURCE_NOT_ALLOWED")
    return database


def parse_source_url(url: str) -> sa.URL:
    """The URL as SQLAlchemy reads it, with the driver exportd uses for its backend; an
    unknown backend or driver is bad input. Never echoes the URL (it holds a password)."""
    try:
        u = sa.make_url(normalize_url(url))
        backend, driver = u.get_backend_name(), u.get_driver_name()
    except (sa_exc.ArgumentError, ValueError):
        raise BadRequest("unusable database URL", "INVALID_URL") from None
    if driver not in DRIVERS.get(backend, frozenset()):
        known = ", ".join(sorted(DRIVERS))
        raise BadRequest(f"unsupported database URL: use one of {known}", "INVALID_URL")
    return u


class SourcePolicy:
    """The rules above, for one server: its source directories, its own data (data
    directory, local storage, the store's file) and the store's PostgreSQL identity."""

    def __init__(
        self,
        source_dirs: Iterable[Path],
        store_url: str,
        data_dir: Path | None = None,
        own_dirs: Iterable[Path] = (),
        store_engine: Callable[[], sa.Engine] | None = None,
    ) -> None:
        self.source_dirs = [_real(d) for d in source_dirs]
        self.data_dir = _real(data_dir) if data_dir is not None else None
        self.own_dirs = [_real(d) for d in own_dirs]
        store = sa.make_url(normalize_url(store_url))
        self.store_backend = store.get_backend_name()
        self.store_file = store.database if self.store_backend == "sqlite" else None
        self._store_engine = store_engine
        self._store_identity: PgIdentity | None = None
        self._lock = threading.Lock()

    # ---- files ---------------------------------------------------------------------------

    def is_own_file(self, path: str | Path) -> bool:
        """exportd's own data: a file of the data directory itself (the SQLite store,
        the admin token, the link secret), anything under the local storage (every
        project's outputs), or the store's file (a hard link to it, its journal) wherever
        it is. Subdirectories of the data directory may hold sources."""
        real = _real(path)
        if _under(real, self.own_dirs) or (self.data_dir and real.parent == self.data_dir):
            return True
        if self.store_file:
            return any(_same_file(path, self.store_file + s) for s in SQLITE_SIDECARS)
        return False

    def check_sqlite_file(self, path: str) -> None:
        """A SQLite source file: existing, under a source directory, not exportd's."""
        if self.store_file and _same_file(path, self.store_file):
            raise SourceNotAllowed(STORE_MSG, "SOURCE_NOT_ALLOWED")
        real = _real(path)
        if not real.is_file() or not _under(real, self.source_dirs) or self.is_own_file(real):
            raise SourceNotAllowed(OUTSIDE_MSG, "SOURCE_NOT_ALLOWED")

    def check_directory(self, directory: str | Path) -> Path:
        """A files connection's directory: existing, under a source directory, unable to
        reach exportd's own data. Returns it resolved."""
        real = _real(directory)
        if not real.is_dir() or not _under(real, self.source_dirs) or self.reaches_own_data(real):
            raise SourceNotAllowed(
                "a files connection must be an existing directory under a configured source "
                "directory (EXPORTD_SOURCE_DIRS), away from exportd's own data",
                "SOURCE_NOT_ALLOWED",
            )
        return real

    def reaches_own_data(self, directory: str | Path) -> bool:
        """Whether a glob rooted at `directory` could reach exportd's own data."""
        real = _real(directory)
        if self.data_dir and (real == self.data_dir or real in self.data_dir.parents):
            return True
        return any(real == d or real in d.parents or d in real.parents for d in self.own_dirs)

    # ---- URLs and connections -----------------------------------------------------------

    def check_url(self, url: str) -> sa.URL:
        """What can be told before connecting: a supported backend, and for SQLite the
        file's place and identity."""
        u = parse_source_url(url)
        if u.get_backend_name() == "sqlite":
            self.check_sqlite_file(sqlite_path(u))
        return u

    def guard(self, engine: sa.Engine) -> None:
        """Check every connection the engine opens, and hide why one could not be made."""
        event.listen(engine, "do_connect", self._connect)

    def _connect(self, dialect: sa.Dialect, _rec: Any, cargs: Any, cparams: Any) -> Any:
        dbapi = dialect.loaded_dbapi
        if dialect.name == "sqlite":
            self.check_sqlite_file(str(cargs[0]) if cargs else "")
        try:
            raw = dialect.connect(*cargs, **cparams)
        except Exception as exc:  # refused, timed out, unknown host, bad password: one answer
            log.warning("a source connection (%s) failed: %s", dialect.name, first_line(exc))
            raise dbapi.OperationalError(UNAVAILABLE_MSG) from None
        try:
            self._check_connected(dialect.name, raw)
        except BaseException:
            raw.close()
            raise
        return raw

    def _check_connected(self, dialect: str, raw: Any) -> None:
        if dialect == "sqlite":
            main = [row[2] for row in raw.execute("PRAGMA database_list") if row[1] == "main"]
            self.check_sqlite_file(main[0] if main else "")
            return
        same_backend = dialect == "postgresql" and self.store_backend == "postgresql"
        if same_backend and self._is_store(pg_identity(raw)):
            raise SourceNotAllowed(STORE_MSG, "SOURCE_NOT_ALLOWED")

    def _is_store(self, source: PgIdentity) -> bool:
        """Compare with the store's identity, asked again when the cached one cannot
        decide (no system identifier on one side: the start time changes on restarts)."""
        if self._store_engine is None:
            return False
        with self._lock:
            known = self._store_identity
            if known is None or not (known.system_id and source.system_id):
                known = self._store_identity = self._ask_store()
        return source.same_database(known)

    def _ask_store(self) -> PgIdentity:
        assert self._store_engine is not None
        raw = self._store_engine().raw_connection()
        try:
            return pg_identity(raw)
        finally:
            raw.close()


def probe(engine: sa.Engine) -> None:
    """Open one connection now (at registration): refused by the policy is a 403, any
    other failure the one generic 503."""
    try:
        with engine.connect():
            pass
    except sa_exc.DBAPIError:
        raise SourceUnavailable(UNAVAILABLE_MSG, "SOURCE_UNAVAILABLE") from None
