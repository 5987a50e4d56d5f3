"""An import's work on one partition (stage 60): its records read, every value checked
against the target's column (`TargetColumn.convert`), the valid rows loaded into the
partition's own staging table (named after the attempt's lease token) or, on the fast
path into PostgreSQL, staged as the attempt's files (`staged`: a COPY-ready CSV file and
its key file, in the attempt's folder), the rejected ones written to the attempt's
error file; then the fenced commit. A commit that fails (the lease was lost) drops the
attempt's staging table; a killed attempt's table is dropped by the task's end (every
staging table of the task), its files with the task's parts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from exportd import metrics
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.imports.columnar import ColumnarChecker, csv_payload, unsupported
from exportd.execution.imports.files import read_options, source_file
from exportd.execution.imports.native import Checked, NativeChecker
from exportd.execution.imports.staged import DATA, KEYS, FileSink, file_sink, files_refused
from exportd.execution.partition import PartitionRun, part_folder
from exportd.formats.readers import Block, Record, delimited_blocks, read_records
from exportd.model import Task
from exportd.model.plan import ImportSpec
from exportd.sources.targets import (
    LINE_COLUMN,
    Target,
    TargetColumn,
    ValueRules,
    converter,
    full_mapping,
)

log = logging.getLogger(__name__)

MAX_ITEMS = 1000  # rejected rows kept per partition for the status (all go to the report)
# the fast path checks at least this many rows at once (each Arrow call has a fixed cost)
FAST_BATCH_ROWS = 1 << 16


def rules_of(spec: ImportSpec) -> ValueRules:
    text = spec.format in ("csv", "tsv", "xlsx")  # JSON and Parquet say null themselves
    return ValueRules(
        null_values=frozenset(spec.null_values) if text else frozenset(),
        date_format=spec.date_format,
        datetime_format=spec.datetime_format,
        timezone=spec.timezone,
        decimal_separator=spec.decimal_separator,
    )


def column_map(spec: ImportSpec, target: Target, file_columns: list[str]) -> dict[str, str]:
    """Table column -> file column (see `full_mapping`)."""
    header = spec.header or spec.format not in ("csv", "tsv", "xlsx")
    return full_mapping(target, spec.mapping, spec.ignored, spec.constants, file_columns, header)


@dataclass
class Checker:
    """Turns a record into a staging row, or into a rejection (column, reason)."""

    columns: list[tuple[str, str, Callable[[Any], Any]]]  # table column, file column, convert
    constants: dict[str, Any]
    required: list[TargetColumn]  # NOT NULL, no default, and neither mapped nor constant
    rules: ValueRules
    positions: list[tuple[str, int, Callable[[Any], Any]]]  # by field position (delimited)

    @classmethod
    def of(cls, task: Task, target: Target) -> Checker:
        spec = task.plan.imports
        assert spec is not None
        mapping = column_map(spec, target, list(task.columns))
        rules = rules_of(spec)
        cols = [
            (t, f, converter(c, rules))
            for t, f in mapping.items()
            if (c := target.column(t)) is not None
        ]
        consts = {k: target.column(k).convert(v, rules) for k, v in spec.constants.items()}  # type: ignore[union-attr]
        taken = set(mapping) | set(consts)
        required = [
            c
            for c in target.columns
            if c.name not in taken and not c.nullable and not c.has_default
        ]
        index = {name: i for i, name in enumerate(task.columns)}
        positions = [(t, index.get(f, -1), conv) for t, f, conv in cols]
        return cls(cols, consts, required, rules, positions)

    @property
    def loaded(self) -> list[str]:
        return [t for t, _, _ in self.columns] + list(self.constants)

    def row(self, rec: Record) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if rec.error is not None or (rec.values is None and rec.fields is None):
            return None, [{"line": rec.line, "column": None, "reason": rec.error}]
        out: dict[str, Any] = {LINE_COLUMN: rec.line}
        bad = []
        if rec.fields is not None:
            fields = rec.fields
            for table_col, pos, convert in self.positions:
                try:
                    out[table_col] = convert(fields[pos] if pos >= 0 else None)
                except ValueError as exc:
                    bad.append({"line": rec.line, "column": table_col, "reason": str(exc)})
        else:
            values = rec.values or {}
            for table_col, file_col, convert in self.columns:
                try:
                    out[table_col] = convert(values.get(file_col))
                except ValueError as exc:
                    bad.append({"line": rec.line, "column": table_col, "reason": str(exc)})
        for col in self.required:
            bad.append(
                {
                    "line": rec.line,
                    "column": col.name,
                    "reason": "a value is required (the column is NOT NULL)",
                }
            )
        if bad:
            return None, bad
        out.update(self.constants)
        return out, []


def load_partition(run: PartitionRun, hb: Heartbeat) -> None:
    rt, task, part = run.rt, run.task, run.part
    spec = task.plan.imports
    assert spec is not None
    target = Target.reflect_for(
        rt.targets.get(rt.connections.dataset_url(run.dataset)),
        run.dataset.table or "",
        task.task_id,
    )
    checker = Checker.of(task, target)
    why_not = fast_path_refused(rt.settings.fast_paths, spec, target, checker)
    no_files = why_not or files_refused(rt.settings.import_staged_files, target, spec)
    stage = (
        None if no_files is None else target.stage_name(task.task_id, part.index, run.lease.token)
    )
    if stage is not None:
        target.create_stage(stage, checker.loaded)
        log.debug("%s: rows staged in a table (%s)", run.where, no_files)
    table = target.stage_table(stage or "exportd_files", checker.loaded)
    folder = part_folder(task, part, run.lease)
    errors_key = folder + "rejected.jsonl"
    load = _Load(rt.settings.batch_size)
    committed = False
    filed: FileSink | None = None
    try:
        with source_file(rt, spec) as path, rt.storage.open_write(errors_key) as errors:
            if why_not is None:
                loaded = [(t, p) for t, p, _ in checker.positions]
                fast = ColumnarChecker.of(target, loaded, checker.constants, checker.rules)
                load.fast = True
                opts = read_options(spec)
                native = None
                if rt.settings.import_native_check:
                    key = spec.key if stage is None else []
                    native = NativeChecker.of(target, loaded, checker.constants, checker.rules,
                                              list(key), opts.sep, len(task.columns),
                                              with_line=stage is not None)  # fmt: skip
                load.native = native is not None
                blocks = delimited_blocks(path, opts, part.bounds, list(task.columns), plain=native)
                if stage is None:
                    with file_sink(rt.storage, folder, target, checker.loaded, spec.key) as sink:
                        _check_blocks(run, hb, blocks, fast, checker,
                                      _Sink(sink.good, sink.text, sink.python), errors, load)  # fmt: skip
                    filed = sink
                else:
                    _load_blocks(run, hb, blocks, fast, checker, table, errors, load)
            else:
                log.debug("%s: the Python path (%s)", run.where, why_not)
                _load_records(run, hb, path, target, checker, table, errors, load)
            nbytes = bytes_read(path, part.bounds)
        if stage is not None:
            target.index_stage(stage, spec.key)
        result: dict[str, Any] = {
            "index": part.index,
            "stage": stage,
            "loaded": load.loaded,
            "rejected": load.rejected,
            "errors": errors_key,
            "items": load.items,
            "fast_path": load.fast,
            "checked_in_c": load.native,
            "checked_in_python": load.by_python,
        }
        if filed is not None:
            result.update(data=folder + DATA, keys=folder + KEYS, rows=filed.rows,
                          data_bytes=filed.written, keys_bytes=filed.keys_bytes)  # fmt: skip
        result_key = folder + "result.json"
        with rt.storage.open_write(result_key) as out:
            out.write(orjson.dumps(result))
        hb.check()
        committed = rt.store.commit_partition(
            task.task_id, part.index, run.lease.token, result_key, load.loaded, 0, ""
        )
        if committed:
            metrics.committed(load.loaded, nbytes)
        else:
            log.warning("%s: lease lost before the commit", run.where)
    finally:
        if not committed and stage is not None:
            try:
                target.drop_stages([stage])
            except Exception as exc:  # dropped with the task's end otherwise
                log.warning(
                    "%s: staging table left for the end (%s)", run.where, type(exc).__name__
                )


@dataclass
class _Load:
    """A partition's counts so far and the rejected rows kept for the status."""

    batch: int
    loaded: int = 0
    rejected: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    fast: bool = False
    native: bool = False  # on the fast path: chunks checked in C (`native`)
    by_python: int = 0  # rows the Python checker looked at (on the fast path: the doubtful)

    def reject(self, out: BinaryIO, rec: Record, bad: list[dict[str, Any]]) -> None:
        self.rejected += 1
        _reject(out, rec, bad)
        self.items.extend(bad[: max(MAX_ITEMS - len(self.items), 0)])


