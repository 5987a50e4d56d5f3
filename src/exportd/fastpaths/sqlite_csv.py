"""SQLite -> CSV/TSV fast path. Two readers, the first one available:

- native (`exportd.fastpaths._sqlitecsv`, src/native/sqlitecsv.c, built with the package):
  C opens the database file read-only itself (the task's snapshot copy where there is
  one: the source's engine is the copy's), prepares the partition's SELECT with its bound
  parameters, steps it with the GIL released and renders every cell straight into CSV
  bytes, byte-identical to the generic writer for every `CsvOptions` (integers as
  digits, reals as `float_text`, text neutralised and quoted by `CsvEncoder`'s rules,
  NULL as the null text). It hands back chunks of about 1 MB, or what 0.5 s allowed, so
  the heartbeat runs and a cancel is seen between them. Reals: integers below 2**53 and
  decimals of at most 15 digits are printed from their digits (checked to read back
  exactly), others from the first of 15, 16 or 17 correctly rounded digits that reads
  back; subnormals and powers of two needing more than 15 digits take the GIL for
  CPython's repr (the module's header comment has the argument).
- ADBC (no C extension built): ADBC's SQLite driver reads the partition into Arrow
  record batches in C (on a second thread), and `ArrowCsv` (formats/arrow_csv.py)
  renders each batch with pyarrow.compute, byte-identical to the generic writer.

Exactness under SQLite's dynamic typing: the fast path runs only on a table whose selected
columns all have INTEGER, REAL or TEXT affinity, read as int64, double and string. A value
of another type is noticed, never converted. Native: any cell whose storage class
(`sqlite3_column_type`) is not its column's affinity's (or NULL), or a text that is not
valid UTF-8, stops the reader (`Unrenderable`). ADBC: the driver fails on text, blobs or
reals in an int64 column and on text or blobs in a double column (a REAL column holds no
integer: SQLite stores them as reals), and an extra guard column turns a blob in a TEXT
column (which holds no number) into such a failure. On any failure (or text that is not
UTF-8) the rows rendered so far, written straight into the part, are discarded
(`PartOutput.discard`) and the partition runs through the generic path from its start. Anything else (a
query dataset, a view, BLOB or NUMERIC affinity, an in-memory database, no driver) never
takes this path. Each partition counts its reader in `exportd_sqlite_csv_partitions_total`
(`native`, `adbc`, `generic` when it stepped aside)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote as url_quote

import sqlalchemy as sa
from prometheus_client import Counter

from exportd.errors import first_line
from exportd.fastpaths.base import Progress, sql_table
from exportd.fastpaths.prefetch import prefetched
from exportd.formats import Column, Format
from exportd.formats.splitting import PartOutput
from exportd.formats.text import CsvFormat, CsvOptions
from exportd.metrics import PROCESS
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlSource

if TYPE_CHECKING:
    from exportd.formats.arrow_csv import ArrowCsv

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
GENERIC_BATCH = 5_000
COPY_CHUNK = 1 << 20
NATIVE_SECONDS = 0.5  # the native reader hands back at least this often
_GUARD = "exportd_guard"
_KINDS = {"INTEGER": "i", "REAL": "r", "TEXT": "t"}
_PLAIN_TYPES = (sa.Integer, sa.Float, sa.String)

PARTITIONS = Counter(
    "exportd_sqlite_csv_partitions",
    "SQLite -> CSV partitions by the reader that wrote them (generic: the fast path stepped aside)",
    ["process", "reader"],
)


def native_module() -> Any | None:
    """The C reader (`_sqlitecsv`), or None where the package was built without it."""
    try:
        from exportd.fastpaths import _sqlitecsv
    except ImportError:
        return None
    return _sqlitecsv if hasattr(_sqlitecsv, "Reader") else None


class _PartSink:
    """The rendered rows written straight into the part (`write`, and `tell`: the bytes
    so far); a partition that falls back discards them (`PartOutput.discard`)."""

    def __init__(self, out: PartOutput) -> None:
        self.out, self.written = out, 0

    def write(self, data: bytes) -> None:
        self.out.write_encoded(data, 0)
        self.written += len(data)

    def tell(self) -> int:
        return self.written


class Fallback(Exception):
    """The fast path cannot render this partition exactly: the generic path does."""


def build(source: Source, fmt: Format, columns: Sequence[Column]) -> SqliteArrowCsv | None:
    """The native reader (else ADBC, when its driver is installed) for a SQLite table in a
    file to CSV/TSV."""
    table = sql_table(source, "sqlite")
    if table is None or not isinstance(fmt, CsvFormat) or not table.dataset.table:
        return None
    source = table
    if not source.engine.url.database or source.engine.url.database == ":memory:":
        return None
    if native_module() is not None:
        return SqliteArrowCsv(source, fmt.options, columns, native=True)
    try:
        import adbc_driver_sqlite  # noqa: F401
    except ImportError:
        return None
    return SqliteArrowCsv(source, fmt.options, columns, native=False)


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
    """The fast path; `native` says which reader renders (the C one, or ADBC + Arrow)."""

    def __init__(
        self, source: SqlSource, opts: CsvOptions, columns: Sequence[Column], native: bool = False
    ) -> None:
        self.source, self.opts, self.columns = source, opts, list(columns)
        self.native = native and native_module() is not None
        self._csv: ArrowCsv | None = None

    @property
    def csv(self) -> ArrowCsv:
        """The Arrow renderer of the ADBC reader (pyarrow imported when first needed)."""
        if self._csv is None:
            from exportd.formats.arrow_csv import ArrowCsv

            self._csv = ArrowCsv(self.opts, len(self.columns))
        return self._csv

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

    def bound_query(self, sel: Selection, bounds: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
        """The partition's SELECT with its parameters (qmark), for the native reader;
        values bound as literals when one is of a type it does not bind as it is."""
        dialect = self.source.engine.dialect
        c = self.source.from_.c
        stmt = self.source.partition_select(sel, bounds, [c[name] for name in sel.columns])
        compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        names = compiled.positiontup or []
        values = compiled.construct_params()
        params = tuple(values[n] for n in names)
        # SQLite's processors of these types only convert a value to its own type (a
        # float for a REAL column, whose affinity compares 1 and 1.0 alike): bound as is
        plain = all(v is None or type(v) in (int, float, str, bytes) for v in params) and all(
            isinstance(b.type, _PLAIN_TYPES) or b.type.bind_processor(dialect) is None
            for b in compiled.binds.values()
        )
        if dialect.paramstyle != "qmark" or not plain:
            literal = stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            return str(literal), ()
        return str(compiled), params

    # -- export ---------------------------------------------------------------------

    def export(self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress) -> None:
        try:
            out.write_encoded(b"", 0)  # the part exists, empty, when there is no row
            sink = _PartSink(out)
            if self.native:
                rows = self._render_native(sel, bounds, sink, hb)
            else:
                rows = self._render(sel, bounds, sink, hb)
            out.count(rows)
            hb.progress(rows, out.size)
            PARTITIONS.labels(PROCESS, "native" if self.native else "adbc").inc()
            return
        except Fallback as why:
            log.info("SQLite fast path steps aside for this partition: %s", why)
            out.discard()  # the generic path writes the part from its start
        PARTITIONS.labels(PROCESS, "generic").inc()
        for batch in self.source.read(sel, bounds, GENERIC_BATCH):
            hb.check()
            out.write(batch)
            hb.progress(out.rows, out.size)

    def _kinds(self, sel: Selection) -> list[str]:
        try:
            kinds = self.affinities(sel)
        except sa.exc.DBAPIError as exc:
            raise Fallback(f"schema not readable ({type(exc).__name__})") from None
        if kinds is None or any(k not in _KINDS for k in kinds):
            raise Fallback("not a table of INTEGER, REAL and TEXT columns")
        return kinds

    def _render_native(
        self, sel: Selection, bounds: dict[str, Any], sink: _PartSink, hb: Progress
    ) -> int:
        """The partition's CSV rows into the part by the C reader; its row count."""
        native = native_module()
        assert native is not None
        kinds = self._kinds(sel)
        try:
            sql, params = self.bound_query(sel, bounds)
        except (sa.exc.CompileError, NotImplementedError) as exc:
            raise Fallback(f"query not renderable ({type(exc).__name__})") from None
        o = self.opts
        try:
            reader = native.Reader(
                self.source.engine.url.database or "", sql, params,
                "".join(_KINDS[k] for k in kinds), o.delimiter, o.quote, o.null,
                o.line_ending, o.spreadsheet_safe,
            )  # fmt: skip
        except (native.Error, ValueError, TypeError, OverflowError) as exc:
            raise Fallback(first_line(exc)) from None
        try:
            while data := reader.read(COPY_CHUNK, NATIVE_SECONDS):
                sink.write(data)
                hb.progress(reader.rows, sink.tell())
                hb.check()
        except (native.Unrenderable, native.Error) as exc:
            raise Fallback(first_line(exc)) from None
        finally:
            reader.close()
        rows: int = reader.rows
        return rows

    def _render(self, sel: Selection, bounds: dict[str, Any], sink: _PartSink, hb: Progress) -> int:
        import adbc_driver_manager as adbc
        import pyarrow as pa

        kinds = self._kinds(sel)
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
                sink.write(data)
                rows += batch.num_rows
                hb.progress(rows, sink.tell())
        except (adbc.Error, pa.ArrowException, OSError) as exc:
            if isinstance(exc, OSError) and "[SQLite]" not in str(exc):
                raise  # the part's storage, not the data
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
