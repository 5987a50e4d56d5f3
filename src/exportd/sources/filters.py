"""Export filters: a list of conditions combined with OR, each a map of field -> operators
combined with AND, e.g. `[{"origin": {"eq": "JFK"}, "dep_delay": {"gt": 10}}]`.

`validate_filter` checks a request's filter against the dataset's known fields and
coerces values to the fields' types (pure); `compile_filter` turns the validated filter
into a SQLAlchemy expression with bound parameters only."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import sqlalchemy as sa

from exportd.documents.flatten import json_type, split_path, value_at
from exportd.errors import BadRequest

OPERATORS = ("eq", "ne", "in", "nin", "lt", "lte", "gt", "gte", "between", "like", "is_null")
MAX_CONDITIONS = 100
MAX_LIST = 10_000
MAX_STRING = 10_000

Scalar = str | int | float | bool | None


def _bad(msg: str) -> BadRequest:
    return BadRequest(msg, "INVALID_FILTER_VALUE")


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    raise ValueError


def _to_float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError
    return float(v)


def _to_decimal(v: Any) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError
    try:
        return Decimal(str(v))
    except InvalidOperation as exc:
        raise ValueError from exc


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v in ("true", "false"):
        return bool(v == "true")
    raise ValueError


def _to_str(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError
    return str(v)


def _to_date(v: Any) -> date:
    if not isinstance(v, str):
        raise ValueError
    return date.fromisoformat(v)


def _to_datetime(v: Any) -> datetime:
    if not isinstance(v, str):
        raise ValueError
    return datetime.fromisoformat(v.replace("Z", "+00:00"))


def _as_is(v: Any) -> Any:
    if not isinstance(v, (str, int, float, bool)):
        raise ValueError
    return v


COERCE: dict[str, Callable[[Any], Any]] = {
    "int": _to_int,
    "float": _to_float,
    "decimal": _to_decimal,
    "bool": _to_bool,
    "str": _to_str,
    "date": _to_date,
    "datetime": _to_datetime,
}


def _coerce(field: str, kind: str, value: Any) -> Any:
    if isinstance(value, str) and (len(value) > MAX_STRING or "\x00" in value):
        raise _bad(f"filter value for {field!r} is too long or holds a NUL character")
    try:
        return COERCE.get(kind, _as_is)(value)
    except (ValueError, TypeError, OverflowError):
        shown = repr(value)[:60]
        raise _bad(f"filter value {shown} does not fit field {field!r} of type {kind}") from None


def _coerce_list(field: str, kind: str, op: str, value: Any, exact: int | None) -> list[Any]:
    if not isinstance(value, list) or not value or len(value) > MAX_LIST:
        raise _bad(f"operator {op!r} on {field!r} takes a non-empty list (at most {MAX_LIST})")
    if exact is not None and len(value) != exact:
        raise _bad(f"operator {op!r} on {field!r} takes exactly {exact} values")
    return [_coerce(field, kind, v) for v in value]


def validate_filter(raw: Any, field_kinds: Mapping[str, str]) -> list[dict[str, dict[str, Any]]]:
    """Check and normalize a filter; raises BadRequest (400) on anything unknown or ill-typed."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or len(raw) > MAX_CONDITIONS:
        raise BadRequest(
            f"filter must be a list of at most {MAX_CONDITIONS} conditions", "INVALID_FILTER"
        )
    out: list[dict[str, dict[str, Any]]] = []
    for cond in raw:
        if not isinstance(cond, dict) or not cond:
            raise BadRequest("each filter condition must be a non-empty object", "INVALID_FILTER")
        norm: dict[str, dict[str, Any]] = {}
        for field, ops in cond.items():
            if field not in field_kinds:
                raise BadRequest(f"unknown field {str(field)[:100]!r} in filter", "INVALID_FIELD")
            if not isinstance(ops, dict) or not ops:
                raise BadRequest(
                    f"filter on {field!r} must map operators to values", "INVALID_FILTER"
                )
            kind = field_kinds[field]
            norm[field] = {}
            for op, value in ops.items():
                norm[field][op] = _validate_op(field, kind, op, value)
        out.append(norm)
    return out


def _validate_op(field: str, kind: str, op: Any, value: Any) -> Any:
    if op not in OPERATORS:
        raise BadRequest(
            f"unknown operator {str(op)[:40]!r} on {field!r}; use one of {', '.join(OPERATORS)}",
            "INVALID_OPERATOR",
        )
    if op in ("in", "nin"):
        return _coerce_list(field, kind, op, value, None)
    if op == "between":
        return _coerce_list(field, kind, op, value, 2)
    if op == "is_null":
        if not isinstance(value, bool):
            raise _bad(f"is_null on {field!r} takes true or false")
        return value
    if op == "like":
        if not isinstance(value, str):
            raise _bad(f"like on {field!r} takes a string pattern")
        return _coerce(field, "str", value)
    if value is None:
        raise _bad(f"operator {op!r} on {field!r} needs a value; use is_null for NULL")
    return _coerce(field, kind, value)


