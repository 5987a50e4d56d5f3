"""The fast path of an import's partition: a block of records (every field as text, see
`formats.readers.delimited_blocks`) checked column by column with `pyarrow.compute`
instead of value by value in Python, and the good rows sent to the staging table as one
CSV `COPY` per batch.

Every check here only ever *accepts*: a value passes when its text is in a strict form
whose meaning is the same for the Python checker (`TargetColumn.convert`) and for
PostgreSQL (plain decimal digits for numbers, `YYYY-MM-DD` dates that print back to the
same text, ISO 8601 timestamps with an optional `Z`/`+hh:mm` offset, ...). A row with any
value outside those forms is handed, alone, to the Python checker, which accepts it (the
row is loaded by the Python path) or rejects it with its exact reasons. So a row is
rejected, and with which reasons, exactly as the Python path would; only the rows that
are certainly good skip Python. An Arrow error while checking a column (a time zone Arrow
does not know, say) sends every row of the batch to the Python checker.

What the fast path takes (else the partition runs the Python path, `loading.py`): a
PostgreSQL target through psycopg, an uncompressed CSV/TSV file, columns of the kinds
int, float, decimal, bool, str, date and datetime (date and time formats made of
`%Y %m %d %H %M %S %y %%` and literal text), constants of those kinds, and no NOT NULL
column left without a value."""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from exportd.sources.targets import FALSE, INT_RANGES, TRUE, Target, TargetColumn, ValueRules

KINDS = frozenset({"int", "float", "decimal", "bool", "str", "date", "datetime"})
_SAFE_FORMAT = re.compile(r"(?:[^%]|%[YmdHMSy%])*")
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
_ZONE = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_ISO = f"^{_DATE}[T ]{_TIME}{_ZONE}?$"
_ZONED = f"{_ZONE}$"

# (text, null mask) -> (accepted, value); what it says of the null rows is not used
Check = Callable[[pa.Array, pa.Array], tuple[pa.Array, pa.Array]]


def unsupported(target: Target, loaded: list[tuple[str, int]], constants: dict[str, Any],
                required: list[TargetColumn], rules: ValueRules) -> str | None:  # fmt: skip
    """Why the fast path cannot take these columns (None: it can)."""
    if target.engine.dialect.name != "postgresql" or target.engine.dialect.driver != "psycopg":
        return f"the target is {target.engine.dialect.name}, not PostgreSQL through psycopg"
    if required:
        return "a NOT NULL column has no value"
    if len(rules.decimal_separator) != 1:
        return "a decimal separator of more than one character"
    for name in [n for n, _ in loaded] + list(constants):
        col = target.column(name)
        if col is None or col.kind not in KINDS:
            return f"column {name!r} is of a kind the fast path does not check"
        if (
            col.kind == "date"
            and rules.date_format
            and not _SAFE_FORMAT.fullmatch(rules.date_format)
        ):
            return f"the date format {rules.date_format!r}"
        if (
            col.kind == "datetime"
            and rules.datetime_format
            and not _SAFE_FORMAT.fullmatch(rules.datetime_format)
        ):
            return f"the timestamp format {rules.datetime_format!r}"
    return None


