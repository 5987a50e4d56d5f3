"""Parquet: each segment is a Parquet file written with pyarrow, with the request's
options (codec, level, row group size, dictionaries, statistics). A file made of several
segments is assembled by copying their row groups byte for byte under one merged footer
(`parquet_footer`); where the segments differ (e.g. a time zone only some of them saw),
by reading their row groups and writing them again with one `ParquetWriter`, in row
groups of `row_group_size` rows.

Types come from the source's columns so every segment has the same schema, also when a
partition is empty or all NULL: integers int64, floats float64, NUMERIC(p, s) decimal
(p, s) (decimal256 past 38 digits), an unconstrained NUMERIC its exact text (as ADBC
does), booleans, dates, timestamps with a time zone as UTC instants (tz "UTC"), without
one as they are, text, binary, JSON values as JSON text."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from exportd.errors import BadRequest
from exportd.formats import Column, Segment, Written, check_options
from exportd.formats.cells import decimal_text, json_text
from exportd.formats.parquet_footer import copy_through, read_footer
from exportd.storage import HashingWriter, Piece, Storage

_CODE = "INVALID_FORMAT_OPTIONS"
OPTIONS = ("compression", "compression_level", "row_group_size")
CODECS = ("zstd", "snappy", "gzip", "lz4", "none")
DEFAULT_ROW_GROUP = 131_072
# A column chunk's dictionary, at most (pyarrow's default: 1 MB); past it the chunk goes on
# in plain pages. A column of distinct values (a key) never fills 1 MB in a row group of
# 131,072 int64s, so it was dictionary-encoded at a hash per value for nothing: 128 KB
# wrote 760,000 flights in 0.26 s instead of 0.36 s, 9% smaller (bench/pg_native_cpu.py).
DICTIONARY_PAGE_LIMIT = 128 << 10
_NUMERIC = re.compile(r"^\s*(?:NUMERIC|DECIMAL)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)", re.IGNORECASE)
_TZ = re.compile(r"WITH TIME ZONE|TIMESTAMPTZ", re.IGNORECASE)
_NAIVE = re.compile(r"^\s*(TIMESTAMP|DATETIME)\b(?!.*WITH TIME ZONE)", re.IGNORECASE)


def arrow_type(col: Column, sample: Any = None) -> pa.DataType:
    """The Parquet (Arrow) type of an output column (see the module docstring)."""
    simple = {
        "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string(),
        "bytes": pa.binary(), "date": pa.date32(), "json": pa.string(),
    }  # fmt: skip
    if col.kind in simple:
        return simple[col.kind]
    if col.kind == "decimal":
        m = _NUMERIC.match(col.type)
        if m is None:
            return pa.string()
        p, s = int(m.group(1)), int(m.group(2))
        return pa.decimal128(p, s) if p <= 38 else pa.decimal256(p, s)
    if col.kind == "datetime":
        aware = bool(_TZ.search(col.type)) or (
            not _NAIVE.match(col.type) and getattr(sample, "tzinfo", None) is not None
        )
        return pa.timestamp("us", tz="UTC" if aware else None)
    return pa.string()


def to_arrow(values: Sequence[Any], typ: pa.DataType, name: str) -> pa.Array:
    """One column of Python values as an Arrow array of `typ`."""
    if pa.types.is_string(typ) and any(v is not None and not isinstance(v, str) for v in values):
        values = [None if v is None else _as_text(v) for v in values]
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValueError(f"column {name!r} holds a value that is not {typ}: {exc}") from None


def _as_text(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json_text(v)
    if hasattr(v, "as_tuple"):
        return decimal_text(v)
    return str(v)


class ParquetOptions:
    def __init__(
        self, options: dict[str, Any], default_codec: str = "zstd", intermediate: bool = False
    ) -> None:
        """`intermediate`: parts that assembly reads back and rewrites (XLSX). They are
        written without dictionaries or statistics (which only an output needs): writing
        and reading them back cost 0.5 s instead of 0.9 s per 760,000 flights."""
        check_options(options, OPTIONS, "parquet")
        self.intermediate = intermediate
        self.codec = options.get("compression", default_codec)
        if self.codec not in CODECS:
            raise BadRequest(f"parquet compression must be one of {', '.join(CODECS)}", _CODE)
        self.level = options.get("compression_level")  # None: the codec's default
        if self.level is not None and (
            not isinstance(self.level, int) or not 1 <= self.level <= 22
        ):
            raise BadRequest("compression_level must be an integer from 1 to 22", _CODE)
        self.row_group_size = options.get("row_group_size", DEFAULT_ROW_GROUP)
        rg = self.row_group_size
        if not isinstance(rg, int) or isinstance(rg, bool) or not 1_000 <= rg <= 10_000_000:
            raise BadRequest("row_group_size must be an integer from 1,000 to 10,000,000", _CODE)

    def writer(self, out: Any, schema: pa.Schema) -> pq.ParquetWriter:
        final = not self.intermediate
        return pq.ParquetWriter(
            out, schema, compression=self.codec, compression_level=self.level,
            use_dictionary=final, write_statistics=final,
            dictionary_pagesize_limit=DICTIONARY_PAGE_LIMIT,
        )  # fmt: skip


class ParquetRowWriter:
    """Buffers rows up to a row group, converts them to Arrow and writes a row group.
    The schema is fixed at the first row group (types from the columns, samples decide
    what the columns cannot say, e.g. whether a query's timestamps have a time zone)."""

    def __init__(self, out: BinaryIO, columns: Sequence[Column], opts: ParquetOptions) -> None:
        self._out = out
        self._columns = list(columns)
        self._opts = opts
        self._rows: list[Sequence[Any]] = []
        self._arrow: list[pa.RecordBatch] = []
        self._buffered = 0
        self.schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        if self._arrow:
            self._flush()
        self._rows.extend(rows)
        self._buffered += len(rows)
        if self._buffered >= self._opts.row_group_size:
            self._flush(whole_groups=True)

    def write_arrow(self, batch: pa.RecordBatch) -> None:
        """Arrow batches from a fast path, cast to the columns' schema."""
        if self._rows:
            self._flush()
        if self.schema is None:
            self.schema = schema_for(self._columns, batch)
        self._arrow.append(cast_batch(batch, self.schema))
        self._buffered += batch.num_rows
        if self._buffered >= self._opts.row_group_size:
            self._flush(whole_groups=True)

    def _decide(self) -> pa.Schema:
        cols = list(zip(*self._rows, strict=True)) if self._rows else [()] * len(self._columns)
        samples = [next((v for v in col if v is not None), None) for col in cols]
        return pa.schema(
            [
                pa.field(c.name, arrow_type(c, s))
                for c, s in zip(self._columns, samples, strict=True)
            ]
        )

    def _table(self, n: int) -> pa.Table:
        """The first `n` buffered rows as a table."""
        assert self.schema is not None
        if self._arrow:
            return pa.Table.from_batches(self._arrow, schema=self.schema).slice(0, n)
        rows = self._rows[:n] if n < len(self._rows) else self._rows
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(self.schema)
        arrays = [to_arrow(col, f.type, f.name) for col, f in zip(cols, self.schema, strict=True)]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _flush(self, whole_groups: bool = False) -> None:
        """Write what is buffered; with `whole_groups`, only whole row groups, the rest
        stays buffered (so a part's row groups all have `row_group_size` rows but its last:
        copied through into the output, they are its row groups)."""
        if self.schema is None:
            self.schema = self._decide()
        if self._writer is None:
            self._writer = self._opts.writer(self._out, self.schema)
        size = self._opts.row_group_size
        n = self._buffered - self._buffered % size if whole_groups else self._buffered
        if not n:
            return
        self._writer.write_table(self._table(n), row_group_size=size)
        if n == self._buffered:
            self._rows, self._arrow = [], []
        elif self._arrow:
            rest = pa.Table.from_batches(self._arrow, schema=self.schema).slice(n)
            self._arrow = rest.to_batches()
        else:
            self._rows = self._rows[n:]
        self._buffered -= n

    def close(self) -> None:
        self._flush()
        assert self._writer is not None
        self._writer.close()

    def discard(self) -> None:
        """Drop what is buffered and close the Parquet writer while its file is open (the
        part is abandoned): else the writer, collected later, writes to a closed file."""
        self._rows, self._arrow, self._buffered = [], [], 0
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):  # the part is deleted anyway
                writer.close()


