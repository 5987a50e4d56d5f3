"""PostgreSQL -> Parquet through Arrow record batches, read ahead on a thread.

The batches come from the native binary COPY reader (`pg_binary.record_batches`: psycopg's
pooled connection, the C module parsing `COPY ... (FORMAT binary)` with the GIL released)
when it is built and reads every column of the partition (its types are asked first, with
`LIMIT 0`, in the partition's own transaction); else from ADBC's PostgreSQL driver (its
own connection), as before. Both give the same schema, so the Parquet files are the same.
A dataset with `max_connections` never reads through ADBC (outside its counted pool): the
native reader, or the generic path's rows when the native reader steps aside.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from exportd.errors import SourceError, first_line
from exportd.fastpaths import pg_binary
from exportd.fastpaths.base import Progress, sql_table
from exportd.fastpaths.pg_copy_csv import CopyOut, _compiled
from exportd.fastpaths.prefetch import prefetched
from exportd.formats import Column, Format
from exportd.formats.parquet import ParquetFormat, ParquetRowWriter
from exportd.formats.splitting import PartOutput
from exportd.outages import source_error
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlSource, read_setup, run_setup

log = logging.getLogger(__name__)

ROWS_BATCH = 5000  # rows per fetch of the generic rows (the settings' default batch_size)


class _NotNative(Exception):
    """The native reader cannot read this partition's columns (ADBC will)."""


def adbc_supports(columns: Sequence[Column]) -> bool:
    try:
        import adbc_driver_postgresql  # noqa: F401
    except ImportError:
        return False
    kinds = {"int", "decimal", "float", "str", "bool", "date", "datetime", "bytes"}
    return all(
        c.kind in kinds and c.type.upper() not in ("REAL", "FLOAT4", "FLOAT(24)") for c in columns
    )


