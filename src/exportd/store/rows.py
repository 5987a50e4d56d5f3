"""Rows to records and back, driven by one field list: the record's dataclass fields.

A column is named as its field (with a few renames, e.g. `idx` for a partition's
`index`); the field's annotation says how a value is converted (enums from their value,
datetimes as UTC, the plan from its JSON). So a field added to a record and its table is
mapped without a third list to keep in step."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel

R = TypeVar("R")


def as_utc(value: datetime | None) -> datetime | None:
    """Datetimes as aware UTC (SQLite hands back naive ones: they are UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _plain(hint: Any) -> Any:
    """`X | None` -> X; other hints as they are."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _reader(hint: Any) -> Callable[[Any], Any]:
    t = _plain(hint)
    origin = typing.get_origin(t) or t
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return lambda v: None if v is None else origin(v)
    if origin is datetime:
        return as_utc
    if origin is bool:
        return lambda v: None if v is None else bool(v)
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return lambda v: None if v is None else origin.model_validate(v)
    if origin is list:
        return lambda v: None if v is None else list(v)
    if origin is dict:
        return lambda v: None if v is None else dict(v)
    return lambda v: v


def _writer(hint: Any) -> Callable[[Any], Any]:
    t = _plain(hint)
    origin = typing.get_origin(t) or t
    if isinstance(origin, type) and issubclass(origin, enum.Enum):
        return lambda v: None if v is None else v.value
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return lambda v: None if v is None else v.model_dump(mode="json")
    return lambda v: v


Field = tuple[str, Callable[[Any], Any], Callable[[Any], Any]]
_FIELDS: dict[type, list[Field]] = {}


def _fields(cls: type) -> list[Field]:
    """(name, read, write) of each field of a record class, worked out once per class."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    hints = typing.get_type_hints(cls)
    found = [
        (f.name, _reader(hints[f.name]), _writer(hints[f.name])) for f in dataclasses.fields(cls)
    ]
    _FIELDS[cls] = found
    return found


def record_from_row(cls: type[R], row: Mapping[str, Any], renames: Mapping[str, str] = {}) -> R:
    """A record of `cls` from a row holding (some of) its fields as columns; fields without
    a column (children loaded apart) keep their defaults."""
    values = {}
    for name, read, _ in _fields(cls):
        column = renames.get(name, name)
        if column in row:
            values[name] = read(row[column])
    return cls(**values)


def record_values(
    record: Any, columns: Mapping[str, Any] | Any, renames: Mapping[str, str] = {}
) -> dict[str, Any]:
    """The column values of a record, for the columns a table has (`table.c`)."""
    out = {}
    for name, _, write in _fields(type(record)):
        column = renames.get(name, name)
        if column in columns:
            out[column] = write(getattr(record, name))
    return out
