"""CSV, JSON Lines or Parquet files read with pyarrow's dataset API. Partitions follow the
files and, for Parquet, their row groups; filters are pushed down into the scan as
pyarrow.compute expressions (Parquet skips row groups by their statistics)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from exportd.errors import BadRequest, SourceError
from exportd.model import Dataset
from exportd.sources import Estimate, Selection
from exportd.sources.paths import SAMPLE_BYTES, estimate_lines, expand

FILE_FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_LOCAL = pafs.LocalFileSystem()


def file_format_of(pattern: str, given: str | None) -> str:
    """The format named at registration, or the one the pattern's extension implies."""
    found = given or _SUFFIXES.get(Path(pattern).suffix.lower())
    if found not in FILE_FORMATS:
        raise BadRequest(
            f"file_format must be one of {', '.join(FILE_FORMATS)} (not implied by the path)",
            "INVALID_DATASET",
        )
    return str(found)


def arrow_format(name: str) -> ds.FileFormat:
    """The pyarrow format. CSV values may hold quoted newlines, and an empty cell is NULL
    (CSV cannot tell them apart; exportd writes NULL as an empty cell too)."""
    if name == "parquet":
        return ds.ParquetFileFormat()
    if name == "csv":
        return ds.CsvFileFormat(
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
    return ds.JsonFileFormat()


def arrow_kind(t: pa.DataType) -> str:
    """The coarse kind of an Arrow type: how filter values are coerced."""
    checks = (
        (pa.types.is_boolean, "bool"),
        (pa.types.is_integer, "int"),
        (pa.types.is_floating, "float"),
        (pa.types.is_decimal, "decimal"),
        (pa.types.is_timestamp, "datetime"),
        (pa.types.is_date, "date"),
        (lambda x: pa.types.is_string(x) or pa.types.is_large_string(x), "str"),
        (lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x), "bytes"),
        (lambda x: pa.types.is_nested(x), "json"),
    )
    return next((kind for check, kind in checks if check(t)), "unknown")


def describe_files(files: list[str], file_format: str) -> tuple[list[dict[str, Any]], str]:
    """The fields of the files (their schemas unified) and the schema, serialized, kept
    with the dataset so that every partition reads every file with the same columns."""
    try:
        fmt = arrow_format(file_format)
        schemas = [fmt.make_fragment(f, filesystem=_LOCAL).physical_schema for f in files]
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowException, OSError) as exc:
        raise BadRequest(
            f"the files could not be read: {str(exc)[:300]}", "INVALID_DATASET"
        ) from None
    fields = [{"name": f.name, "type": str(f.type), "kind": arrow_kind(f.type)} for f in schema]
    return fields, base64.b64encode(schema.serialize().to_pybytes()).decode()


def _expr_clause(field: pc.Expression, op: str, value: Any) -> pc.Expression:
    match op:
        case "eq":
            return field == value
        case "ne":
            return (field != value) | field.is_null()
        case "in":
            return field.isin(value)
        case "nin":
            return ~field.isin(value) | field.is_null()
        case "lt":
            return field < value
        case "lte":
            return field <= value
        case "gt":
            return field > value
        case "gte":
            return field >= value
        case "between":
            return (field >= value[0]) & (field <= value[1])
        case "like":
            return pc.match_like(field, value)
        case "is_null":
            return field.is_null() if value else field.is_valid()
    raise AssertionError(op)


def compile_arrow_filter(conditions: list[dict[str, dict[str, Any]]]) -> pc.Expression | None:
    """A validated filter as a pyarrow expression (OR of ANDs); None: no filter."""
    ors: list[pc.Expression] = []
    for cond in conditions:
        ands = [
            _expr_clause(pc.field(f), op, v) for f, ops in cond.items() for op, v in ops.items()
        ]
        expr = ands[0]
        for a in ands[1:]:
            expr = expr & a
        ors.append(expr)
    if not ors:
        return None
    result = ors[0]
    for o in ors[1:]:
        result = result | o
    return result