def schema_for(columns: Sequence[Column], batch: pa.RecordBatch) -> pa.Schema:
    """The columns' schema, with samples from an Arrow batch (time zones of queries)."""
    fields = []
    for i, c in enumerate(columns):
        t = batch.schema.field(i).type
        sample = _Aware() if pa.types.is_timestamp(t) and t.tz else None
        fields.append(pa.field(c.name, arrow_type(c, sample)))
    return pa.schema(fields)


class _Aware:
    tzinfo = "UTC"


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = [arr.cast(f.type) for arr, f in zip(batch.columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


@contextmanager
def local_copy(storage: Storage, key: str) -> Iterator[Path]:
    """A seekable local file for a stored object (the object itself when on local disk)."""
    path = storage.local_path(key)
    if path is not None:
        yield path
        return
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        with storage.open_read(key) as src:
            shutil.copyfileobj(src, tmp, 1 << 20)
        tmp.flush()
        yield Path(tmp.name)


def read_batches(
    storage: Storage, segments: Sequence[Segment], schema: pa.Schema | None = None
) -> Iterator[pa.RecordBatch]:
    """The segments' rows, one row group at a time, cast to `schema` when given."""
    for seg in segments:
        with local_copy(storage, seg.key) as path:
            pf = pq.ParquetFile(path)
            for i in range(pf.num_row_groups):
                table = pf.read_row_group(i)
                if schema is not None and table.schema != schema:
                    table = table.cast(schema)
                yield from table.to_batches()


def unified_schema(storage: Storage, segments: Sequence[Segment]) -> pa.Schema:
    schemas = []
    for seg in segments:
        with local_copy(storage, seg.key) as path:
            schemas.append(pq.read_schema(path))
    return pa.unify_schemas(schemas, promote_options="permissive")


class ParquetFormat:
    name = "parquet"
    extension = ".parquet"
    media_type = "application/vnd.apache.parquet"
    exact_bytes = False

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = ParquetOptions(options)

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> ParquetRowWriter:
        return ParquetRowWriter(out, columns, self.options)

    def file_size(self, columns: Sequence[Column], segment_sizes: Sequence[int]) -> int:
        return sum(segment_sizes)

    def assemble(
        self, storage: Storage, key: str, segments: Sequence[Segment], columns: Sequence[Column]
    ) -> Written:
        full = [s for s in segments if s.rows] or list(segments[:1])
        if not full:
            return self._empty(storage, key, columns)
        # one part is a complete file as asked; several are copied through (or rewritten)
        pieces = [full[0].key] if len(full) == 1 else self._copy_through(storage, full)
        if pieces is None:
            return self._rewrite(storage, key, full)
        done = storage.compose(key, pieces)
        return Written(done.bytes, done.sha256)

    def _copy_through(self, storage: Storage, segments: Sequence[Segment]) -> list[Piece] | None:
        footers = []
        for seg in segments:
            footer = read_footer(storage, seg.key, seg.bytes)
            if footer is None:
                return None
            footers.append(footer)
        return copy_through(footers, self.options.codec, self.options.row_group_size)

    def _rewrite(self, storage: Storage, key: str, full: Sequence[Segment]) -> Written:
        """The segments' rows decoded and written again (segments that differ)."""
        schema = unified_schema(storage, full)
        with storage.open_write(key) as raw:
            out = HashingWriter(raw)
            writer = self.options.writer(out, schema)
            for table in regroup(read_batches(storage, full, schema), self.options.row_group_size):
                writer.write_table(table, row_group_size=self.options.row_group_size)
            writer.close()
        return Written(out.count, out.hexdigest())

    def _empty(self, storage: Storage, key: str, columns: Sequence[Column]) -> Written:
        schema = pa.schema([pa.field(c.name, arrow_type(c)) for c in columns])
        with storage.open_write(key) as raw:
            out = HashingWriter(raw)
            self.options.writer(out, schema).close()
        return Written(out.count, out.hexdigest())


def regroup(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of exactly `size` rows (the last one shorter) from batches of any size."""
    buf: list[pa.RecordBatch] = []
    n = 0
    for batch in batches:
        buf.append(batch)
        n += batch.num_rows
        while n >= size:
            table = pa.Table.from_batches(buf)
            yield table.slice(0, size)
            rest = table.slice(size)
            buf, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(buf)
