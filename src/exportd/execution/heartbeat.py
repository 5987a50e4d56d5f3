"""A lease kept alive by a background thread, so that a slow query or a long write never
lets it lapse, while the working thread checks it between batches."""

from __future__ import annotations

import contextvars
import logging
import math
import threading
from collections.abc import Callable

from exportd.errors import Canceled, LeaseLost
from exportd.model import TaskStatus

log = logging.getLogger(__name__)

# a beat renews the lease and answers the task's status, or None when the lease is lost
Beat = Callable[[int, int], TaskStatus | None]


PROGRESS_SECONDS = 1.0  # progress saved about once a second between two beats


class Heartbeat:
    def __init__(
        self,
        beat: Beat,
        interval: float,
        keep_running: TaskStatus | None,
        save: Beat | None = None,
    ) -> None:
        """`save`: records the progress only (a light, fenced write), called about once a
        second between beats when the counts moved; it answers like a beat."""
        self._beat = beat
        self._save = save
        self._interval = interval
        self._keep = keep_running  # stop the work when the task leaves this status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exportd-heartbeat", daemon=True)
        self.rows = 0
        self.bytes = 0
        self.lost = False
        self.canceled: TaskStatus | None = None

    def __enter__(self) -> Heartbeat:
        ctx = contextvars.copy_context()  # its log lines name the unit of work too
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run,), name="exportd-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def progress(self, rows: int, written: int) -> None:
        self.rows, self.bytes = rows, written

    def check(self) -> None:
        """Raise if the work must stop: the lease is gone, or the task was ended."""
        if self.lost:
            raise LeaseLost()
        if self.canceled is not None:
            raise Canceled(self.canceled.value)

    def beat_now(self) -> None:
        self._apply(self._beat(self.rows, self.bytes))

    def _apply(self, status: TaskStatus | None) -> None:
        if status is None:
            self.lost = True
        elif self._keep is not None and status is not self._keep:
            self.canceled = status

    def _run(self) -> None:
        # the interval cut into ticks of at most PROGRESS_SECONDS: a beat every `per` ticks
        per = 1 if self._save is None else max(1, math.ceil(self._interval / PROGRESS_SECONDS))
        tick, ticks = self._interval / per, 0
        saved = (self.rows, self.bytes)
        while not self._stop.wait(tick):
            ticks += 1
            try:
                if ticks % per == 0:
                    saved = (self.rows, self.bytes)
                    self._apply(self._beat(*saved))
                elif self._save is not None and (self.rows, self.bytes) != saved:
                    saved = (self.rows, self.bytes)
                    self._apply(self._save(*saved))
            except Exception as exc:  # a store hiccup: try again; the lease may still hold
                log.warning("heartbeat failed: %s", type(exc).__name__)
            if self.lost or self.canceled:
                return
