"""PostgreSQL -> CSV/TSV through `COPY (SELECT ...) TO STDOUT`, rendered by the server
byte-identically to the generic writer."""

from __future__ import annotations

import functools
import re
import select
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from exportd.fastpaths.base import Progress, sql_table
from exportd.formats import Column, Format
from exportd.formats.cells import SPREADSHEET_TRIGGERS
from exportd.formats.parquet import _TZ
from exportd.formats.splitting import PartOutput
from exportd.formats.text import CsvFormat, CsvOptions
from exportd.outages import source_error
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlSource, read_setup, run_setup

COPY_CHUNK = 1 << 20


FLUSH_SECONDS = 0.25


_COPY_SAFE_CHARS = set(",;|\t:#!$%&*~^ '\"`/")


_CSV_KINDS = {"int", "decimal", "float", "str", "bool", "date", "datetime", "bytes"}


def copy_supports(opts: CsvOptions, columns: Sequence[Column]) -> bool:
    times = opts.times
    return (
        opts.line_ending == "\n"
        and opts.delimiter in _COPY_SAFE_CHARS
        and opts.quote in _COPY_SAFE_CHARS
        and opts.null.isascii()
        and times.datetime_format is None
        and times.date_format is None
        and all(c.kind in _CSV_KINDS for c in columns)
        # COPY prints a real (float4) with a double's digits (3.3333332538604736), the
        # generic writer with the real's own shortest (3.3333333)
        and not any(c.type.upper() in _REAL_TYPES for c in columns)
    )


_REAL_TYPES = ("REAL", "FLOAT4", "FLOAT(24)")


def _text_expr(col: Any, c: Column, opts: CsvOptions, drained: int = 0) -> Any:
    """A column rendered in SQL exactly as the generic CSV writer renders it, but for
    what the C drain does to it (`drained`, see `drain_kinds`): UTC timestamps left in
    the ISO DateStyle's text, text left as it is."""
    if c.kind == "str":
        if not opts.spreadsheet_safe or drained == SAFE_TEXT:
            return col
        # ascii() reads the first character's code without making a text (left() does);
        # most text starts above every trigger, so one comparison settles most cells
        codes = sorted(ord(t) for t in SPREADSHEET_TRIGGERS)
        first = sa.func.ascii(col)
        risky = sa.and_(first <= codes[-1], first.in_(codes))
        return sa.case((risky, sa.literal("'") + col), else_=col)
    if c.kind == "bool":
        return sa.case((col.is_(True), sa.literal("true")), (col.is_(False), sa.literal("false")))
    if _utc_stamp(c, opts):
        return _utc_timestamp_text(col, bool(_TZ.search(c.type)), rewritten=bool(drained))
    if c.kind in ("date", "datetime"):
        return _json_text(col)
    if c.kind == "bytes":
        return sa.func.translate(sa.func.encode(col, "base64"), "\n", "")
    if c.kind == "float" and c.type.upper() in ("REAL", "FLOAT4", "FLOAT(24)"):
        return sa.cast(col, pg.DOUBLE_PRECISION)  # as psycopg hands it to the generic path
    return col


def _json_text(col: Any) -> Any:
    """ISO 8601 as JSON writes it: exact in every zone and for every year, but costly
    (the value goes through a JSON text)."""
    return sa.func.to_json(col).op("#>>")(sa.literal_column("'{}'"))


def _utc_stamp(c: Column, opts: CsvOptions) -> bool:
    return c.kind == "datetime" and opts.times.zone_name.upper() == "UTC" and c.type != "unknown"


def _utc_timestamp_text(col: Any, aware: bool, rewritten: bool = False) -> Any:
    """The same text as `_json_text` for years 1-9999 in UTC, at a third of its cost:
    the ISO DateStyle's `2013-01-01 05:00:00+00` with a `T` and the offset's minutes
    (UTC's offset is always +00). Other years (and infinities) take the JSON route.
    `rewritten`: the ISO DateStyle's text as it is, the `T` and the minutes added by the
    C drain (`append_row` in pgbinary.c), which costs the server nothing: the SQL
    `replace` and `||` were a sixth of the backend's CPU on the bench's table."""
    text: Any = sa.cast(col, sa.Text)
    if not rewritten:
        text = sa.func.replace(text, " ", "T")
        if aware:
            text = text + sa.literal(":00")
    first: Any = sa.literal_column("'0001-01-01'")
    usual = sa.and_(col >= first, col < sa.literal_column("'10000-01-01'"))
    return sa.case((usual, text), else_=_json_text(col))


