"""Which database errors mean "the server cannot be reached now" rather than "this work is
wrong": the first kind is ridden out on a time budget (the store, a source), the second
fails the work. Used for the store (PostgreSQL or SQLite) and for SQL sources alike.

Unreachable: the connection could not be made or was lost (refused, reset, closed by a
restarting server), the server is starting up or shutting down, it ran out of
connections, or the transaction was rolled back by a deadlock or serialization failure
(a whole transaction may then simply run again). SQLite's "database is locked" after its
busy timeout (60 s) is contention, not a broken query: it is ridden out too. Everything
else (syntax, constraint, division by zero, a missing table) is a real error."""

from __future__ import annotations

import time

from sqlalchemy import exc as sa_exc

from exportd.errors import SourceError, first_line

# SQLSTATE classes: 08 connection exception, 40 transaction rollback, 53 insufficient
# resources (too many connections, disk full), 57 operator intervention (admin shutdown,
# crash shutdown, cannot connect now), 58 system error (I/O)
_PG_CLASSES = ("08", "40", "53", "57", "58")
_PG_NOT_TRANSIENT = ("57014",)  # query canceled (a statement timeout): the query's own fault
# MySQL/MariaDB client errors: can't connect, server gone away, lost connection, ...
_MYSQL_CODES = frozenset({1040, 1053, 1205, 1213, 2002, 2003, 2005, 2006, 2013, 2055})
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (a SQLAlchemy error or a driver's own) says the database cannot be
    reached now, so that the same work may succeed when it is tried again later."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and _driver_unreachable(exc.orig)
    return _driver_unreachable(exc)


def _driver_unreachable(err: BaseException) -> bool:
    module = type(err).__module__.split(".", 1)[0]
    if module == "psycopg":
        return _psycopg_unreachable(err)
    if module == "pymysql":
        code = err.args[0] if err.args else None
        return code in _MYSQL_CODES
    if module == "sqlite3":
        text = str(err).lower()
        return type(err).__name__ == "OperationalError" and text.startswith(_SQLITE_BUSY)
    return False


def _psycopg_unreachable(err: BaseException) -> bool:
    import psycopg

    if isinstance(err, psycopg.InterfaceError):  # "the connection is closed"
        return "connection is closed" in str(err) or "connection is lost" in str(err)
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = getattr(err, "sqlstate", None)
    if state is None:  # failed before the server answered: refused, reset, timed out
        return True
    return state.startswith(_PG_CLASSES) and state not in _PG_NOT_TRANSIENT


def source_error(exc: BaseException, code: str) -> SourceError:
    """The SourceError for a failed read of a source database: SOURCE_UNAVAILABLE and
    transient when it could not be reached (ridden out, no attempt used; the message
    names no host nor port), else `code` with the database's own first line."""
    if unreachable(exc):
        orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
        return SourceError(
            f"the source database cannot be reached ({type(orig).__name__})",
            "SOURCE_UNAVAILABLE",
            transient=True,
        )
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return SourceError(first_line(exc), code)


class SourceOutage:
    """The `transient` rule for riding out a source outage (with `ride_out` and an
    unbounded budget): an error that says the source cannot be reached, for `budget`
    seconds counted from the first such error, not from the start of the work (which
    may have read for a long time before the source went away). `left` is what that
    budget still allows (for `ride_out`'s log line)."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.first: float | None = None

    def __call__(self, exc: BaseException) -> bool:
        if not (isinstance(exc, SourceError) and exc.transient):
            return False
        if self.first is None:
            self.first = time.monotonic()
        return time.monotonic() - self.first < self.budget

    def left(self) -> float:
        if self.first is None:
            return self.budget
        return max(0.0, self.budget - (time.monotonic() - self.first))


def source_outage(budget: float) -> SourceOutage:
    return SourceOutage(budget)
