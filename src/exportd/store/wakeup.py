"""Wake-ups for idle workers: LISTEN/NOTIFY on PostgreSQL, a condition within a process,
and polling as the safety net whichever is used. Between the processes of one SQLite
store (`exportd serve`'s worker processes, `exportd worker` beside `serve`), every commit
that makes work bumps the database header's `user_version` (see `StoreBase._notify`),
and an idle process reads it every `SQLITE_WAKE_SECONDS`: a header read, no disk I/O."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


SQLITE_WAKE_SECONDS = 0.01


class Waker:
    def __init__(self, pg_engine: Any, channel: str, sqlite_path: str | None = None) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._pg_engine = pg_engine
        self._sqlite_path = sqlite_path
        self._channel = channel
        self._listener: threading.Thread | None = None
        self._closed = threading.Event()

    def notify_local(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Sleep until new work may exist or `timeout` passes."""
        self._ensure_listener()
        with self._cond:
            start = self._generation
            self._cond.wait_for(lambda: self._generation != start, timeout=timeout)

    def close(self) -> None:
        self._closed.set()

    def _ensure_listener(self) -> None:
        if self._listener is not None:
            return
        if self._pg_engine is not None:
            target = self._listen
        elif self._sqlite_path is not None:
            target = self._watch_sqlite
        else:
            return
        self._listener = threading.Thread(target=target, name="exportd-listen", daemon=True)
        self._listener.start()

    def _watch_sqlite(self) -> None:
        """Wake this process's idle workers when another process made work."""
        import sqlite3

        assert self._sqlite_path is not None
        last: int | None = None
        while not self._closed.is_set():
            try:
                conn = sqlite3.connect(self._sqlite_path, timeout=5, check_same_thread=False)
                try:
                    while not self._closed.wait(SQLITE_WAKE_SECONDS):
                        (now,) = conn.execute("PRAGMA user_version").fetchone()
                        if last is not None and now != last:
                            self.notify_local()
                        last = now
                finally:
                    conn.close()
            except sqlite3.Error as exc:  # e.g. the file is briefly locked: poll again
                log.warning("store wake-up read failed (%s); polling", type(exc).__name__)
                self._closed.wait(1.0)

    def _listen(self) -> None:
        import psycopg

        url = self._pg_engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self._closed.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.notify_local()
            except Exception as exc:  # the listener must outlive a database restart
                log.warning(
                    "LISTEN connection lost (%s); polling until it is back", type(exc).__name__
                )
                self._closed.wait(2.0)