def fast_path_refused(
    enabled: bool, spec: ImportSpec, target: Target, checker: Checker
) -> str | None:
    """Why a partition of this import takes the Python path (None: the fast path). The
    choice is made per import from what it is, never from its data; see `columnar`."""
    if not enabled:
        return "fast paths are turned off (EXPORTD_FAST_PATHS)"
    if spec.format not in ("csv", "tsv") or spec.compression != "none":
        return f"{spec.format} ({spec.compression}) is read record by record"
    consts = dict(checker.constants)
    return unsupported(target, [(t, p) for t, p, _ in checker.positions], consts,
                       checker.required, checker.rules)  # fmt: skip


def _tick(run: PartitionRun, hb: Heartbeat, load: _Load) -> None:
    hb.progress(load.loaded, 0)
    if run.rt.settings.debug_pause_import_batch:
        time.sleep(run.rt.settings.debug_pause_import_batch)
    hb.check()


def _load_records(
    run: PartitionRun, hb: Heartbeat, path: Path, target: Target, checker: Checker,
    table: sa.Table, errors: BinaryIO, load: _Load,
) -> None:  # fmt: skip
    """The Python path: record by record, every value through `TargetColumn.convert`."""
    spec, task = run.task.plan.imports, run.task
    assert spec is not None
    records = read_records(path, read_options(spec), run.part.bounds, list(task.columns))
    for batch in _batches(records, load.batch):
        rows = []
        load.by_python += len(batch)
        for rec in batch:
            row, bad = checker.row(rec)
            if row is None:
                load.reject(errors, rec, bad)
            else:
                rows.append(row)
        target.load(table, rows)
        load.loaded += len(rows)
        _tick(run, hb, load)


