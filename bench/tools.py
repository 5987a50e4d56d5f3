"""The tools exportd is compared with, each run in a process of its own by
`python -m bench.tools NAME SOURCE OUT [QUERY]` so its peak RSS can be measured alone.
The DuckDB tools run in DuckDB 1.4's own environment (`bench.duckdb_env`)."""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

QUERY = "SELECT * FROM flights ORDER BY id"


def pandas_run(source: str, out: str) -> None:
    import pandas as pd
    import sqlalchemy as sa

    url = source if source.startswith("postgresql") else f"sqlite:///{source}"
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    df = pd.read_sql(QUERY, engine)
    if out.endswith(".parquet"):
        df.to_parquet(out, compression="zstd", index=False)
    else:
        df.to_csv(out, index=False)


def polars_run(source: str, out: str) -> None:
    import polars as pl

    if source.startswith("postgresql"):
        df = pl.read_database_uri(QUERY, source, engine="adbc")
    else:
        df = pl.read_database(QUERY, sqlite3.connect(source))
    if out.endswith(".parquet"):
        df.write_parquet(out, compression="zstd")
    else:
        df.write_csv(out)


def adbc_run(source: str, out: str) -> None:
    """ADBC record batches into pyarrow's ParquetWriter (or CSV writer), by hand."""
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    with adbc.connect(source) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        reader = cur.fetch_record_batch()
        if out.endswith(".parquet"):
            with pq.ParquetWriter(out, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
        else:
            with pacsv.CSVWriter(out, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)


def duckdb_run(source: str, out: str) -> None:
    """DuckDB 1.4's postgres or sqlite scanner (its parallel ctid-range scan on
    PostgreSQL), COPY to CSV or to Parquet with zstd, as exportd writes it."""
    from bench.duckdb_env import connect

    con = connect()
    kind = "postgres" if source.startswith("postgresql") else "sqlite"
    con.execute(f"LOAD {kind}")
    con.execute(f"ATTACH '{source}' AS src (TYPE {kind}, READ_ONLY)")
    fmt = "parquet, compression zstd" if out.endswith(".parquet") else "csv, header true"
    con.execute(f"COPY (SELECT * FROM src.flights ORDER BY id) TO '{out}' (FORMAT {fmt})")


def xlsx_run(source: str, out: str, query: str = QUERY) -> None:
    """A straightforward xlsxwriter loop in constant-memory mode over the SQLite rows."""
    import xlsxwriter

    conn = sqlite3.connect(source)
    cur = conn.execute(query)
    book = xlsxwriter.Workbook(out, {"constant_memory": True})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, [d[0] for d in cur.description])
    for i, row in enumerate(cur, start=1):
        sheet.write_row(i, 0, row)
    book.close()


def _flat(doc: dict[str, Any], prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    import orjson

    for k, v in doc.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            _flat(v, key, out)
        elif isinstance(v, list):
            out[key] = orjson.dumps(v).decode()
        else:
            out[key] = v
    return out


def docs_python_run(source: str, out: str) -> None:
    """A straightforward two-pass script: every flattened key, then the rows (csv module)."""
    import csv

    import orjson

    keys: dict[str, None] = {}
    with open(source, "rb") as f:
        for line in f:
            for k in _flat(orjson.loads(line), "", {}):
                keys.setdefault(k, None)
    header = list(keys)
    with open(source, "rb") as f, open(out, "w", newline="") as o:
        w = csv.writer(o)
        w.writerow(header)
        for line in f:
            d = _flat(orjson.loads(line), "", {})
            w.writerow([d.get(k) for k in header])


def docs_duckdb_run(source: str, out: str) -> None:
    """DuckDB's read_json sampling every document, nested objects unnested to columns."""
    from bench.duckdb_env import connect

    connect().execute(
        f"COPY (SELECT unnest(j, recursive := true) FROM read_json('{source}', "
        f"sample_size = -1) j) TO '{out}' (FORMAT csv, HEADER true)"
    )


TOOLS = {
    "pandas": pandas_run, "polars": polars_run, "adbc": adbc_run, "duckdb": duckdb_run,
    "docs-python": docs_python_run, "docs-duckdb": docs_duckdb_run, "xlsx": xlsx_run,
}  # fmt: skip
DUCKDB_TOOLS = {"duckdb", "docs-duckdb"}  # run in bench.duckdb_env's interpreter

if __name__ == "__main__":
    TOOLS[sys.argv[1]](*sys.argv[2:])
