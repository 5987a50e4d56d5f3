"""The status bodies the API process answered lately, by task and entity tag, so that a
poller (or many, on one task) costs one indexed read while nothing changes, not a rebuild
of the body. An entry is used only while its tag is the task's current tag (nothing
stored that the body shows has changed) and for at most `MAX_AGE` seconds (the body's
time-derived fields, `rows_per_second`, `eta_seconds` and the signed download links, are
as of its building)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_AGE = 1.0
MAX_ENTRIES = 2048
MAX_BYTES = 32 << 20


@dataclass(frozen=True)
class Body:
    content: bytes
    headers: dict[str, str]
    built: float


class StatusCache:
    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self._items: OrderedDict[tuple[str, ...], Body] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> Body | None:
        with self._lock:
            body = self._items.get(key)
            if body is None:
                return None
            if time.monotonic() - body.built > self.max_age:
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return body

    def put(self, key: tuple[str, ...], content: bytes, headers: dict[str, str]) -> None:
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = Body(content, headers, time.monotonic())
            self._bytes += len(content)
            while self._items and (len(self._items) > MAX_ENTRIES or self._bytes > MAX_BYTES):
                self._drop(next(iter(self._items)))

    def _drop(self, key: tuple[str, ...]) -> None:
        self._bytes -= len(self._items.pop(key).content)