@dataclass
class ColumnarChecker:
    """The columns a partition loads, each with its check; the constants as text."""

    target: Target
    loaded: list[tuple[str, int]]  # table column, file column position (-1: none)
    checks: list[tuple[Check, bool]]  # the column's check, nullable
    constants: list[tuple[str, str | None]]  # table column, its value as PostgreSQL text
    nulls: pa.Array | None

    @classmethod
    def of(cls, target: Target, loaded: list[tuple[str, int]], constants: dict[str, Any],
           rules: ValueRules) -> ColumnarChecker:  # fmt: skip
        checks = []
        for name, _pos in loaded:
            col = target.column(name)
            assert col is not None
            checks.append((_check_of(col, rules), col.nullable))
        consts = [(k, _pg_text(v)) for k, v in constants.items()]
        nulls = pa.array(sorted(rules.null_values), pa.string()) if rules.null_values else None
        return cls(target, loaded, checks, consts, nulls)

    def check(self, columns: list[pa.Array], lines: pa.Array) -> tuple[pa.Table, pa.Array]:
        """(the accepted rows as the staging table's columns, with their lines; the mask
        of the rows for the Python checker)."""
        n = len(lines)
        ok = _fill(True, n)
        out: dict[str, pa.Array] = {}
        for (name, pos), (check, nullable) in zip(self.loaded, self.checks, strict=True):
            if pos < 0:
                if not nullable:
                    ok = _fill(False, n)
                out[name] = pa.nulls(n, pa.string())
                continue
            text = columns[pos]
            null = (
                pc.is_in(text, value_set=self.nulls) if self.nulls is not None else _fill(False, n)
            )
            try:
                good, value = check(text, null)
                good = pc.fill_null(good, False)
            except (pa.ArrowException, ValueError):
                good, value = _fill(False, n), pa.nulls(n, pa.string())
            ok = pc.and_(ok, pc.if_else(null, nullable, good))
            out[name] = pc.if_else(null, pa.scalar(None, value.type), value)
        table = pa.table({**out, "exportd_line": lines}).filter(ok)
        for name, text in self.constants:
            table = table.add_column(
                table.num_columns - 1, name, pa.repeat(pa.scalar(text, pa.string()), table.num_rows)
            )
        return table, pc.invert(ok)


def csv_payload(table: pa.Table) -> bytes:
    """The rows as PostgreSQL's CSV COPY reads them, NULL an empty unquoted field: in C
    (`_arrowcsv`, src/native/arrowcsv.c: text quoted only where it must be, as when it is
    empty) for columns of the kinds it writes, else by Arrow's CSV writer (every text
    value quoted, numbers, booleans and dates as they print)."""
    native = _arrowcsv()
    if native is not None and all(t in _NATIVE_KINDS for t in table.schema.types):
        out = [native.encode(_buffers(b), b.num_rows) for b in table.to_batches()]
        if all(o is not None for o in out):  # None: a date outside years 1-9999
            return b"".join(out)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue()


_NATIVE_KINDS: dict[pa.DataType, str] = {
    pa.int64(): "l", pa.int32(): "i", pa.int16(): "s", pa.int8(): "b",
    pa.float64(): "d", pa.float32(): "f", pa.string(): "t", pa.large_string(): "T",
    pa.bool_(): "?", pa.date32(): "D",
}  # fmt: skip


@functools.cache
def _arrowcsv() -> ModuleType | None:
    """The C writer, or None where the package was built without it."""
    try:
        from exportd.fastpaths import _arrowcsv
    except ImportError:
        return None
    return _arrowcsv


def _buffers(batch: pa.RecordBatch) -> list[tuple[str, int, Any, Any, Any]]:
    """Each column as `_arrowcsv.encode` takes it: (kind, offset, validity, data, offsets)."""
    out = []
    for col in batch.columns:
        kind = _NATIVE_KINDS[col.type]
        bufs = col.buffers()
        validity = bufs[0] if col.null_count else None
        if kind in "tT":
            out.append((kind, col.offset, validity, bufs[2], bufs[1]))
        else:
            out.append((kind, col.offset, validity, bufs[1], None))
    return out


# ---- the checks of each kind: (accepted, value) ----------------------------------------


def _check_of(col: TargetColumn, rules: ValueRules) -> Check:
    sep = re.escape(rules.decimal_separator)
    if col.kind == "int":
        lo, hi = INT_RANGES.get(col.type_name, INT_RANGES["BIGINT"])
        return lambda a, null: _int(a, null, lo, hi)
    if col.kind == "float":
        pattern = (
            rf"^[+-]?(?:[0-9]{{1,20}}(?:{sep}[0-9]{{0,20}})?|{sep}[0-9]{{1,20}})"
            r"(?:[eE][+-]?[0-9]{1,2})?$"
        )
        return lambda a, null: _float(a, null, pattern, rules.decimal_separator, col.single)
    if col.kind == "decimal":
        if col.precision is None:
            pattern = rf"^[+-]?(?:[0-9]+(?:{sep}[0-9]*)?|{sep}[0-9]+)$"
        else:
            whole, frac = col.precision - (col.scale or 0), col.scale or 0
            pattern = rf"^[+-]?0*[0-9]{{0,{whole}}}(?:{sep}[0-9]{{0,{frac}}})?$"
        return lambda a, _null: _decimal(a, pattern, rules.decimal_separator)
    if col.kind == "bool":
        return lambda a, _null: _bool(a)
    if col.kind == "str":
        length = col.length
        if length is None:
            return lambda a, _null: (_all(a, True), a)
        return lambda a, _null: _str_of(a, length)
    if col.kind == "date":
        return lambda a, _null: _date(a, rules.date_format)
    return lambda a, _null: _datetime(a, col.timezone, rules)


