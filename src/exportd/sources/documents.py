"""Schemaless JSON documents: a JSON/JSONB column of PostgreSQL or a JSON text column of
SQLite (partitioned by key ranges, like SQL tables), or JSON Lines files (partitioned by
byte ranges of lines). Rows are `(document,)`: one column holding the parsed document;
the worker flattens them for flat formats or hands them as-is to nesting formats."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from exportd.errors import SourceError
from exportd.model import Dataset
from exportd.sources import Estimate, Selection
from exportd.sources.filters import (
    JsonAccess,
    Scalar,
    compile_document_filter,
    document_predicate,
    like_tokens,
)
from exportd.sources.paths import byte_ranges, estimate_lines, expand, read_lines
from exportd.sources.sql import SqlSource

Row = tuple[Any, ...]

_SQL_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda a, b: a == b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


def _scalar_type(value: Scalar) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "string"


class PostgresJson:
    """Paths into a json/jsonb column with `#>` (path as a bound text[]) and comparisons
    as jsonb, guarded by `jsonb_typeof` so that types never mix."""

    def __init__(self, column: Any) -> None:
        self.doc = sa.cast(column, JSONB)

    def _at(self, path: list[str]) -> Any:
        return self.doc.op("#>", return_type=JSONB)(sa.literal(path, ARRAY(sa.Text)))

    def compare(self, path: list[str], op: str, value: Scalar) -> Any:
        at = self._at(path)
        return sa.and_(
            sa.func.jsonb_typeof(at) == _scalar_type(value),
            _SQL_OPS[op](at, sa.cast(sa.literal(orjson.dumps(value).decode(), sa.Text), JSONB)),
        )

    def like(self, path: list[str], pattern: str) -> Any:
        text = self.doc.op("#>>", return_type=sa.Text)(sa.literal(path, ARRAY(sa.Text)))
        return sa.and_(
            sa.func.jsonb_typeof(self._at(path)) == "string", text.like(pattern, escape="\\")
        )

    def is_null(self, path: list[str]) -> Any:
        return sa.func.coalesce(sa.func.jsonb_typeof(self._at(path)), "null") == "null"


_SQLITE_TYPES = {"number": ("integer", "real"), "string": ("text",), "boolean": ("true", "false")}


def sqlite_json_paths(path: list[str]) -> list[str]:
    """The JSON paths a dotted path may mean: a numeric segment indexes an array or names
    an object's key (`$.tags[0]` or `$.tags."0"`), as `#>` does in PostgreSQL. At most
    one of them exists in any document."""
    paths = ["$"]
    for seg in path:
        key = f'."{seg}"'
        paths = [p + alt for p in paths for alt in ([f"[{seg}]", key] if seg.isdigit() else [key])]
    return paths


_GLOB_SPECIAL = {"*": "[*]", "?": "[?]", "[": "[[]"}


def like_to_glob(pattern: str) -> str:
    """A LIKE pattern as a case-sensitive GLOB pattern (SQLite's LIKE ignores case)."""
    return "".join(
        ("*" if c == "%" else "?") if wild else _GLOB_SPECIAL.get(c, c)
        for c, wild in like_tokens(pattern)
    )


class SqliteJson:
    """Paths into a JSON text column with `json_extract`/`json_type` (paths bound)."""

    def __init__(self, column: Any) -> None:
        self.doc = column

    def _first(self, fn: Any, path: list[str]) -> Any:
        calls = [fn(self.doc, sa.literal(p)) for p in sqlite_json_paths(path)]
        return calls[0] if len(calls) == 1 else sa.func.coalesce(*calls)

    def compare(self, path: list[str], op: str, value: Scalar) -> Any:
        bound = int(value) if isinstance(value, bool) else value
        return sa.and_(
            self._first(sa.func.json_type, path).in_(_SQLITE_TYPES[_scalar_type(value)]),
            _SQL_OPS[op](self._first(sa.func.json_extract, path), bound),
        )

    def like(self, path: list[str], pattern: str) -> Any:
        return sa.and_(
            self._first(sa.func.json_type, path) == "text",
            self._first(sa.func.json_extract, path).op("GLOB")(like_to_glob(pattern)),
        )

    def is_null(self, path: list[str]) -> Any:
        return sa.func.coalesce(self._first(sa.func.json_type, path), "null") == "null"


JSON_DIALECTS: dict[str, Callable[[Any], JsonAccess]] = {
    "postgresql": PostgresJson,
    "sqlite": SqliteJson,
}


SKIPPED = object()  # what `load_document` gives for a bad document that is a failed item
MAX_BAD_DOCUMENTS = 1000  # listed per partition; past that the partition fails whole

_bad: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "exportd_bad_documents", default=None
)


