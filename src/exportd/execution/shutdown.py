"""Graceful shutdown: a process told to stop (SIGTERM) stops claiming at once, lets the
units of work in hand finish within a grace period, and then hands their leases back to
the store, so that another worker takes them up at once instead of after their expiry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

Release = Callable[[], object]  # a fenced hand-back of one lease in hand


class Shutdown:
    """The leases a process holds, for handing back when its grace period is over."""

    def __init__(self) -> None:
        self.draining = threading.Event()  # no new claims
        self.abandoned = threading.Event()  # the grace is over: units in hand are given up
        self._lock = threading.Lock()
        self._held: dict[int, Release] = {}

    @contextmanager
    def holding(self, release: Release) -> Iterator[None]:
        """While the block runs, `release` hands its lease back if the grace runs out; a
        unit started after that is handed back at once."""
        key = id(release)
        with self._lock:
            self._held[key] = release
        try:
            if self.abandoned.is_set():
                self._release(release)
            yield
        finally:
            with self._lock:
                self._held.pop(key, None)

    def abandon(self) -> int:
        """Hand back every lease still in hand; the units' own fenced writes then fail as
        a lost lease does, and nothing they did after this counts. Returns how many."""
        self.abandoned.set()
        with self._lock:
            held = list(self._held.values())
        for release in held:
            self._release(release)
        return len(held)

    @staticmethod
    def _release(release: Release) -> None:
        try:
            release()
        except Exception as exc:  # the store is out of reach: the lease lapses instead
            log.warning("a lease could not be handed back (%s); it will lapse", type(exc).__name__)
