"""Schemaless JSON documents as table rows, for the flat formats (CSV, TSV, XLSX).

A document is flattened to `{dotted path: scalar}`: nested objects give `a.b.c`; arrays
give `tags.0`, `tags.1` (`arrays="index"`) or one cell of JSON text (`arrays="json"`).
Every flattened path is kept, so documents of conflicting shapes lose nothing: a scalar
at `a` in one document and an object at `a` in another give both a column `a` and
columns `a.b`, ... (see docs/documents.md for the full rules).

The header is in tree order: top-level keys in order of first appearance, the keys of
each object in order of first appearance (over all documents), depth first, a value at
`a` before the paths under `a`. A partition's header pass reports its paths in that
order (`KeyCollector`); the coordinator merges the partitions' lists as trees, in
partition order (`merge_headers`), which gives the order over the whole dataset whatever
the number of partitions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, Literal

import orjson

from exportd.errors import BadRequest, SourceError

ArrayMode = Literal["index", "json"]
ARRAY_MODES: tuple[str, ...] = ("index", "json")
DEFAULT_ARRAYS: ArrayMode = "json"
MAX_COLUMNS = 20_000  # a merged header wider than this fails the export (TOO_MANY_COLUMNS)
ROOT = "$"  # the column of a document that is not a JSON object (a scalar or an array)

MAX_PATH = 1000
MAX_DEPTH = 32
MAX_INDEXES = 4  # numeric segments (array index or key) in one filter path
_BAD_PATH_CHARS = re.compile(r'[\x00-\x1f"]')


def escape_key(key: str) -> str:
    """A key as one segment of a dotted path: `.` and `\\` inside keys are escaped, so
    `{"a.b": 1}` (column `a\\.b`) never collides with `{"a": {"b": 1}}` (column `a.b`)."""
    if "." not in key and "\\" not in key:
        return key
    return key.replace("\\", "\\\\").replace(".", "\\.")


def split_path(path: str) -> list[str]:
    """The segments of a dotted path (the inverse of joining escaped keys with dots)."""
    segments, current, escaped = [], [], False
    for ch in path:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ".":
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
    segments.append("".join(current))
    return segments


def parse_path(path: str) -> list[str]:
    """A caller's dotted path (filter or projection), checked: 400 when unusable."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise BadRequest(f"a document path must be 1-{MAX_PATH} characters", "INVALID_FIELD")
    if _BAD_PATH_CHARS.search(path) or path.endswith("\\"):
        raise BadRequest(
            f"document path {path[:100]!r} holds a control character, a double quote "
            "or a dangling backslash",
            "INVALID_FIELD",
        )
    segments = split_path(path)
    if (
        len(segments) > MAX_DEPTH
        or any(s == "" for s in segments)
        or sum(s.isdigit() for s in segments) > MAX_INDEXES
    ):
        raise BadRequest(
            f"document path {path[:100]!r} must be at most {MAX_DEPTH} non-empty "
            f"dot-separated keys, at most {MAX_INDEXES} of them numeric",
            "INVALID_FIELD",
        )
    return segments


class DocumentPaths(Mapping[str, str]):
    """The filterable "fields" of a documents dataset: every valid dotted path, of kind
    `json` (filter values are taken as JSON scalars and compared by JSON type)."""

    def __getitem__(self, path: str) -> str:
        if path == ROOT:
            raise KeyError(path)
        parse_path(path)
        return "json"

    def __contains__(self, path: object) -> bool:
        try:
            self[path]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


