"""PostgreSQL -> Parquet through ADBC's Arrow record batches, read ahead on a thread."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from exportd.errors import SourceError, first_line
from exportd.fastpaths.base import Progress, sql_table
from exportd.fastpaths.pg_copy_csv import _compiled
from exportd.fastpaths.prefetch import prefetched
from exportd.formats import Column, Format
from exportd.formats.parquet import ParquetFormat, ParquetRowWriter
from exportd.formats.splitting import PartOutput
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlSource, read_setup, run_setup


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
    def __init__(self, source: SqlSource, columns: Sequence[Column]) -> None:
        self.source, self.columns = source, list(columns)

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
    """ADBC for a PostgreSQL table or query (psycopg) to Parquet, for column kinds whose
    Arrow types ADBC reads exactly; not for a dataset with `max_connections`, whose
    connections are all in its engine's pool (the generic path writes the same file)."""
    table = sql_table(source, "postgresql", "psycopg")
    if table is None or not isinstance(fmt, ParquetFormat) or not adbc_supports(columns):
        return None
    if table.dataset.options.get("max_connections"):  # ADBC connects outside the counted pool
        return None
    return AdbcParquet(table, columns)
