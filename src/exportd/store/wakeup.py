"""Wake-ups for idle workers: LISTEN/NOTIFY on PostgreSQL, a condition within a process,
and polling as the safety net whichever is used."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class Waker:
    def __init__(self, pg_engine: Any, channel: str) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._pg_engine = pg_engine
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
        if self._pg_engine is None or self._listener is not None:
            return
        self._listener = threading.Thread(target=self._listen, name="exportd-listen", daemon=True)
        self._listener.start()

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