class ArrowFilesSource:
    def __init__(self, dataset: Dataset) -> None:
        self.pattern = str(dataset.options["path"])
        self.root = Path(dataset.options["root"])
        self.file_format = str(dataset.options["file_format"])
        self.format = arrow_format(self.file_format)
        raw = base64.b64decode(dataset.options["arrow_schema"])
        self.schema = pa.ipc.read_schema(pa.py_buffer(raw))

    def _files(self) -> list[str]:
        return expand(self.pattern, self.root)

    def estimate(self, sel: Selection) -> Estimate:
        """Parquet: the row counts of the files' metadata (exact without a filter, an upper
        bound with one); CSV and JSON Lines: counted lines, or extrapolated when large."""
        files = self._files()
        if self.file_format == "parquet":
            total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            return Estimate(total, bool(sel.filter))
        if sel.filter:
            return Estimate(None, True)
        if sum(os.path.getsize(f) for f in files) <= SAMPLE_BYTES:  # small: count exactly
            pieces = [{"file": f} for f in files]
            return Estimate(sum(self._count(p, sel) for p in pieces), False)
        count, _ = estimate_lines(files, 1 if self.file_format == "csv" else 0)
        return Estimate(count, True)

    def _pieces(self) -> list[tuple[dict[str, Any], int]]:
        """Units of work with their weight: Parquet row groups (rows), other files (bytes)."""
        pieces: list[tuple[dict[str, Any], int]] = []
        for f in self._files():
            if self.file_format == "parquet":
                meta = pq.ParquetFile(f).metadata
                for rg in range(meta.num_row_groups):
                    pieces.append(({"file": f, "row_groups": [rg]}, meta.row_group(rg).num_rows))
            else:
                pieces.append(({"file": f, "row_groups": None}, Path(f).stat().st_size))
        return pieces

    def plan(self, sel: Selection, parallelism: int) -> list[dict[str, Any]]:
        """Contiguous runs of pieces of about equal weight, in file and row group order:
        a piece goes to the partition its weighted midpoint falls into."""
        try:
            pieces = self._pieces()
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(
                f"the files could not be read: {str(exc)[:300]}", "SOURCE_UNAVAILABLE"
            ) from None
        total = max(sum(w for _, w in pieces), 1)
        parts: dict[int, list[dict[str, Any]]] = {}
        start = 0
        for piece, w in pieces:
            index = min(int((start + w / 2) * parallelism / total), parallelism - 1)
            parts.setdefault(index, []).append(piece)
            start += w
        return [{"pieces": _merge_row_groups(parts[i])} for i in sorted(parts)] or [{"pieces": []}]

    def _scanner(self, piece: dict[str, Any], sel: Selection, **kw: Any) -> ds.Scanner:
        frag = self.format.make_fragment(piece["file"], filesystem=_LOCAL)
        if piece.get("row_groups") is not None:
            frag = frag.subset(row_group_ids=piece["row_groups"])
        return ds.Scanner.from_fragment(
            frag, schema=self.schema, filter=compile_arrow_filter(sel.filter), **kw
        )

    def read(
        self, sel: Selection, bounds: dict[str, Any], batch_size: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        try:
            for piece in bounds["pieces"]:
                scanner = self._scanner(piece, sel, columns=sel.columns, batch_size=batch_size)
                for rb in scanner.to_batches():
                    if rb.num_rows:
                        yield list(zip(*(c.to_pylist() for c in rb.columns), strict=True))
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(
                f"reading the files failed: {str(exc)[:300]}", "SOURCE_QUERY_FAILED"
            ) from None

    def count(self, sel: Selection, bounds: dict[str, Any]) -> int:
        return sum(self._count(p, sel) for p in bounds["pieces"])

    def _count(self, piece: dict[str, Any], sel: Selection) -> int:
        """Rows of a piece that the filter selects. Not `Scanner.count_rows()`: on a row
        group subset without a filter it answers the whole file's count (pyarrow 26)."""
        scanner = self._scanner(piece, sel, columns=[])
        return sum(batch.num_rows for batch in scanner.to_batches())


def _merge_row_groups(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adjacent row groups of one file become one piece (one fragment to scan)."""
    merged: list[dict[str, Any]] = []
    for p in pieces:
        last = merged[-1] if merged else None
        if last and last["file"] == p["file"] and last["row_groups"] is not None:
            last["row_groups"] = [*last["row_groups"], *p["row_groups"]]
        else:
            merged.append(dict(p))
    return merged