def _clause(col: Any, op: str, value: Any) -> Any:
    match op:
        case "eq":
            return col == value
        case "ne":
            return sa.or_(col != value, col.is_(None))
        case "in":
            return col.in_(value)
        case "nin":
            return sa.or_(col.not_in(value), col.is_(None))
        case "lt":
            return col < value
        case "lte":
            return col <= value
        case "gt":
            return col > value
        case "gte":
            return col >= value
        case "between":
            return col.between(value[0], value[1])
        case "like":
            return col.like(value)
        case "is_null":
            return col.is_(None) if value else col.is_not(None)
    raise AssertionError(op)


def compile_filter(
    conditions: list[dict[str, dict[str, Any]]], column: Callable[[str], Any]
) -> Any:
    """SQL for a validated filter: OR of ANDs, values bound as parameters."""
    if not conditions:
        return sa.true()
    return sa.or_(
        *[
            sa.and_(
                *[_clause(column(f), op, v) for f, ops in cond.items() for op, v in ops.items()]
            )
            for cond in conditions
        ]
    )


# ---- filters on schemaless documents ------------------------------------------------------
# A condition on a dotted path matches a document whose value there has the JSON type of
# the filter value (number, string, boolean) and compares as asked; `ne` and `nin` are
# the negations of `eq` and `in` (they also match a missing path); `is_null` matches a
# missing path or a JSON null. The same rules hold in PostgreSQL, SQLite and Python.


class JsonAccess(Protocol):
    """How one SQL dialect reaches into a document column (bound parameters only)."""

    def compare(self, path: list[str], op: str, value: Scalar) -> Any:
        """`op` is eq, lt, lte, gt or gte; false unless the JSON types agree."""
        ...

    def like(self, path: list[str], pattern: str) -> Any: ...

    def is_null(self, path: list[str]) -> Any: ...


def _never_null(expr: Any) -> Any:
    return sa.func.coalesce(expr, sa.false())


def _doc_clause(access: JsonAccess, path: list[str], op: str, value: Any) -> Any:
    match op:
        case "eq" | "lt" | "lte" | "gt" | "gte":
            return access.compare(path, op, value)
        case "ne":
            return sa.not_(_never_null(access.compare(path, "eq", value)))
        case "in":
            return sa.or_(*[access.compare(path, "eq", v) for v in value])
        case "nin":
            return sa.not_(_never_null(sa.or_(*[access.compare(path, "eq", v) for v in value])))
        case "between":
            return sa.and_(
                access.compare(path, "gte", value[0]), access.compare(path, "lte", value[1])
            )
        case "like":
            return access.like(path, value)
        case "is_null":
            return access.is_null(path) if value else sa.not_(access.is_null(path))
    raise AssertionError(op)


def compile_document_filter(conditions: list[dict[str, dict[str, Any]]], access: JsonAccess) -> Any:
    """SQL for a validated filter on document paths: OR of ANDs, values bound."""
    if not conditions:
        return sa.true()
    return sa.or_(
        *[
            sa.and_(
                *[
                    _doc_clause(access, split_path(f), op, v)
                    for f, ops in cond.items()
                    for op, v in ops.items()
                ]
            )
            for cond in conditions
        ]
    )


_PY_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def like_tokens(pattern: str) -> Iterator[tuple[str, bool]]:
    """A LIKE pattern as (character, is_wildcard) pairs; a backslash escapes the next
    character (`100\\%` matches "100%"), as in PostgreSQL."""
    chars = iter(pattern)
    for c in chars:
        if c == "\\":
            yield next(chars, "\\"), False
        else:
            yield c, c in "%_"


def _like_regex(pattern: str) -> re.Pattern[str]:
    wild = {"%": ".*", "_": "."}
    parts = (wild[c] if is_wild else re.escape(c) for c, is_wild in like_tokens(pattern))
    return re.compile("".join(parts), re.DOTALL)


def _py_test(found: Any, op: str, value: Any) -> bool:
    if op in _PY_COMPARE:
        return json_type(found) == json_type(value) and bool(_PY_COMPARE[op](found, value))
    match op:
        case "ne":
            return not _py_test(found, "eq", value)
        case "in":
            return any(_py_test(found, "eq", v) for v in value)
        case "nin":
            return not _py_test(found, "in", value)
        case "between":
            return _py_test(found, "gte", value[0]) and _py_test(found, "lte", value[1])
        case "like":
            return json_type(found) == "string" and _like_regex(value).fullmatch(found) is not None
        case "is_null":
            return (json_type(found) == "null") is value
    raise AssertionError(op)


def document_predicate(
    conditions: list[dict[str, dict[str, Any]]],
) -> Callable[[Any], bool] | None:
    """A validated filter on document paths as a Python test (None: everything matches)."""
    if not conditions:
        return None
    compiled = [
        [(split_path(f), op, v) for f, ops in cond.items() for op, v in ops.items()]
        for cond in conditions
    ]

    def match(doc: Any) -> bool:
        return any(
            all(_py_test(value_at(doc, path), op, v) for path, op, v in tests) for tests in compiled
        )

    return match
