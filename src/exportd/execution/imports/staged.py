"""Rows staged as files (the fast path into PostgreSQL, append and replace): instead of
COPYing its checked rows into a staging table (which PostgreSQL then writes a second
time at the publish, by `INSERT ... SELECT`), a partition writes them to the task's
storage as a COPY-ready CSV file (`rows.csv`: the loaded columns, every text value
quoted, NULL an empty unquoted field, in the order the partition accepted them) and the line and key of each of
those rows as an Arrow IPC file (`keys.arrow`). The coordinator, in its one publish
transaction, COPYs the files straight into the target; the duplicate keys across the
file are found from the key files (one Arrow sort by key and line: the first line of a
key is kept, as the staging tables' `row_number()` keeps it), and a partition holding
one of them has its file filtered on the way (read back by `pyarrow.csv`, every value as
text).

The rule (`files_refused`): `EXPORTD_IMPORT_STAGED_FILES` (default true); the fast path
runs; the mode is `append` or `replace` (`upsert` merges through staging tables); every
key column is of kind int or str (Arrow compares them as PostgreSQL does); in `append`
mode with a key, the target declares that key unique (so a key already in the table
makes the COPY fail, rather than slip in). A COPY the target refuses (a key already in
the table, a constraint the checks do not know) rolls the whole publish back, and the
task goes the staging path (`to_stages`: each file COPYed into a staging table with its
lines, the existing checks and publish), so its outcome (rows, failed items, reasons) is
exactly the staging path's. A marker object (`FALLBACK`) records that choice for any
coordinator that takes the task over."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from exportd.errors import ExportdError
from exportd.execution.imports.columnar import csv_payload
from exportd.execution.imports.native import Checked
from exportd.model.plan import ImportMode, ImportSpec
from exportd.sources.targets import LINE_COLUMN, Target
from exportd.storage import Storage

DATA = "rows.csv"
KEYS = "keys.arrow"
FALLBACK = "staged_in_tables.json"  # under the task's parts prefix
CHUNK = 1 << 20

Write = Callable[[bytes], None]


def files_refused(enabled: bool, target: Target, spec: ImportSpec) -> str | None:
    """Why this import's rows are staged in tables, not files (None: files); see above."""
    if not enabled:
        return "staged files are turned off (EXPORTD_IMPORT_STAGED_FILES)"
    if spec.mode is ImportMode.UPSERT:
        return "upsert merges through staging tables"
    for k in spec.key:
        col = target.column(k)
        if col is None or col.kind not in ("int", "str"):
            return f"the key column {k!r} is not of kind int or str"
    if spec.mode is ImportMode.APPEND and spec.key and tuple(spec.key) not in target.unique:
        return "the key is not declared unique by the table (append checks it against the table)"
    return None


def _key_type(target: Target, name: str) -> pa.DataType:
    col = target.column(name)
    return pa.int64() if col is not None and col.kind == "int" else pa.string()


def pg_csv_rows(rows: list[dict[str, Any]], names: Sequence[str]) -> bytes:
    """Rows the Python checker accepted (Python values) as PostgreSQL's CSV COPY reads
    them, as `csv_payload` writes them (here every value quoted: also read right), NULL
    an empty unquoted field."""
    out = io.StringIO()
    for row in rows:
        out.write(",".join(_cell(row.get(n)) for n in names))
        out.write("\n")
    return out.getvalue().encode()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif isinstance(v, float):
        text = repr(v)
    elif hasattr(v, "isoformat"):
        text = v.isoformat()
    else:
        text = str(v)
    return '"' + text.replace('"', '""') + '"'