def _compiled(source: SqlSource, stmt: sa.Select[Any]) -> tuple[str, dict[str, Any]]:
    compiled = stmt.compile(
        dialect=source.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    return compiled.string, dict(compiled.params)


def _copy_options(opts: CsvOptions) -> str:
    def lit(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    return (
        f"FORMAT csv, HEADER false, DELIMITER {lit(opts.delimiter)}, QUOTE {lit(opts.quote)}, "
        f"ESCAPE {lit(opts.quote)}, NULL {lit(opts.null)}, ENCODING 'UTF8'"
    )


# a field the C drain rewrites: the ISO DateStyle's shape, which a field of the JSON
# route (a `T`) and the other columns' rendering never have
_ISO_STYLE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(\+00)?"
)


# what the C drain does to a column's fields (`append_row` in pgbinary.c)
STAMP, STAMP_TZ, SAFE_TEXT = 1, 2, 3


def drain_kinds(opts: CsvOptions, columns: Sequence[Column]) -> bytes:
    """For the C drain (`copy_chunk`): a byte per column, STAMP (a UTC timestamp) and
    STAMP_TZ (a UTC timestamptz) whose ISO DateStyle text it rewrites as ISO 8601,
    SAFE_TEXT (text of a spreadsheet-safe export) which it neutralises as `neutralise`
    does (a `'` before a leading trigger), 0 left alone; empty when it does nothing.
    Stamps stay with the SQL where COPY would quote them (a delimiter or quote that a
    timestamp holds) or the NULL marker has their shape; text stays with the SQL where
    the `'` would change COPY's quoting: a delimiter or quote `'`, or a NULL marker
    starting with `'` or a trigger (then COPY quotes the value that equals it, but not
    the value with its `'`)."""
    dialect = {opts.delimiter, opts.quote}
    stamps_ok = not dialect & set(" :-.") and not _ISO_STYLE.fullmatch(opts.null)
    text_ok = (
        opts.spreadsheet_safe
        and "'" not in dialect
        and not opts.null.startswith(("'", *SPREADSHEET_TRIGGERS))
    )
    kinds = bytes(
        (STAMP_TZ if _TZ.search(c.type) else STAMP) if stamps_ok and _utc_stamp(c, opts)
        else SAFE_TEXT if text_ok and c.kind == "str"
        else 0
        for c in columns
    )  # fmt: skip
    return kinds if any(kinds) else b""


class PgCopyCsv:
    def __init__(self, source: SqlSource, opts: CsvOptions, columns: Sequence[Column]) -> None:
        from exportd.fastpaths.pg_binary import native

        self.source, self.opts, self.columns = source, opts, list(columns)
        self.drained = drain_kinds(opts, self.columns) if native() is not None else b""

    def statement(self, sel: Selection, bounds: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        kinds = self.drained or bytes(len(self.columns))
        exprs = [
            _text_expr(self.source.from_.c[name], col, self.opts, kind).label(f"c{i}")
            for i, (name, col, kind) in enumerate(
                zip(sel.columns, self.columns, kinds, strict=True)
            )
        ]
        query, params = _compiled(self.source, self.source.partition_select(sel, bounds, exprs))
        return f"COPY ({query}) TO STDOUT WITH ({_copy_options(self.opts)})", params

    def export(self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress) -> None:
        import psycopg

        statement, params = self.statement(sel, bounds)
        try:
            raw = self.source.engine.raw_connection()
        except sa.exc.DBAPIError as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        done = False
        try:
            conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
            conn.rollback()
            with conn.cursor() as cur:  # one read-only transaction, rolled back at the end
                # the task's snapshot and the statement timeout, before any query
                run_setup(cur.execute, read_setup("postgresql", sel, self.source.dataset))
                cur.execute("SET TRANSACTION READ ONLY")
                cur.execute("SELECT set_config('TimeZone', %s, true)", [self.opts.times.zone_name])
                cur.execute("SET LOCAL extra_float_digits = 1")
                cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
                sql = psycopg.ClientCursor(conn).mogrify(statement, params)
            copy = CopyOut(conn)
            dialect = self.opts.delimiter.encode(), self.opts.quote.encode()
            self._stream(copy.chunks(sql.encode(), self.drained, *dialect), out, hb)
            conn.rollback()
            done = True
            out.count(copy.rows)
        except psycopg.Error as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        finally:
            if done:
                raw.close()
            else:  # maybe mid-COPY: the connection is closed, never reused
                raw.invalidate()

    def _stream(self, chunks: Iterator[bytes], out: PartOutput, hb: Progress) -> None:
        """Write the server's CSV into the part chunk by chunk (the part exists, empty,
        when the COPY sends no row)."""
        out.write_encoded(b"", 0)
        lines = 0
        for chunk in chunks:
            lines += self._flush(chunk, out, hb, lines)

    @staticmethod
    def _flush(data: bytes, out: PartOutput, hb: Progress, lines: int) -> int:
        """Write a chunk; progress counts lines (rows, but for text holding newlines)."""
        hb.check()
        if not data:
            return 0
        n = data.count(b"\n")
        out.write_encoded(data, 0)
        hb.progress(lines + n, out.size)
        return n


class CopyOut:
    """`COPY ... TO STDOUT` read at libpq's level, in chunks of up to COPY_CHUNK bytes.

    The server sends one message per row; psycopg's `Copy` hands them over one at a time
    through a few generator layers, which cost as much CPU as the rest of the export.
    With the C module (`pg_binary.native()`) one call drains up to a chunk with the GIL
    released; else this loop drains what libpq has buffered in one go and waits on the
    socket (never holding the GIL) when it has nothing. A chunk is handed over at least
    every FLUSH_SECONDS (empty when no row came: the caller can still notice a cancel)."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.pg = conn, conn.pgconn
        self.rows = 0

    def chunks(
        self, sql: bytes, kinds: bytes = b"", delimiter: bytes = b",", quote: bytes = b'"'
    ) -> Iterator[bytes]:
        """The COPY's data, the fields of the columns marked in `kinds` rewritten by the
        C drain (`drain_kinds`: only with the C module) for the CSV dialect given."""
        from exportd.fastpaths.pg_binary import native

        mod = native()
        if mod is None:
            assert not kinds, "the drain's rewrites need the C module"
            self._start(sql)
            yield from self._data()
            self._end()
            return
        read = functools.partial(functools.partial, mod.copy_chunk)
        args = (COPY_CHUNK, FLUSH_SECONDS, kinds, delimiter, quote)
        for state, data in self.stream(sql, read, *args):
            if data or not state:
                yield data

    def stream(self, sql: bytes, make: Callable[[int], Callable[..., Any]], *args: Any) -> Any:
        """Run the COPY and call the C reader `make(pgconn_ptr)` with `args` until its
        answer's first item (the state) says that the COPY ended (1) or that libpq
        failed (2); its answers."""
        self._start(sql)
        read = make(self.pg.pgconn_ptr)
        while True:
            answer = read(*args)
            yield answer
            state = answer[0]
            if state:
                break
        if state == 2:  # as psycopg's get_copy_data says it
            import psycopg

            msg = self.pg.error_message.decode(errors="replace").strip()
            raise psycopg.OperationalError(f"receiving copy data failed: {msg}")
        self._end()

    def _start(self, sql: bytes) -> None:
        from psycopg import pq

        self.pg.send_query(sql)
        self._flush_query()
        self._result(pq.ExecStatus.COPY_OUT)

    def _end(self) -> None:
        from psycopg import pq

        self.rows = self._result(pq.ExecStatus.COMMAND_OK).command_tuples or 0

    def _data(self) -> Iterator[bytes]:
        pg, buf = self.pg, bytearray()
        due = time.monotonic() + FLUSH_SECONDS
        while True:
            n, data = pg.get_copy_data(1)
            if n > 0:
                buf += data
                if len(buf) < COPY_CHUNK:
                    continue
            elif n < 0:
                break
            elif time.monotonic() < due:
                self._wait(due - time.monotonic())
                continue
            yield bytes(buf)
            buf.clear()
            due = time.monotonic() + FLUSH_SECONDS
        if buf:
            yield bytes(buf)

    def _wait(self, timeout: float, write: bool = False) -> None:
        sock = [self.pg.socket]
        select.select(sock, sock if write else [], [], max(timeout, 0.0))
        self.pg.consume_input()

    def _flush_query(self) -> None:
        while self.pg.flush():  # a non-blocking connection sends the query in pieces
            self._wait(FLUSH_SECONDS, write=True)

    def _result(self, want: Any) -> Any:
        """The next result, which must have status `want` (the server's error otherwise);
        after the COPY's final result, libpq's queue is drained."""
        import psycopg

        while self.pg.is_busy():
            self._wait(FLUSH_SECONDS)
        res = self.pg.get_result()
        if want != res.status:
            raise psycopg.errors.error_from_result(res, encoding=self.conn.info.encoding)
        if res.status != psycopg.pq.ExecStatus.COPY_OUT:
            while self.pg.is_busy():
                self._wait(FLUSH_SECONDS)
            assert self.pg.get_result() is None
        return res


def build(source: Source, fmt: Format, columns: Sequence[Column]) -> PgCopyCsv | None:
    """COPY for a PostgreSQL table or query (psycopg) to CSV/TSV with options and
    column kinds the server renders exactly like the generic writer."""
    table = sql_table(source, "postgresql", "psycopg")
    if table is None or not isinstance(fmt, CsvFormat) or not copy_supports(fmt.options, columns):
        return None
    return PgCopyCsv(table, fmt.options, columns)