class AdbcParquet:
    def __init__(self, source: SqlSource, columns: Sequence[Column], pooled: bool = False) -> None:
        """`pooled`: every connection must come from the engine's counted pool (a dataset
        with `max_connections`): the native reader, else the generic rows, never ADBC."""
        self.source, self.columns, self.pooled = source, list(columns), pooled

    def query(self, sel: Selection, bounds: dict[str, Any]) -> str:
        """The partition's SELECT with its parameters bound client-side by psycopg."""
        import psycopg

        query, params = _compiled(self.source, self.source.partition_select(sel, bounds))
        raw = self.source.engine.raw_connection()
        try:
            conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
            return psycopg.ClientCursor(conn).mogrify(query, params)
        finally:
            raw.close()

    def export(self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress) -> None:
        writer = out.writer()
        assert isinstance(writer, ParquetRowWriter)
        try:
            self._export(sel, bounds, out, hb)
        except BaseException:  # the part is abandoned: its Parquet writer closed now
            writer.discard()
            raise

    def _export(
        self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress
    ) -> None:
        if pg_binary.native() is not None:
            try:
                self._export_native(sel, bounds, out, hb)
                return
            except _NotNative as why:  # raised before the first row
                log.info("native binary COPY reader steps aside: %s", why)
        if self.pooled:
            self._export_rows(sel, bounds, out, hb)
        else:
            self._export_adbc(sel, bounds, out, hb)

    def _export_rows(
        self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress
    ) -> None:
        """The generic path's rows: the source's own read, on its pool."""
        for batch in self.source.read(sel, bounds, ROWS_BATCH):
            hb.check()
            out.write(batch)
            hb.progress(out.rows, out.size)

    def _export_native(
        self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress
    ) -> None:
        import psycopg

        writer = out.writer()
        assert isinstance(writer, ParquetRowWriter)
        try:
            for batch in prefetched(lambda: self._native_batches(sel, bounds)):
                hb.check()
                if batch is None:  # no row for a while: the heartbeat was checked
                    continue
                writer.write_arrow(batch)
                out.count(batch.num_rows)
                hb.progress(out.rows, out.size)
        except (psycopg.Error, sa.exc.DBAPIError) as exc:
            raise source_error(exc, "SOURCE_QUERY_FAILED") from None
        except pg_binary.Unrepresentable as exc:
            raise SourceError(str(exc), "SOURCE_QUERY_FAILED") from None

    def _native_batches(self, sel: Selection, bounds: dict[str, Any]) -> Iterator[Any]:
        """The partition's record batches from a binary COPY on a pooled connection, in
        one read-only transaction under the task's snapshot and statement timeout."""
        import psycopg

        query, params = _compiled(self.source, self.source.partition_select(sel, bounds))
        raw = self.source.engine.raw_connection()
        done = False
        try:
            conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
            conn.rollback()
            with conn.cursor() as cur:
                run_setup(cur.execute, read_setup("postgresql", sel, self.source.dataset))
                cur.execute("SET TRANSACTION READ ONLY")
                sql = psycopg.ClientCursor(conn).mogrify(query, params)
                cur.execute(f"SELECT * FROM ({sql}) AS q LIMIT 0")
                how, why = pg_binary.plan(cur.description or [], conn.info.encoding)
            if how is None:
                conn.rollback()
                done = True
                raise _NotNative(why)
            log.info("native binary COPY reader: %d columns", len(how.schema))
            copy = CopyOut(conn)
            yield from pg_binary.record_batches(
                copy, f"COPY ({sql}) TO STDOUT (FORMAT binary)".encode(), how
            )
            conn.rollback()
            done = True
        finally:
            if done:
                raw.close()
            else:  # mid-COPY: the connection is closed, never reused
                raw.invalidate()

    def _export_adbc(
        self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress
    ) -> None:
        import adbc_driver_manager as adbc

        query = self.query(sel, bounds)
        setup = read_setup("postgresql", sel, self.source.dataset)
        writer = out.writer()
        assert isinstance(writer, ParquetRowWriter)
        try:
            for batch in prefetched(lambda: self._batches(query, setup)):
                hb.check()
                writer.write_arrow(batch)
                out.count(batch.num_rows)
                hb.progress(out.rows, out.size)
        except adbc.Error as exc:
            raise SourceError(first_line(exc), "SOURCE_QUERY_FAILED") from None

    def _batches(self, query: str, setup: Sequence[str] = ()) -> Iterator[Any]:
        """The query's record batches through ADBC's low-level API: its DB-API module
        imports pandas and polars when they are installed (80 MB of a worker's memory)."""
        import adbc_driver_manager as adbc
        import adbc_driver_postgresql
        import pyarrow as pa

        url = self.source.engine.url.set(drivername="postgresql")
        with (
            adbc_driver_postgresql.connect(url.render_as_string(hide_password=False)) as db,
            adbc.AdbcConnection(db) as conn,
            adbc.AdbcStatement(conn) as stmt,
        ):
            if setup:  # one transaction: the task's snapshot, the statement timeout

                def execute(sql: str) -> None:
                    stmt.set_sql_query(sql)
                    stmt.execute_update()

                execute("BEGIN READ ONLY")
                run_setup(execute, list(setup))
            stmt.set_sql_query(query)
            stream, _ = stmt.execute_query()
            with pa.RecordBatchReader._import_from_c(stream.address) as reader:
                yield from reader


def build(source: Source, fmt: Format, columns: Sequence[Column]) -> AdbcParquet | None:
    """Arrow batches for a PostgreSQL table or query (psycopg) to Parquet, for column
    kinds whose Arrow types ADBC reads exactly. A dataset with `max_connections` has all
    its connections in its engine's pool: ADBC (its own connection) never reads it, the
    native reader (a pooled connection) does, else the generic rows (the same file)."""
    table = sql_table(source, "postgresql", "psycopg")
    if table is None or not isinstance(fmt, ParquetFormat) or not adbc_supports(columns):
        return None
    pooled = bool(table.dataset.options.get("max_connections"))
    if pooled and pg_binary.native() is None:  # ADBC connects outside the counted pool
        return None
    return AdbcParquet(table, columns, pooled)