@contextmanager
def bad_documents(collect: bool) -> Iterator[list[dict[str, Any]]]:
    """While inside (and `collect`: the task allows partial success), a document that is
    not valid JSON is one failed item `{key, error_code, error_msg}` (its file and byte
    offset, or its row key) and is left out, instead of failing the partition."""
    found: list[dict[str, Any]] = []
    token = _bad.set(found if collect else None)
    try:
        yield found
    finally:
        _bad.reset(token)


def load_document(raw: Any, where: str) -> Any:
    """A document as stored: already parsed (json/jsonb through psycopg) or JSON text;
    SKIPPED for a bad one that `bad_documents` collects."""
    if isinstance(raw, (str, bytes, bytearray, memoryview)):
        try:
            return orjson.loads(bytes(raw) if isinstance(raw, memoryview) else raw)
        except orjson.JSONDecodeError as exc:
            message = f"{where}: invalid JSON ({exc})"[:500]
            found = _bad.get()
            if found is None or len(found) >= MAX_BAD_DOCUMENTS:
                raise SourceError(message, "INVALID_DOCUMENT") from None
            found.append({"key": where, "error_code": "INVALID_DOCUMENT", "error_msg": message})
            return SKIPPED
    return raw


class SqlDocumentSource(SqlSource):
    """Documents in a database column: the key ranges, estimates and server-side cursors
    of SqlSource, with filters compiled to JSON path expressions."""

    def __init__(self, dataset: Dataset, engine: sa.Engine) -> None:
        super().__init__(dataset, engine)
        self.doc = self.from_.c[dataset.options["document"]]
        self.json = JSON_DIALECTS[engine.dialect.name](self.doc)

    def _where(self, sel: Selection) -> Any:
        return compile_document_filter(sel.filter, self.json)

    def _select(self, sel: Selection) -> sa.Select[Any]:
        return sa.select(self.doc, self.key).select_from(self.from_)

    def read(self, sel: Selection, bounds: dict[str, Any], batch_size: int) -> Iterator[list[Row]]:
        for batch in super().read(sel, bounds, batch_size):
            docs = [load_document(doc, f"document of key {key!r}") for doc, key in batch]
            yield [(d,) for d in docs if d is not SKIPPED]


class JsonLinesDocumentSource:
    """Documents in JSON Lines files (one object per line), split into byte ranges."""

    def __init__(self, dataset: Dataset) -> None:
        self.pattern = str(dataset.options["path"])
        self.root = Path(dataset.options["root"])

    def estimate(self, sel: Selection) -> Estimate:
        if sel.filter:
            return Estimate(None, True)
        count, is_estimate = estimate_lines(expand(self.pattern, self.root))
        return Estimate(count, is_estimate)

    def plan(self, sel: Selection, parallelism: int) -> list[dict[str, Any]]:
        return list(byte_ranges(expand(self.pattern, self.root), parallelism))

    def read(self, sel: Selection, bounds: dict[str, Any], batch_size: int) -> Iterator[list[Row]]:
        match = document_predicate(sel.filter)
        batch: list[Row] = []
        for path, start, end in bounds["segments"]:
            for doc in self._documents(path, start, end):
                if match is None or match(doc):
                    batch.append((doc,))
                    if len(batch) >= batch_size:
                        yield batch
                        batch = []
        if batch:
            yield batch

    def _documents(self, path: str, start: int, end: int) -> Iterator[Any]:
        loads = orjson.loads
        try:
            for offset, line in read_lines(path, start, end):
                try:
                    yield loads(line)
                except orjson.JSONDecodeError:
                    if line.strip():  # a blank line is skipped; anything else is an error
                        load_document(line, f"{Path(path).name} at byte {offset}")  # or skipped
        except OSError as exc:
            raise SourceError(
                f"cannot read {Path(path).name}: {exc.strerror}", "SOURCE_UNAVAILABLE"
            ) from None

    def count(self, sel: Selection, bounds: dict[str, Any]) -> int:
        return sum(len(b) for b in self.read(sel, bounds, 10_000))
