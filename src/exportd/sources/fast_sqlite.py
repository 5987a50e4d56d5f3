"""SQLite -> CSV/TSV fast path: ADBC's SQLite driver reads the partition into Arrow record
batches in C (no Python object per value), and pyarrow.compute renders each batch into
CSV text column by column, with the generic writer's rules (formats/text.py):

- integers: `cast` to text; text: neutralised when it starts with a spreadsheet trigger,
  quoted when it holds the delimiter, the quote, CR or LF or equals the null text;
- floats: Arrow's shortest round-trip digits (the same digits as Python's `repr`) where
  its notation is the plain one `float_text` writes (1e-4 <= |x| < 1e15, and zero);
  every other float (exponents, infinities) goes through `float_text` itself;
- NULL: the null text; rows joined by the delimiter and ended by the line ending.

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

from exportd.formats import Column, Format
from exportd.formats.cells import SPREADSHEET_TRIGGERS, float_text
from exportd.formats.layout import PartOutput
from exportd.formats.text import _PLAIN_CHARS, CsvFormat, CsvOptions
from exportd.heartbeat import Heartbeat
from exportd.prefetch import prefetched
from exportd.sources import Selection
from exportd.sources.sql import SqlSource

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
GENERIC_BATCH = 5_000
COPY_CHUNK = 1 << 20
_GUARD = "exportd_guard"


class Fallback(Exception):
    """The fast path cannot render this partition exactly: the generic path does."""


def sqlite_fast_path(
    source: SqlSource, fmt: Format, columns: Sequence[Column]
) -> SqliteArrowCsv | None:
    """The SQLite fast path for this export, or None (the generic path)."""
    if not isinstance(fmt, CsvFormat) or not source.dataset.table:
        return None
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


def _regex_class(chars: Sequence[str]) -> str:
    """An RE2 character class matching exactly these characters."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


class SqliteArrowCsv:
    def __init__(self, source: SqlSource, opts: CsvOptions, columns: Sequence[Column]) -> None:
        self.source, self.opts, self.columns = source, opts, list(columns)
        self._special = _regex_class([opts.delimiter, opts.quote, "\r", "\n"])
        self._trigger = "^" + _regex_class(SPREADSHEET_TRIGGERS)
        self._qq = opts.quote * 2
        self._single = len(self.columns) == 1
        # numbers never need quoting unless the delimiter or quote can appear in them
        self._check_numbers = bool({opts.delimiter, opts.quote} & _PLAIN_CHARS)

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

    def export(
        self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Heartbeat
    ) -> None:
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

    def _render(
        self, sel: Selection, bounds: dict[str, Any], spool: BinaryIO, hb: Heartbeat
    ) -> int:
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
            raise Fallback(_first_line(exc)) from None
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

    def _encode(self, batch: Any, types: list[Any]) -> Any:
        """One record batch as CSV bytes (a pyarrow Buffer)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return b""
        guard = batch.column(batch.num_columns - 1)
        if guard.type != pa.int64():
            raise Fallback("a blob in a TEXT column")
        cells = []
        for i, want in enumerate(types):
            col = batch.column(i)
            if col.type != want:
                if col.type == pa.int64() and col.null_count == len(col):
                    cells.append(pa.nulls(len(col), pa.string()).fill_null(self.opts.null))
                    continue  # all NULL here: later values of another type fail the read
                raise Fallback(f"column {i} read as {col.type}, not {want}")
            if want == pa.string():
                col.validate(full=True)  # UTF-8, as the generic path requires
                text = self._text(col)
            elif want == pa.float64():
                text = self._quoted(self._floats(col), self._check_numbers)
            else:
                text = self._quoted(pc.cast(col, pa.string()), self._check_numbers)
            cells.append(pc.fill_null(text, self.opts.null))
        # the line ending goes on the last cell: fewer bytes to copy than on whole lines
        cells[-1] = pc.binary_join_element_wise(cells[-1], "", self.opts.line_ending)
        lines = pc.binary_join_element_wise(*cells, self.opts.delimiter)
        _, offsets, data = lines.buffers()  # no validity buffer: no null line
        first, last = lines.offset * 4, (lines.offset + len(lines)) * 4
        start = int.from_bytes(offsets[first : first + 4], "little")
        end = int.from_bytes(offsets[last : last + 4], "little")
        return data[start:end]

    def _text(self, col: Any) -> Any:
        import pyarrow.compute as pc

        if self.opts.spreadsheet_safe:
            risky = pc.match_substring_regex(col, self._trigger)
            if pc.any(risky).as_py():
                col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
        return self._quoted(col, True)

    def _quoted(self, col: Any, check_special: bool) -> Any:
        """Cells quoted where the generic writer's `CsvEncoder.cell` quotes them."""
        import pyarrow.compute as pc

        need = pc.equal(col, self.opts.null)
        if check_special:
            need = pc.or_(need, pc.match_substring_regex(col, self._special))
        if self._single:
            need = pc.or_(need, pc.equal(col, "\\."))
        if not pc.any(need).as_py():
            return col
        q = self.opts.quote
        quoted = pc.binary_join_element_wise(q, pc.replace_substring(col, q, self._qq), q, "")
        return pc.if_else(need, quoted, col)

    @staticmethod
    def _floats(col: Any) -> Any:
        """Doubles as `float_text` writes them: Arrow's text where it is the same plain
        notation, `float_text` for the rest (exponents, infinities, NaN)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        text = pc.cast(col, pa.string())
        size = pc.abs(col)
        plain = pc.and_(
            pc.and_(pc.greater_equal(size, 1e-4), pc.less(size, 1e15)),
            pc.invert(pc.match_substring(text, "e")),
        )
        plain = pc.or_(plain, pc.equal(col, 0.0))
        odd = pc.invert(pc.fill_null(plain, True))
        if not pc.any(odd).as_py():
            return text
        values = pc.filter(col, odd).to_pylist()
        fixed = pa.array([float_text(v) for v in values], pa.string())
        return pc.replace_with_mask(text, odd, fixed)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