@dataclass
class FileSink:
    """Where a partition's accepted rows go when they are staged as files."""

    out: BinaryIO
    names: list[str]  # the loaded columns, in the file's column order
    key: list[str]
    types: list[pa.DataType]
    keys: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    written: int = 0
    keys_bytes: int = 0

    def _write(self, data: bytes) -> None:
        if data:
            self.out.write(data)
            self.written += len(data)

    def good(self, table: pa.Table) -> None:
        """Rows the Arrow checks accepted (with `exportd_line`)."""
        if not table.num_rows:
            return
        self._write(csv_payload(table.select(self.names)))
        cols = {k: pc.cast(table[k], t) for k, t in zip(self.key, self.types, strict=True)}
        self.keys.append(pa.table({**cols, LINE_COLUMN: pc.cast(table[LINE_COLUMN], pa.int64())}))
        self.rows += table.num_rows

    def text(self, checked: Checked) -> None:
        """Rows the C checks accepted (COPY text, their keys and lines)."""
        if not checked.rows:
            return
        self._write(checked.data)
        keys = dict(zip(self.key, checked.keys, strict=True))
        self.keys.append(pa.table({**keys, LINE_COLUMN: checked.lines}))
        self.rows += checked.rows

    def python(self, rows: list[dict[str, Any]]) -> None:
        """Rows the Python checker accepted (with `exportd_line`)."""
        if not rows:
            return
        self._write(pg_csv_rows(rows, self.names))
        cols = {
            k: pa.array([r.get(k) for r in rows], t)
            for k, t in zip(self.key, self.types, strict=True)
        }
        lines = pa.array([int(r[LINE_COLUMN]) for r in rows], pa.int64())
        self.keys.append(pa.table({**cols, LINE_COLUMN: lines}))
        self.rows += len(rows)

    def write_keys(self, out: BinaryIO) -> int:
        """The key file, batch by batch (no copy of the whole); its size."""
        schema = pa.schema(
            [*(pa.field(k, t) for k, t in zip(self.key, self.types, strict=True)),
             pa.field(LINE_COLUMN, pa.int64())]
        )  # fmt: skip
        counted = _Counted(out)
        with pa.ipc.new_file(pa.PythonFile(counted, mode="w"), schema) as w:
            for table in self.keys:
                w.write_table(table.cast(schema))
        self.keys.clear()
        return counted.size


class _Counted:
    """A writer that counts what went through it (any storage's writer beneath)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@contextmanager
def file_sink(
    storage: Storage, folder: str, target: Target, names: list[str], key: Sequence[str]
) -> Iterator[FileSink]:
    """The sink of one attempt; its two files exist once the block exits without error."""
    types = [_key_type(target, k) for k in key]
    # not fsynced (as an export's parts): the publish checks the sizes the commit
    # recorded, so a file an OS crash cut short fails the publish, never shortens it
    with storage.open_write(folder + DATA, durable=False) as out:
        sink = FileSink(out, list(names), list(key), types)
        yield sink
    with storage.open_write(folder + KEYS, durable=False) as kout:
        sink.keys_bytes = sink.write_keys(kout)


def check_sizes(storage: Storage, result: dict[str, Any]) -> None:
    """The files of a committed partition are whole (see `file_sink`)."""
    for name, size in (
        (result["data"], result["data_bytes"]),
        (result["keys"], result["keys_bytes"]),
    ):
        if not storage.exists(name) or storage.size(name) != int(size):
            raise ExportdError(
                f"the staged rows of partition {result['index']} are gone or cut short ({name})",
                "STAGED_FILE_LOST",
            )


def read_keys(storage: Storage, result: dict[str, Any]) -> pa.Table:
    with storage.open_read(result["keys"]) as f:
        return pa.ipc.open_file(pa.BufferReader(f.read())).read_all()


def duplicates(
    storage: Storage, results: list[dict[str, Any]], key: Sequence[str]
) -> list[tuple[int, str]]:
    """(line, reason) of the rows that repeat the key of an earlier line of the file (a
    NULL in the key repeats nothing), as the staging tables' `row_number()` finds them."""
    if not key or not results:
        return []
    if len(key) == 1 and _apart(storage, results, key[0]):
        return []
    table = pa.concat_tables([read_keys(storage, r) for r in results])
    known = None
    for k in key:
        valid = pc.is_valid(table[k])
        known = valid if known is None else pc.and_(known, valid)
    if known is not None and pc.any(pc.invert(known)).as_py():
        table = table.filter(known)
    if table.num_rows < 2:
        return []
    # one sort by (key, line): a row whose key is its predecessor's repeats an earlier
    # line (far less memory and time than a hash group-by: 3.4 M keys in 0.3 s, 90 MB)
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in [*key, LINE_COLUMN]])
    ordered = table.take(order)
    n = ordered.num_rows
    same = None
    for k in key:
        col = ordered[k]
        eq = pc.equal(col.slice(1), col.slice(0, n - 1))
        same = eq if same is None else pc.and_(same, eq)
    assert same is not None
    later = ordered[LINE_COLUMN].slice(1).filter(same)
    why = f"duplicate key ({', '.join(key)}) in the file"
    return [(int(v), why) for v in sorted(later.to_pylist())]


