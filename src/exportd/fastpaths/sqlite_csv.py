"""SQLite -> CSV/TSV fast path: ADBC's SQLite driver reads the partition into Arrow record
batches in C (no Python object per value, on a second thread), and `ArrowCsv`
(formats/arrow_csv.py) renders each batch with pyarrow.compute, byte-identical to the
generic writer.

Exactness under SQLite's dynamic typing: the fast path runs only on a table whose selected
columns all have INTEGER, REAL or TEXT affinity, read as int64, double and string. A value
of another type is noticed, never converted: the driver fails on text, blobs or reals in
an int64 column and on text or blobs in a double column (a REAL column holds no integer:
SQLite stores them as reals), and an extra guard column turns a blob in a TEXT column
(which holds no number) into such a failure. On any failure (or text that is not UTF-8)
the rendered rows, kept in a temporary file until the partition is done, are dropped and
the partition runs through the generic path from its start. Anything else (a query
dataset, a view, BLOB or NUMERIC affinity, an in-memory database, no driver) never
takes this path."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from typing import Any, BinaryIO
from urllib.parse import quote as url_quote

import sqlalchemy as sa

from exportd.errors import first_line
from exportd.fastpaths.base import Progress, sql_table
from exportd.fastpaths.prefetch import prefetched
from exportd.formats import Column, Format
from exportd.formats.splitting import PartOutput
from exportd.formats.text import CsvFormat, CsvOptions
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlSource

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
GENERIC_BATCH = 5_000
COPY_CHUNK = 1 << 20
_GUARD = "exportd_guard"


class Fallback(Exception):
    """The fast path cannot render this partition exactly: the generic path does."""


def build(source: Source, fmt: Format, columns: Sequence[Column]) -> SqliteArrowCsv | None:
    """ADBC for a SQLite table (in a file) to CSV/TSV, when the ADBC driver is installed."""
    table = sql_table(source, "sqlite")
    if table is None or not isinstance(fmt, CsvFormat) or not table.dataset.table:
        return None
    source = table
    if not source.engine.url.database or source.engine.url.database == ":memory:":
        return None
    try:
        import adbc_driver_sqlite  # noqa: F401
    except ImportError:
        return None
    return SqliteArrowCsv(source, fmt.options, columns)


def affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (section 3.1 of its datatype doc)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


class SqliteArrowCsv:
    def __init__(self, source: SqlSource, opts: CsvOptions, columns: Sequence[Column]) -> None:
        from exportd.formats.arrow_csv import ArrowCsv

        self.source, self.opts, self.columns = source, opts, list(columns)
        self.csv = ArrowCsv(opts, len(self.columns))

    # -- planning -------------------------------------------------------------------

    def affinities(self, sel: Selection) -> list[str] | None:
        """Each selected column's affinity, or None when the dataset is not a plain table
        of the main database."""
        schema, _, table = (self.source.dataset.table or "").rpartition(".")
        if schema not in ("", "main"):
            return None
        with self.source.engine.connect() as conn:
            kind = conn.exec_driver_sql(
                "SELECT type FROM sqlite_schema WHERE name = ?", (table,)
            ).scalar()
            if kind != "table":
                return None
            info = conn.exec_driver_sql(
                "SELECT name, type FROM pragma_table_info(?)", (table,)
            ).all()
        declared = {name: affinity(type_ or "") for name, type_ in info}
        if any(c not in declared for c in sel.columns):
            return None
        return [declared[c] for c in sel.columns]

    def query(self, sel: Selection, bounds: dict[str, Any], text_cols: list[str]) -> str:
        """The partition's SELECT, values bound as literals, plus the blob guard column."""
        c = self.source.from_.c
        exprs: list[Any] = [c[name] for name in sel.columns]
        blob: Any = sa.literal_column("x''")
        guard: Any
        if text_cols:
            guard = sa.case(
                (sa.or_(*[c[n] >= blob for n in text_cols]), sa.literal_column("x'00'")),
                else_=sa.literal_column("0"),
            )
        else:
            guard = sa.literal_column("0")
        exprs.append(guard.label(_GUARD))
        stmt = self.source.partition_select(sel, bounds, exprs)
        return str(
            stmt.compile(dialect=self.source.engine.dialect, compile_kwargs={"literal_binds": True})
        )

    # -- export ---------------------------------------------------------------------

    def export(self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress) -> None:
        try:
            with tempfile.TemporaryFile() as spool:
                rows = self._render(sel, bounds, spool, hb)
                out.write_encoded(b"", 0)  # the part exists, empty, when there is no row
                spool.seek(0)
                while chunk := spool.read(COPY_CHUNK):
                    hb.check()
                    out.write_encoded(chunk, 0)
                out.count(rows)
                hb.progress(rows, out.size)
                return
        except Fallback as why:
            log.info("SQLite fast path steps aside for this partition: %s", why)
        for batch in self.source.read(sel, bounds, GENERIC_BATCH):
            hb.check()
            out.write(batch)
            hb.progress(out.rows, out.size)

    def _render(self, sel: Selection, bounds: dict[str, Any], spool: BinaryIO, hb: Progress) -> int:
        import adbc_driver_manager as adbc
        import pyarrow as pa

        try:
            kinds = self.affinities(sel)
        except sa.exc.DBAPIError as exc:
            raise Fallback(f"schema not readable ({type(exc).__name__})") from None
        if kinds is None or any(k not in ("INTEGER", "REAL", "TEXT") for k in kinds):
            raise Fallback("not a table of INTEGER, REAL and TEXT columns")
        text_cols = [n for n, k in zip(sel.columns, kinds, strict=True) if k == "TEXT"]
        try:
            sql = self.query(sel, bounds, text_cols)
        except (sa.exc.CompileError, NotImplementedError) as exc:
            raise Fallback(f"query not renderable ({type(exc).__name__})") from None
        want = {"INTEGER": pa.int64(), "REAL": pa.float64(), "TEXT": pa.string()}
        types = [want[k] for k in kinds]
        rows = 0
        try:
            for batch in prefetched(
                lambda: self._batches(sql)
            ):  # read on one core, render on the other
                hb.check()
                data = self._encode(batch, types)
                spool.write(data)
                rows += batch.num_rows
                hb.progress(rows, spool.tell())
        except (adbc.Error, pa.ArrowException, OSError) as exc:
            if isinstance(exc, OSError) and "[SQLite]" not in str(exc):
                raise  # the temporary file, not the data
            raise Fallback(first_line(exc)) from None
        return rows

    def _batches(self, sql: str) -> Any:
        import adbc_driver_manager as adbc
        import adbc_driver_sqlite
        import pyarrow as pa

        path = self.source.engine.url.database or ""
        uri = f"file:{url_quote(path)}?mode=ro"
        with (
            adbc_driver_sqlite.connect(uri) as db,
            adbc.AdbcConnection(db) as conn,
            adbc.AdbcStatement(conn) as stmt,
        ):
            stmt.set_sql_query("PRAGMA query_only = ON")
            stmt.execute_update()
            stmt.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
            stmt.set_sql_query(sql)
            stream, _ = stmt.execute_query()
            with pa.RecordBatchReader._import_from_c(stream.address) as reader:
                yield from reader

    # -- rendering ------------------------------------------------------------------

    def _encode(self, batch: Any, types: list[Any]) -> bytes:
        """One record batch as CSV bytes, once every column is of its expected type."""
        import pyarrow as pa

        if batch.num_rows == 0:
            return b""
        guard = batch.column(batch.num_columns - 1)
        if guard.type != pa.int64():
            raise Fallback("a blob in a TEXT column")
        cells: list[Any] = []
        for i, want in enumerate(types):
            col = batch.column(i)
            if col.type != want:
                if col.type == pa.int64() and col.null_count == len(col):
                    cells.append(None)
                    continue  # all NULL here: later values of another type fail the read
                raise Fallback(f"column {i} read as {col.type}, not {want}")
            if want == pa.string():
                col.validate(full=True)  # UTF-8, as the generic path requires
            cells.append(self.csv.cells(col))
        return self.csv.rows(cells, batch.num_rows)