def _load_blocks(
    run: PartitionRun, hb: Heartbeat, blocks: Iterator[Block | Checked],
    fast: ColumnarChecker, checker: Checker, table: sa.Table, errors: BinaryIO, load: _Load,
) -> None:  # fmt: skip
    """The fast path into a staging table: the good rows COPYed in CSV (with their lines),
    the Python checker's by `Target.load`."""
    target = fast.target
    names = [c.name for c in table.columns]
    with target.csv_copier(table.name, names) as copy:

        def good(rows: pa.Table) -> None:
            copy(csv_payload(rows.select(names)))

        sink = _Sink(good, lambda c: copy(c.data), lambda rows: target.load(table, rows))
        _check_blocks(run, hb, blocks, fast, checker, sink, errors, load)


@dataclass(frozen=True)
class _Sink:
    """Where the fast path's good rows go: Arrow's (a table with `exportd_line`), C's
    (COPY text, `Checked`), the Python checker's (rows with `exportd_line`)."""

    table: Callable[[pa.Table], None]
    text: Callable[[Checked], None]
    python: Callable[[list[dict[str, Any]]], None]


def _check_blocks(
    run: PartitionRun, hb: Heartbeat, blocks: Iterator[Block | Checked], fast: ColumnarChecker,
    checker: Checker, sink: _Sink, errors: BinaryIO, load: _Load,
) -> None:  # fmt: skip
    """Each block's rows checked; the good ones handed to the sink."""
    for block in blocks:
        if isinstance(block, Checked):
            _checked_chunk(run, hb, block, checker, sink, errors, load)
            continue
        rejects: list[tuple[Record, list[dict[str, Any]]]] = []
        for rec in block.rejected:
            _row, bad = checker.row(rec)
            rejects.append((rec, bad))
        # (with the fault tests' pause, batches of `batch_size` as on the Python path)
        paused = bool(run.rt.settings.debug_pause_import_batch)
        step = load.batch if paused else max(load.batch, FAST_BATCH_ROWS)
        for at in range(0, max(block.rows, 1), step):
            n = min(step, block.rows - at)
            if n <= 0:
                break
            cols = [c.slice(at, n) for c in block.columns]
            good, slow = fast.check(cols, block.lines.slice(at, n))
            sink.table(good)
            doubtful = pc.indices_nonzero(slow).to_pylist()
            load.by_python += len(doubtful)
            records = (
                Record(int(block.lines[at + i].as_py()), block.raw(at + i), None, None,
                       [c[i].as_py() for c in cols])
                for i in doubtful
            )  # fmt: skip
            rows = _python_rows(checker, records, rejects)
            sink.python(rows)
            load.loaded += good.num_rows + len(rows)
            _tick(run, hb, load)
        for rec, bad in sorted(rejects, key=lambda r: r[0].line):
            load.reject(errors, rec, bad)
        if not block.rows:
            _tick(run, hb, load)