class Flattener:
    """Turns one document into `{path: cell}`; cells are str, int, float or None (booleans
    as `true`/`false`, containers kept whole as JSON text), so that a column holding
    several JSON types is still written consistently."""

    def __init__(self, arrays: str = DEFAULT_ARRAYS) -> None:
        self.index_arrays = arrays == "index"

    def flatten(self, doc: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(doc, dict):
            self._object(doc, "", out)
        elif doc is not None:
            self._value(doc, ROOT, out)
        return out

    def _object(self, obj: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
        for key, value in obj.items():
            k = escape_key(key)
            self._value(value, f"{prefix}.{k}" if prefix else k, out)

    def _value(self, value: Any, path: str, out: dict[str, Any]) -> None:
        if isinstance(value, dict):
            if value:
                self._object(value, path, out)
            else:
                out[path] = "{}"
        elif isinstance(value, list):
            if self.index_arrays and value:
                for i, item in enumerate(value):
                    self._value(item, f"{path}.{i}", out)
            else:
                out[path] = _json_text(value)
        elif isinstance(value, bool):
            out[path] = "true" if value else "false"
        else:
            out[path] = value

    def add_paths(self, doc: Any, keys: dict[str, None]) -> None:
        """The paths `flatten` gives, added to `keys` in order of first appearance,
        without making the cells (the header pass needs no values, no JSON text)."""
        if isinstance(doc, dict):
            self._object_paths(doc, "", keys)
        elif doc is not None:
            self._value_paths(doc, ROOT, keys)

    def _object_paths(self, obj: dict[str, Any], prefix: str, keys: dict[str, None]) -> None:
        for key, value in obj.items():
            k = escape_key(key)
            self._value_paths(value, f"{prefix}.{k}" if prefix else k, keys)

    def _value_paths(self, value: Any, path: str, keys: dict[str, None]) -> None:
        if value and isinstance(value, dict):
            self._object_paths(value, path, keys)
        elif value and self.index_arrays and isinstance(value, list):
            for i, item in enumerate(value):
                self._value_paths(item, f"{path}.{i}", keys)
        else:
            keys[path] = None


def check_width(keys: Sized) -> None:
    if len(keys) > MAX_COLUMNS:
        raise SourceError(
            f"the documents have more than {MAX_COLUMNS} distinct flattened keys; "
            'choose fields, or arrays="json"',
            "TOO_MANY_COLUMNS",
        )


class KeyCollector:
    """A partition's header pass: the flattened paths of its documents, in order of first
    appearance, and how many documents it read."""

    def __init__(self, arrays: str = DEFAULT_ARRAYS) -> None:
        self._flat = Flattener(arrays)
        self._keys: dict[str, None] = {}
        self.documents = 0

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        keys, add = self._keys, self._flat.add_paths
        for row in rows:
            add(row[0], keys)
            self.documents += 1
        check_width(keys)

    @property
    def keys(self) -> list[str]:
        """The paths in tree order (made from their order of first appearance: a key's
        first path is where the key first appears)."""
        return merge_headers([self._keys])


# A node of the header tree: [whether the path itself is a column, children by segment].
_Tree = dict[str, list[Any]]


def merge_headers(headers: Iterable[Iterable[str]]) -> list[str]:
    """The union of path lists (given in order: partitions, or chunks of one) in tree
    order: each object's keys where they first appear, depth first, a path before the
    paths under it. Lists in tree order (or in order of first appearance) merge into
    the tree order of their concatenation, so the header does not depend on the split."""
    root: _Tree = {}
    for keys in headers:
        for path in keys:
            node = root
            segments = split_path(path)
            for seg in segments[:-1]:
                node = node.setdefault(seg, [False, {}])[1]
            node.setdefault(segments[-1], [False, {}])[0] = True
    out: list[str] = []

    def walk(prefix: str | None, tree: _Tree) -> None:
        for seg, (is_column, children) in tree.items():
            k = escape_key(seg)
            path = k if prefix is None else f"{prefix}.{k}"
            if is_column:
                out.append(path)
            if children:
                walk(path, children)

    walk(None, root)
    return out


def flat_rows(
    batches: Iterable[Sequence[Sequence[Any]]], header: list[str], arrays: str, strict: bool
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of `(document,)` rows as batches of cells in `header` order. `strict`: the
    header came from the header pass, so a path outside it means the data changed since
    (the export fails rather than drop it); otherwise the header is a projection."""
    flat = Flattener(arrays)
    known = set(header)
    for batch in batches:
        out = []
        for row in batch:
            cells = flat.flatten(row[0])
            if strict and not cells.keys() <= known:
                extra = sorted(cells.keys() - known)[:3]
                raise SourceError(
                    f"documents changed since the header pass: new keys {extra}",
                    "DOCUMENTS_CHANGED",
                )
            out.append(tuple(cells.get(k) for k in header))
        yield out


# ---- filters on documents, evaluated in Python (JSON Lines files) -------------------------

_MISSING = object()


def value_at(doc: Any, segments: Sequence[str]) -> Any:
    """The value at a path (object keys; numeric segments also index arrays), or _MISSING."""
    cur = doc
    for seg in segments:
        if isinstance(cur, dict):
            if seg not in cur:
                return _MISSING
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            return _MISSING
    return cur


def json_type(value: Any) -> str:
    """The JSON type a filter compares by: number, string, boolean, null, object, array."""
    if value is None or value is _MISSING:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"