class PrefixDuplicates:
    """`duplicates` of a growing prefix of the partitions, partition by partition (the
    streamed publish): while a single key's partitions repeat nothing and their ranges do
    not overlap (`_apart`), each new partition is checked alone against the ranges so far,
    so no key file is read twice; after that, the whole prefix by `duplicates`."""

    def __init__(self, storage: Storage, key: Sequence[str]) -> None:
        self.storage, self.key = storage, list(key)
        self.results: list[dict[str, Any]] = []  # the prefix
        self.found: list[tuple[int, str]] = []  # its duplicates, as `duplicates` says them
        self.ranges: list[tuple[Any, Any]] = []
        self.apart = len(self.key) == 1

    def add(self, result: dict[str, Any]) -> set[int]:
        """The lines of the prefix, `result` its new last partition, that repeat a key."""
        self.results.append(result)
        if self.key and not self._still_apart(result):
            self.found = duplicates(self.storage, self.results, self.key)
        return {n for n, _ in self.found}

    def _still_apart(self, result: dict[str, Any]) -> bool:
        """The prefix's single key repeats nothing, `result`'s keys seen alone."""
        if not self.apart:
            return False
        col = pc.drop_null(read_keys(self.storage, result)[self.key[0]])
        if len(col):
            bounds = pc.min_max(col).as_py()
            lo, hi = bounds["min"], bounds["max"]
            self.apart = not _repeats(col) and all(hi < a or lo > b for a, b in self.ranges)
            self.ranges.append((lo, hi))
        return self.apart


def _repeats(col: pa.ChunkedArray) -> bool:
    """Whether a value repeats: no when the values only ever grow (a file in key order,
    as most are: one comparison of neighbours, no sorted copy held), else by a sort."""
    n = len(col)
    if n < 2:
        return False
    if pc.all(pc.greater(col.slice(1), col.slice(0, n - 1))).as_py():
        return False
    ranked = col.take(pc.array_sort_indices(col))
    return bool(pc.any(pc.equal(ranked.slice(1), ranked.slice(0, n - 1))).as_py())


def _apart(storage: Storage, results: list[dict[str, Any]], key: str) -> bool:
    """True when no value of a single key repeats: each partition's keys repeat nothing
    and the partitions' key ranges do not overlap (a file sorted or grouped by its key,
    as most are), checked one partition at a time (a quarter of the memory of the whole
    sort: 3.4 M keys would hold 130 MB at once). False: the whole sort decides."""
    ranges = []
    for r in results:
        col = pc.drop_null(read_keys(storage, r)[key])
        if not len(col):
            continue
        if _repeats(col):
            return False
        bounds = pc.min_max(col).as_py()
        ranges.append((bounds["min"], bounds["max"]))
        del col
    ranges.sort()
    return all(b[0] > a[1] for a, b in itertools.pairwise(ranges))


def _batches(storage: Storage, result: dict[str, Any], names: list[str]) -> Iterator[pa.Table]:
    """The file's rows back as text columns (NULL stays NULL, "" stays "")."""
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, null_values=[""],
        strings_can_be_null=True, quoted_strings_can_be_null=False,
    )  # fmt: skip
    read = pacsv.ReadOptions(column_names=names, block_size=4 << 20)
    parse = pacsv.ParseOptions(newlines_in_values=True)
    with storage.open_read(result["data"]) as f:
        if not result["rows"]:
            return
        reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
        for batch in reader:
            yield pa.Table.from_batches([batch])


def feed(
    storage: Storage, result: dict[str, Any], names: list[str], skip: set[int]
) -> Callable[[Write], None]:
    """What the publish sends for one partition: its file as it is, or, when some of its
    lines are duplicates, the file without them."""
    lines = read_keys(storage, result)[LINE_COLUMN] if skip else None

    def send(write: Write) -> None:
        if lines is None or not pc.any(pc.is_in(lines, pa.array(sorted(skip), pa.int64()))).as_py():
            with storage.open_read(result["data"]) as f:
                while chunk := f.read(CHUNK):
                    write(chunk)
            return
        drop = pa.array(sorted(skip), pa.int64())
        at = 0
        for batch in _batches(storage, result, names):
            keep = pc.invert(pc.is_in(lines.slice(at, batch.num_rows), drop))
            at += batch.num_rows
            write(csv_payload(batch.filter(keep)))

    return send


def to_stages(
    storage: Storage, target: Target, task_id: str, results: list[dict[str, Any]],
    names: list[str],
) -> None:  # fmt: skip
    """The fallback: each file-staged partition's rows into a staging table with their
    lines (made in one transaction each: a table that exists is whole), `stage` set in
    its result."""
    have = set(target.stages_of(task_id))
    for r in results:
        if not r.get("data"):
            continue
        stage = target.stage_name(task_id, int(r["index"]), "fromfile")
        r["stage"] = stage
        if stage in have:
            continue
        check_sizes(storage, r)
        lines = read_keys(storage, r)[LINE_COLUMN]

        def send(write: Write, r: dict[str, Any] = r, lines: pa.ChunkedArray = lines) -> None:
            at = 0
            for batch in _batches(storage, r, names):
                part = lines.slice(at, batch.num_rows)
                at += batch.num_rows
                write(csv_payload(batch.append_column(LINE_COLUMN, part)))

        target.stage_from_csv(stage, names, send)