def _fill(value: bool, n: int) -> pa.Array:
    """n times `value` (made by Arrow: a Python list of n booleans costs 10 ms a batch)."""
    return pa.repeat(pa.scalar(value, pa.bool_()), n)


def _all(a: pa.Array, value: bool) -> pa.Array:
    return _fill(value, len(a))


def _matches(a: pa.Array, pattern: str) -> pa.Array:
    return pc.match_substring_regex(a, pattern)


def _int(a: pa.Array, null: pa.Array, lo: int, hi: int) -> tuple[pa.Array, pa.Array]:
    try:  # the common batch: Arrow reads every value, so each is -?[0-9]+ within int64
        n = pc.cast(pc.if_else(null, "0", a), pa.int64())
        good = _all(a, True)
    except pa.ArrowInvalid:
        good = _matches(a, r"^-?[0-9]{1,18}$")  # Arrow takes no "+"
        n = pc.cast(pc.if_else(good, a, "0"), pa.int64())
    inside = pc.and_(pc.greater_equal(n, lo), pc.less_equal(n, hi))
    return pc.and_(good, inside), n


def _float(
    a: pa.Array, null: pa.Array, pattern: str, sep: str, single: bool
) -> tuple[pa.Array, pa.Array]:
    # the double a Python float() of the text is (both round correctly): PostgreSQL
    # gets that double's shortest text, never the file's (it refuses underflows)
    try:  # the common batch: Arrow reads every value; the finite ones are the same double
        if sep != ".":
            raise pa.ArrowInvalid("a decimal separator of its own")
        value = pc.cast(pc.if_else(null, "0", a), pa.float64())
        good = pc.is_finite(value)
    except pa.ArrowInvalid:
        good = _matches(a, pattern)
        text = a if sep == "." else pc.replace_substring(a, sep, ".")
        value = pc.cast(pc.if_else(good, text, "0"), pa.float64())
    if single:  # within REAL's range, and not so small it would flush (Python decides)
        size = pc.abs(value)
        normal = pc.or_(pc.equal(size, 0), pc.greater_equal(size, 1.2e-38))
        good = pc.and_(good, pc.and_(pc.less(size, 3.4e38), normal))
    return good, value


def _decimal(a: pa.Array, pattern: str, sep: str) -> tuple[pa.Array, pa.Array]:
    # within the precision, at most `scale` decimals (more would be rounded, and Python
    # and PostgreSQL round halves differently): PostgreSQL reads the text as Python would
    good = pc.and_(_matches(a, pattern), _matches(a, "[0-9]"))
    return good, a if sep == "." else pc.replace_substring(a, sep, ".")


def _bool(a: pa.Array) -> tuple[pa.Array, pa.Array]:
    lower = pc.utf8_lower(a)
    yes = pc.is_in(lower, value_set=pa.array(sorted(TRUE)))
    no = pc.is_in(lower, value_set=pa.array(sorted(FALSE)))
    return pc.or_(yes, no), yes


def _str_of(a: pa.Array, length: int) -> tuple[pa.Array, pa.Array]:
    return pc.less_equal(pc.utf8_length(a), length), a


def _parsed(a: pa.Array, fmt: str, fill: str) -> tuple[pa.Array, pa.Array]:
    """(the text parses with `fmt` and prints back as the same text, within years
    1000-9999; the time) -- the print-back rules out what strptime forgives (31 February
    rolled into March, missing zeros, spaces) and Python would judge otherwise."""
    seconds = pc.strptime(a, format=fmt, unit="s", error_is_null=True)
    if fmt == "%Y-%m-%d":  # the ISO day, printed by Arrow's cast (the same text for years
        # 1000-9999, the only ones accepted below; strftime costs 6x as much)
        back = pc.cast(pc.cast(seconds, pa.date32()), pa.string())
    else:
        back = pc.strftime(seconds, format=fmt)  # (in seconds: %S prints no fraction)
    ts = pc.cast(seconds, pa.timestamp("us"))
    year = pc.year(ts)
    same = pc.and_(
        pc.equal(back, a), pc.and_(pc.greater_equal(year, 1000), pc.less_equal(year, 9999))
    )
    good = pc.fill_null(same, False)
    fallback = pc.cast(pc.strptime(pa.array([fill]), format=fmt, unit="s"), pa.timestamp("us"))
    return good, pc.if_else(good, ts, fallback[0])


