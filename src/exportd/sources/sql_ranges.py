"""Key ranges of a SQL partition, for isolating the rows the database cannot compute
(bisection, `execution/export/bisect.py`): a range's rows with their key, the span of its
keys, and a key that splits it. Only read when a partition's plain read failed; a clean
export never comes here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from exportd.outages import source_error
from exportd.sources import Selection
from exportd.sources.sql import (
    SqlSource,
    _db_error_text,
    _jsonable,
    read_setup,
    run_setup,
    setup_dialect,
)

KEY_LABEL = "__exportd_key"


class RowsFailed(Exception):
    """A range's read stopped on a row the database could not compute (a data error:
    division by zero, a bad cast...); `message` is the database's first line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_row_error(exc: sa_exc.DBAPIError) -> bool:
    """A data error of some rows (SQLSTATE class 22 on PostgreSQL, DataError elsewhere),
    as opposed to a failure of the statement or of the connection."""
    if isinstance(exc, sa_exc.DataError):
        return True
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    return str(state).startswith("22")


@dataclass(frozen=True)
class Lower:
    """A range's lower bound on the key: None (the partition's own), inclusive or not."""

    value: Any = None
    strict: bool = False


def key_json(value: Any) -> Any:
    return _jsonable(value)


class KeyRanges:
    """The non-null keys of one partition (its bounds and the selection's filter), read
    by sub-range in key order, each row with its key last."""

    def __init__(self, source: SqlSource, sel: Selection, bounds: dict[str, Any]) -> None:
        self.src = source
        self.sel = sel
        self.base = sa.and_(source._range(bounds), source._where(sel))
        self.nulls = bool(bounds.get("nulls"))
        self.integer = bounds.get("kind") == "int"

    def _cond(self, lo: Lower, hi: Any) -> Any:
        key = self.src.key
        cond = [self.base, key.is_not(None)]
        if lo.value is not None:
            cond.append(key > lo.value if lo.strict else key >= lo.value)
        if hi is not None:
            cond.append(key < hi)
        return sa.and_(*cond)

    def _rows(self, where: Any) -> sa.Select[Any]:
        cols = [self.src.from_.c[c] for c in self.sel.columns]
        return (
            sa.select(*cols, self.src.key.label(KEY_LABEL))
            .select_from(self.src.from_)
            .where(where)
            .order_by(self.src.key)
        )

    def read(self, lo: Lower, hi: Any, batch_size: int) -> Iterator[list[Any]]:
        """The rows of [lo, hi) in key order, in batches; RowsFailed on a data error."""
        return self._stream(self._rows(self._cond(lo, hi)), batch_size)

    def read_nulls(self, batch_size: int) -> Iterator[list[Any]]:
        """The partition's rows whose key is NULL."""
        where = sa.and_(self.base, self.src.key.is_(None))
        return self._stream(self._rows(where), batch_size)

    def _stream(self, stmt: sa.Select[Any], batch_size: int) -> Iterator[list[Any]]:
        try:
            with self.src.engine.connect() as conn, conn.begin():
                # the task's snapshot and the statement timeout, as the plain read had them
                setup = read_setup(setup_dialect(self.src.engine), self.sel, self.src.dataset)
                run_setup(conn.exec_driver_sql, setup)
                result = conn.execute(
                    stmt.execution_options(stream_results=True, max_row_buffer=batch_size)
                )
                while batch := result.fetchmany(batch_size):
                    yield batch  # type: ignore[misc]
        except sa_exc.DBAPIError as exc:
            if is_row_error(exc):
                raise RowsFailed(_db_error_text(exc)) from None
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None

    def _scalar(self, stmt: Any) -> Any:
        try:
            with self.src.engine.connect() as conn:
                return conn.execute(stmt).scalar()
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None

    def span(self, lo: Lower, hi: Any) -> tuple[Any, Any]:
        """The smallest and largest key in [lo, hi) (None, None when it is empty)."""
        where = self._cond(lo, hi)
        key = self.src.key
        first = sa.select(sa.func.min(key)).select_from(self.src.from_).where(where)
        last = sa.select(sa.func.max(key)).select_from(self.src.from_).where(where)
        try:
            with self.src.engine.connect() as conn:
                row = conn.execute(sa.select(first.scalar_subquery(), last.scalar_subquery()))
                a, b = row.one()
        except sa_exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        return a, b

    def split(self, first: Any, last: Any) -> Any:
        """A key m with first < m <= last (first < last): [first, m) and [m, last] both
        hold rows. Integers: the middle; other keys: the median row's key (or the next
        key after `first` when more than half the rows share it)."""
        if self.integer and isinstance(first, int) and isinstance(last, int):
            return first + (last - first + 1) // 2
        key = self.src.key
        where = self._cond(Lower(first), None)
        where = sa.and_(where, key <= last)
        n = self._scalar(sa.select(sa.func.count()).select_from(self.src.from_).where(where))
        mid = self._scalar(
            sa.select(key)
            .select_from(self.src.from_)
            .where(where)
            .order_by(key)
            .offset(int(n or 0) // 2)
            .limit(1)
        )
        if mid is None or mid == first:
            after = sa.and_(self._cond(Lower(first, strict=True), None), key <= last)
            mid = self._scalar(sa.select(sa.func.min(key)).select_from(self.src.from_).where(after))
        return mid

    def count_nulls(self) -> int:
        where = sa.and_(self.base, self.src.key.is_(None))
        stmt = sa.select(sa.func.count()).select_from(self.src.from_).where(where)
        return int(self._scalar(stmt) or 0)
