"""Item-level partial success for SQL exports: a partition whose read failed on a data
error (a row the database cannot compute) is read again by key range, splitting every
range that fails in two until the failing rows are isolated, down to single keys. Every
good row is written once, in key order; every bad key is one failed item (its key and the
database's message).

The cost is paid only where a failure is: a clean partition never comes here. A failed
partition is read once more from its start; each bad key then costs about log2(keys of
its range) short reads (each stops at the first failing batch) and min/max probes, and
the good rows are read once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from exportd.errors import SourceError
from exportd.execution.heartbeat import Heartbeat
from exportd.formats.splitting import PartOutput
from exportd.sources.sql import SqlSource
from exportd.sources.sql_ranges import KeyRanges, Lower, RowsFailed, key_json

log = logging.getLogger(__name__)

MAX_FAILED_KEYS = 1000  # per partition: beyond, the partition fails as a whole
LISTED_KEYS = 100  # failed items kept with their key and message, per partition
DENSE_FAILURES = 10  # this many failed keys, more than the good rows: most rows fail


class TooManyFailures(SourceError):
    pass


def bisectable(source: object, exc: BaseException) -> bool:
    """A partition's failure that bisection may narrow down: a SQL source's failed read
    (not an outage: that is ridden out elsewhere)."""
    return (
        isinstance(source, SqlSource)
        and source.key is not None  # a keyless table split by ctid pages: nothing to bisect
        and isinstance(exc, SourceError)
        and not exc.transient
        and exc.error_code == "SOURCE_QUERY_FAILED"
    )


@dataclass
class Bisection:
    ranges: KeyRanges
    out: PartOutput
    hb: Heartbeat
    batch_size: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    failed_count: int = 0
    reads: int = 0  # range reads made, for the log

    def run(self) -> None:
        self._range(Lower(), None)
        if self.ranges.nulls:
            self._nulls()

    def _fail(self, key: Any, rows: int, message: str) -> None:
        self.failed_count += rows
        if len(self.failed) < LISTED_KEYS:
            self.failed.append({"key": key_json(key), "error_msg": message})
        if self.failed_count > MAX_FAILED_KEYS:
            raise TooManyFailures(
                f"more than {MAX_FAILED_KEYS} rows of the partition failed; last: {message}",
                "SOURCE_QUERY_FAILED",
            )
        if self.failed_count >= DENSE_FAILURES and self.failed_count > self.out.rows:
            # not some rows but most: the partition fails (one key at a time would cost a
            # read of the query per key)
            raise TooManyFailures(message, "SOURCE_QUERY_FAILED")

    def _range(self, lo: Lower, hi: Any) -> None:
        """Write every good row of [lo, hi), isolating its failing keys."""
        while True:
            resume = self._stream(lo, hi)
            if resume is None:
                return
            progressed, lo_next, message = resume
            if progressed:  # rows were written up to a key: go on from there
                lo = lo_next
                continue
            first, last = self.ranges.span(lo, hi)
            if first is None:  # nothing left (the rows changed under us)
                return
            if first == last:  # one key, and it fails: one failed item
                self._fail(first, 1, message)
                return
            mid = self.ranges.split(first, last)
            self._range(Lower(first), mid)
            self._range(Lower(mid), hi)
            return

    def _stream(self, lo: Lower, hi: Any) -> tuple[bool, Lower, str] | None:
        """Read [lo, hi) writing whole key groups (a key's rows are written once the
        next key shows, so a failure never leaves half a key written). None: done; else
        whether rows were written, where to resume, and the database's message."""
        self.reads += 1
        written = False
        group: list[Any] = []
        group_key: Any = None
        ready: list[Any] = []
        try:
            for batch in self.ranges.read(lo, hi, self.batch_size):
                self.hb.check()
                for row in batch:
                    key = row[-1]
                    if group and key != group_key:
                        ready.extend(group)
                        group = []
                    group_key = key
                    group.append(tuple(row)[:-1])
                if ready:
                    self.out.write(ready)
                    written, ready = True, []
                    self.hb.progress(self.out.rows, self.out.size)
        except RowsFailed as exc:
            if ready:
                self.out.write(ready)
                written = True
                self.hb.progress(self.out.rows, self.out.size)
            resume = Lower(group_key) if group else lo
            return written, resume, exc.message
        ready.extend(group)
        if ready:
            self.out.write(ready)
            self.hb.progress(self.out.rows, self.out.size)
        return None

    def _nulls(self) -> None:
        """Rows whose key is NULL cannot be told apart: kept whole, or one failed item."""
        rows: list[Any] = []
        try:
            for batch in self.ranges.read_nulls(self.batch_size):
                self.hb.check()
                rows.extend(tuple(r)[:-1] for r in batch)
        except RowsFailed as exc:
            self._fail(None, self.ranges.count_nulls(), exc.message)
            return
        if rows:
            self.out.write(rows)
            self.hb.progress(self.out.rows, self.out.size)