def _date(a: pa.Array, fmt: str | None) -> tuple[pa.Array, pa.Array]:
    if fmt is None:
        shaped = _matches(a, f"^{_DATE}$")
        good, ts = _parsed(pc.if_else(shaped, a, "2000-01-01"), "%Y-%m-%d", "2000-01-01")
        good = pc.and_(shaped, good)
    else:
        good, ts = _parsed(a, fmt, pc.strftime(pa.scalar(0, pa.timestamp("s")), format=fmt).as_py())
    return good, pc.cast(pc.floor_temporal(ts, unit="day"), pa.date32())


def _datetime(a: pa.Array, aware: bool, rules: ValueRules) -> tuple[pa.Array, pa.Array]:
    utc = pa.timestamp("us", tz="UTC")
    if rules.datetime_format is not None:
        fill = pc.strftime(pa.scalar(0, pa.timestamp("s")), format=rules.datetime_format).as_py()
        good, wall = _parsed(a, rules.datetime_format, fill)
        instant, exact = _assume(wall, rules.timezone)
        value = instant if aware else pc.cast(instant, pa.timestamp("us"))
        return pc.and_(good, exact), pc.cast(value, pa.string())
    shaped = _matches(a, _ISO)
    day = pc.utf8_slice_codeunits(pc.if_else(shaped, a, "2000-01-01"), 0, 10)
    valid, _ = _parsed(day, "%Y-%m-%d", "2000-01-01")
    good = pc.and_(shaped, valid)
    zoned = pc.and_(good, _matches(a, _ZONED))
    local = pc.and_(good, pc.invert(zoned))

    def in_zone() -> tuple[pa.Array, pa.Array]:
        wall = pc.cast(pc.if_else(local, a, "2000-01-01T00:00:00"), pa.timestamp("us"))
        return _assume(wall, rules.timezone)

    assumed = None
    if rules.timezone != "UTC":  # a local wall time in a gap or a fold goes to Python
        assumed = in_zone()
        good = pc.and_(good, pc.or_(zoned, assumed[1]))
    # PostgreSQL gets the file's own text where it reads it as Python would (printing
    # timestamps is the dearest step of the COPY text), else the instant printed
    utc_wall = pc.and_(pc.invert(zoned), _all(a, rules.timezone == "UTC"))
    if aware:
        plain = pc.or_(zoned, utc_wall)
        text = pc.if_else(zoned, a, pc.binary_join_element_wise(a, "+00:00", ""))
    else:
        plain = utc_wall
        text = a
    if pc.any(pc.and_(good, pc.invert(plain))).as_py():
        at = pc.cast(pc.if_else(zoned, a, "2000-01-01T00:00:00Z"), utc)
        value = pc.if_else(zoned, at, (assumed or in_zone())[0])
        if not aware:
            value = pc.cast(value, pa.timestamp("us"))
        text = pc.if_else(plain, text, pc.cast(value, pa.string()))
    return good, text


def _assume(wall: pa.Array, zone: str) -> tuple[pa.Array, pa.Array]:
    """Local wall times in `zone` as instants, and where that is unambiguous (Python
    reads a time in a gap or a fold its own way: those rows go to it)."""
    if zone == "UTC":
        return pc.cast(wall, pa.timestamp("us", tz="UTC")), _all(wall, True)
    early = pc.assume_timezone(wall, timezone=zone, ambiguous="earliest", nonexistent="earliest")
    late = pc.assume_timezone(wall, timezone=zone, ambiguous="latest", nonexistent="latest")
    return pc.cast(early, pa.timestamp("us", tz="UTC")), pc.equal(early, late)


def _pg_text(v: Any) -> str | None:
    """A constant (already converted by `TargetColumn.convert`) as PostgreSQL reads it."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if hasattr(v, "isoformat"):
        return str(v.isoformat())
    return str(v)