def _python_rows(
    checker: Checker, records: Iterable[Record],
    rejects: list[tuple[Record, list[dict[str, Any]]]],
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows the Python checker accepts of `records`; the others go to `rejects`."""
    rows = []
    for rec in records:
        row, bad = checker.row(rec)
        if row is None:
            rejects.append((rec, bad))
        else:
            rows.append(row)
    return rows


def _checked_chunk(
    run: PartitionRun, hb: Heartbeat, chunk: Checked, checker: Checker, sink: _Sink,
    errors: BinaryIO, load: _Load,
) -> None:  # fmt: skip
    """A chunk checked in C: its good rows to the sink, its doubtful lines through the
    Python checker (each split at the separator, as the C check split it)."""
    sink.text(chunk)
    rejects: list[tuple[Record, list[dict[str, Any]]]] = []
    load.by_python += len(chunk.doubtful)
    texts = ((i, bytes(chunk.chunk[start:end]).decode()) for i, start, end in chunk.doubtful)
    records = (Record(chunk.first_line + i, t, None, None, t.split(chunk.sep)) for i, t in texts)
    rows = _python_rows(checker, records, rejects)
    sink.python(rows)
    done = chunk.rows + len(rows)
    # (with the fault tests' pause: a tick per `batch_size` rows, as on the other paths)
    step = load.batch if run.rt.settings.debug_pause_import_batch else max(done, 1)
    for at in range(0, max(done, 1), step):
        load.loaded += min(step, done - at)
        _tick(run, hb, load)
    for rec, bad in rejects:
        load.reject(errors, rec, bad)


def bytes_read(path: Path, bounds: dict[str, Any]) -> int:
    """The bytes of the file a partition read: its byte range, or its row groups."""
    if "row_groups" in bounds:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        return sum(meta.row_group(g).total_byte_size for g in bounds["row_groups"])
    end = bounds.get("end")
    return (path.stat().st_size if end is None else int(end)) - int(bounds.get("start") or 0)


def _reject(out: BinaryIO, rec: Record, bad: list[dict[str, Any]]) -> None:
    line = {"line": rec.line, "reasons": [_reason(b) for b in bad], "raw": rec.raw}
    out.write(orjson.dumps(line) + b"\n")


def _reason(b: dict[str, Any]) -> str:
    return f"{b['column']}: {b['reason']}" if b.get("column") else str(b["reason"])


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for rec in records:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
