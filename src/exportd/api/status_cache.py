"""The status bodies the API process answered lately, by task and entity tag, so that a
poller (or many, on one task) costs one indexed read while nothing changes, not a rebuild
of the body. An entry is used only while its tag is the task's current tag (nothing
stored that the body shows has changed) and for at most `MAX_AGE` seconds (the body's
time-derived fields, `rows_per_second`, `eta_seconds` and the signed download links, are
as of its building). When it is older, one request builds its successor, and the others
that ask for the same tag meanwhile get the older body rather than wait for that build
(so a body is at most `MAX_AGE` plus one build old, and only one request a second waits
for a build: 200 pollers of a running task had their p99 set by the ones that waited)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Key = tuple[str, ...]
Build = Callable[[], Awaitable[tuple[Key, bytes, dict[str, str]]]]

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
        self._building: dict[Key, asyncio.Future[tuple[Key, bytes, dict[str, str]]]] = {}

    async def get_or_build(self, key: Key, build: Build) -> tuple[Key, bytes, dict[str, str]]:
        """The kept body for `key`, or the one `build()` makes (and its own key: the tag
        may have moved meanwhile), kept. Requests that miss the same key while it is
        being built wait for that one build instead of each building it: many pollers
        of a task whose kept body just expired would otherwise rebuild it all at once,
        each in a thread, on a busy machine for longer and longer (event loop only)."""
        cached = self.get(key)
        if cached is not None:
            return key, cached.content, cached.headers
        pending = self._building.get(key)
        if pending is not None:
            older = self.while_building(key)
            if older is not None:
                return key, older.content, older.headers
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[Key, bytes, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._building[key] = future
        try:
            built = await build()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, get it too
            raise
        finally:
            self._building.pop(key, None)
        self.put(*built)
        future.set_result(built)
        return built

    def get(self, key: tuple[str, ...]) -> Body | None:
        """The kept body of `key` while it is at most `max_age` old (an older one stays
        kept, for `while_building`, until its successor replaces it)."""
        with self._lock:
            body = self._items.get(key)
            if body is None or time.monotonic() - body.built > self.max_age:
                return None
            self._items.move_to_end(key)
            return body

    def while_building(self, key: tuple[str, ...]) -> Body | None:
        """The older kept body of `key` while a request builds its successor (None: no
        build is under way, or nothing is kept for that tag)."""
        if key not in self._building:
            return None
        with self._lock:
            return self._items.get(key)

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
