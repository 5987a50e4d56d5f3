"""The fastest path of an import's partition: each chunk of the file that Arrow would
parse without quoting (one record per line, no quote character: `delimited_blocks`'s
test) is split, checked value by value and written as PostgreSQL's CSV COPY text in one
pass in C (`_importcsv`, src/native/importcsv.c), instead of parsed into Arrow columns,
checked by `pyarrow.compute` (`columnar`) and written again.

The C checks, like `columnar`'s, only ever *accept*: a value passes in a strict form
whose meaning is the same for the Python checker (`TargetColumn.convert`) and for
PostgreSQL (`[+-]?digits` within the column's range; plain decimals, with at most two
exponent digits; `YYYY-MM-DD` days of years 1000-9999; ISO 8601 timestamps with an
optional `Z`/`+hh:mm` offset; text within its length; the boolean words). A row with any
other value is handed, alone, to the Python checker, which accepts or rejects it with
its exact reasons; a chunk that is not valid UTF-8 or has a line of another width goes
the Arrow way (which refuses it too: the record walker reads it). The good rows' text
is the file's own where PostgreSQL reads it as Python would (integers, dates, double
precision, decimals with the separator made `.`), else the value as Python has it
(`true`/`false`, a REAL's double, the UTC wall time of a zoned timestamp in a column
without a time zone, `+00:00` after a timestamp without an offset in one with).

What it takes beyond `columnar`'s rule (else the partition checks with pyarrow, the same
outcome): the C module was built; no date or timestamp format; timestamps in UTC; a
one-byte ASCII separator and decimal separator; every column without a field of the
file nullable; every key column read from the file. `EXPORTD_IMPORT_NATIVE_CHECK=false`
turns it off."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pyarrow as pa

from exportd.execution.imports.columnar import _pg_text
from exportd.sources.targets import FALSE, INT_RANGES, TRUE, Target, ValueRules


@functools.cache
def _module() -> ModuleType | None:
    try:
        from exportd.fastpaths import _importcsv
    except ImportError:
        return None
    return _importcsv


@dataclass(frozen=True)
class Checked:
    """A chunk the C checks went through: its good rows as COPY text (in line order),
    their lines and keys, and the lines left to the Python checker."""

    data: bytes
    rows: int
    lines: pa.Array  # int64
    keys: list[pa.Array]  # per key column: int64 or string
    doubtful: list[tuple[int, int, int]]  # (index in the chunk, start, end of its text)
    chunk: memoryview  # (valid until the reader's next chunk)
    first_line: int
    sep: str  # the chunk's field separator


@dataclass(frozen=True)
class NativeChecker:
    """The arguments of `_importcsv.check` for one partition's columns."""

    module: ModuleType
    sep: str
    dec: str
    width: int
    columns: list[tuple[int, str, bool, int, int]]
    nulls: list[bytes]
    suffix: bytes
    keys: list[int]
    key_types: list[pa.DataType]
    with_line: bool

    @classmethod
    def of(
        cls, target: Target, loaded: list[tuple[str, int]], constants: dict[str, Any],
        rules: ValueRules, key: list[str], sep: str, width: int, with_line: bool,
    ) -> NativeChecker | None:  # fmt: skip
        """The checker of these columns (already taken by `columnar.unsupported`), or None
        where the C module cannot take them (see the module's docstring)."""
        module = _module()
        if (
            module is None
            or not _one_ascii_byte(sep)
            or not _one_ascii_byte(rules.decimal_separator)
        ):
            return None
        columns = []
        for name, pos in loaded:
            col = target.column(name)
            if col is None:
                return None
            if pos < 0 and not col.nullable:
                return None
            if col.kind == "int":
                lo, hi = INT_RANGES.get(col.type_name, INT_RANGES["BIGINT"])
                columns.append((pos, "i", col.nullable, lo, hi))
            elif col.kind == "float":
                columns.append((pos, "g" if col.single else "f", col.nullable, 0, 0))
            elif col.kind == "decimal":
                scale = col.scale or 0
                whole = -1 if col.precision is None else col.precision - scale
                columns.append((pos, "n", col.nullable, whole, scale))
            elif col.kind == "bool":
                columns.append((pos, "b", col.nullable, 0, 0))
            elif col.kind == "str":
                columns.append(
                    (pos, "s", col.nullable, -1 if col.length is None else col.length, 0)
                )
            elif col.kind == "date" and rules.date_format is None:
                columns.append((pos, "d", col.nullable, 0, 0))
            elif (
                col.kind == "datetime" and rules.datetime_format is None and rules.timezone == "UTC"
            ):
                columns.append((pos, "t" if col.timezone else "T", col.nullable, 0, 0))
            else:
                return None
        names = [n for n, _ in loaded]
        keys, types = [], []
        for k in key:
            i = names.index(k) if k in names else -1
            if i < 0 or loaded[i][1] < 0 or columns[i][1] not in "is":
                return None
            keys.append(i)
            types.append(pa.int64() if columns[i][1] == "i" else pa.string())
        suffix = "".join("," + _quoted(_pg_text(v)) for v in constants.values())
        nulls = sorted(v.encode() for v in rules.null_values)
        return cls(module, sep, rules.decimal_separator, width, columns, nulls,
                   suffix.encode(), keys, types, with_line)  # fmt: skip

    def __call__(self, chunk: memoryview, first_line: int) -> Checked | None:
        got = self.module.check(
            chunk, first_line, self.sep, self.dec, self.width, self.columns, self.nulls,
            _BOOLS, self.suffix, self.keys, self.with_line,
        )  # fmt: skip
        if got is None:
            return None
        data, rows, lines, keys, doubtful = got
        return Checked(
            data, rows, _array(pa.int64(), rows, lines),
            [_array(t, rows, k) for t, k in zip(self.key_types, keys, strict=True)],
            doubtful, chunk, first_line, self.sep,
        )  # fmt: skip


_BOOLS = ([w.encode() for w in sorted(TRUE)], [w.encode() for w in sorted(FALSE)])


def _one_ascii_byte(s: str) -> bool:
    return len(s) == 1 and s.isascii()


def _quoted(text: str | None) -> str:
    """A constant as a COPY CSV field: NULL empty, any value quoted."""
    return "" if text is None else '"' + text.replace('"', '""') + '"'


def _array(t: pa.DataType, n: int, buffers: Any) -> pa.Array:
    if t == pa.int64():
        return pa.Array.from_buffers(t, n, [None, pa.py_buffer(buffers)])
    offsets, data = buffers
    return pa.Array.from_buffers(t, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
