"""PostgreSQL's `COPY ... TO STDOUT` drained in C (`_pgbinary`, src/native/pgbinary.c), on
psycopg's own connection.

The C module drives the connection's PGconn with the functions of the very libpq psycopg
loaded (dlopen of that file with RTLD_NOLOAD, dlsym): never another build's, and no
connection outside the engine's pool (a dataset's `max_connections` counts it). It
releases the GIL while it waits on the socket (poll, at most FLUSH_SECONDS: the caller
checks its heartbeat and cancel in between) and while it parses. While a call waits, the
socket's SO_RCVLOWAT is 256 KB (put back before the call returns): poll wakes once per
256 KB rather than at every 8 KB the server sends, which halved the reader's CPU (16,000
wake-ups for 760,000 flights rows, 500 now). When the COPY ends or
libpq reports an error, psycopg reads the command's result: a server error (a statement
timeout, a cancel) raises exactly as on psycopg's own path.

Two readers:
- `CopyOut.chunks` (pg_copy_csv): the server's CSV in chunks of ~1 MB, one C call per
  chunk instead of one Python call per row.
- `record_batches`: `COPY (...) TO STDOUT (FORMAT binary)` parsed into Arrow buffers
  (validity bitmap + values; int32 offsets + data for text and bytea), up to BATCH_ROWS
  rows a batch, wrapped without a copy (`pyarrow.Array.from_buffers`) into record batches
  of the schema ADBC's PostgreSQL driver gives for the same columns: int2/int4/int8 ->
  int16/int32/int64, float4/float8 -> float32/float64, bool, text/varchar/bpchar/name ->
  string, bytea -> binary, date -> date32, timestamp -> timestamp[us], timestamptz ->
  timestamp[us, UTC], numeric -> ADBC's opaque extension type over its text (numeric_out's
  digits and scale; `nan`, `inf`, `-inf` as ADBC writes them) with ADBC's field metadata
  (typname, typmod). Any other column type (json, arrays, uuid, ...) or a client
  encoding other than UTF-8: `plan` answers None and the caller reads through ADBC. Dates
  and timestamps Arrow cannot hold (+-infinity, past the year 294246) raise
  `Unrepresentable` (ADBC would wrap them into wrong dates).

Without the C module (no compiler at build time) or without a libpq it can bind (psycopg's
C implementation, linked at build time), `native()` is None and the Python paths run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from exportd.fastpaths.pg_copy_csv import CopyOut

log = logging.getLogger(__name__)

try:
    from exportd.fastpaths._pgbinary import Unrepresentable as Unrepresentable
except ImportError:  # built without the C module: never raised

    class Unrepresentable(ValueError):  # type: ignore[no-redef]
        """A value Arrow cannot hold as ADBC's types say (an infinite date)."""


BATCH_ROWS = 65_536
BATCH_BYTES = 64 << 20  # of text and bytea values in one batch, at most (about)

# type OID -> (the C reader's kind, ADBC's Arrow type name, PostgreSQL's type name)
_TYPES: dict[int, tuple[int, str, str]] = {
    21: (0, "int16", "int2"),
    23: (1, "int32", "int4"),
    20: (2, "int64", "int8"),
    700: (3, "float32", "float4"),
    701: (4, "float64", "float8"),
    16: (5, "bool", "bool"),
    25: (6, "string", "text"),
    1043: (6, "string", "varchar"),
    1042: (6, "string", "bpchar"),
    19: (6, "string", "name"),
    17: (7, "binary", "bytea"),
    1082: (8, "date32", "date"),
    1114: (9, "timestamp", "timestamp"),
    1184: (9, "timestamptz", "timestamptz"),
    1700: (10, "numeric", "numeric"),
}


@functools.cache
def native() -> ModuleType | None:
    """The C module bound to psycopg's libpq, or None (the Python paths run)."""
    try:
        from psycopg import pq

        from exportd.fastpaths import _pgbinary
    except ImportError:
        return None
    path = _libpq_path(pq.__impl__)
    version = _pgbinary.bind(path) if path else None
    if version is None or version != pq.version():
        log.info("native COPY readers off: psycopg's libpq (%s) cannot be bound", path)
        return None
    return _pgbinary


def _libpq_path(impl: str) -> str | None:
    """The file of the libpq psycopg calls: psycopg[binary] bundles its own (one of
    the process's mapped files), the pure Python implementation loads one with ctypes."""
    if impl == "python":
        from psycopg.pq import _pq_ctypes

        return str(_pq_ctypes.pq._name)  # type: ignore[attr-defined]
    if impl != "binary":
        return None  # psycopg-c links a libpq at build time: not told which
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "/psycopg_binary.libs/libpq" in path:
                    return path
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Plan:
    """How the reader parses a query's columns, and the batches' schema."""

    kinds: bytes
    schema: pa.Schema


def plan(description: Sequence[Any], encoding: str) -> tuple[Plan | None, str]:
    """The reader's plan for a query's columns (psycopg's cursor description), or None
    and why not."""
    import pyarrow as pa

    if encoding.replace("-", "").lower() != "utf8":
        return None, f"client encoding {encoding}"
    arrow = {
        "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
        "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(),
        "string": pa.string(), "binary": pa.binary(), "date32": pa.date32(),
        "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
        "numeric": pa.opaque(pa.string(), "numeric", "PostgreSQL"),
    }  # fmt: skip
    kinds, fields = bytearray(), []
    for col in description:
        found = _TYPES.get(col.type_code)
        if found is None:
            return None, f"column {col.name!r} has type OID {col.type_code}"
        kind, typ, typname = found
        kinds.append(kind)
        meta = {"POSTGRESQL:type": typname}
        if typ == "numeric":  # as ADBC says it: its text in an opaque extension type
            typmod = -1 if col.precision is None else ((col.precision << 16) | col.scale) + 4
            meta = {"ADBC:postgresql:typname": typname, **meta, "POSTGRESQL:typmod": str(typmod)}
        fields.append(pa.field(col.name, arrow[typ], metadata=meta))
    return Plan(bytes(kinds), pa.schema(fields)), ""


def record_batches(copy: CopyOut, sql: bytes, how: Plan) -> Iterator[pa.RecordBatch | None]:
    """The rows of a binary `COPY ... TO STDOUT` as record batches of `how.schema`; None
    when no row came for FLUSH_SECONDS (the caller may check its heartbeat)."""
    import pyarrow as pa

    from exportd.fastpaths.pg_copy_csv import FLUSH_SECONDS

    mod = native()
    assert mod is not None
    types = [f.type for f in how.schema]
    state = 0
    for state, rows, cols in copy.stream(
        sql, lambda ptr: mod.Reader(ptr, how.kinds).read, BATCH_ROWS, BATCH_BYTES, FLUSH_SECONDS
    ):
        if not rows:
            if state == 0:
                yield None
            continue
        arrays = [
            pa.Array.from_buffers(
                t.storage_type if isinstance(t, pa.ExtensionType) else t,
                rows,
                [None if valid is None else pa.py_buffer(valid), pa.py_buffer(values)]
                + ([] if data is None else [pa.py_buffer(data)]),
                null_count=nulls,
            )
            for t, (nulls, valid, values, data) in zip(types, cols, strict=True)
        ]
        arrays = [
            pa.ExtensionArray.from_storage(t, a) if isinstance(t, pa.ExtensionType) else a
            for t, a in zip(types, arrays, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(arrays, schema=how.schema)
