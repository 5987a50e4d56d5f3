"""Test data for documents and files sources: deterministic documents with uneven nested
attributes, written to PostgreSQL (jsonb), SQLite (JSON text) and JSON Lines files; and
an oracle that flattens documents by the documented rules, written independently of
exportd's own code."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.support import expected_cell

CITIES = ["Paris", "Oslo", "Lima", "Kyiv", "Quito"]
TAGS = ["red", "green", "blue", "cyan"]
NOTES = ['said "hi"', "a, b", "two\nlines", "café ☕", "tab\there", ""]


def make_doc(i: int) -> dict[str, Any]:
    """Document `i`: attributes present or not, nested to three levels, arrays of
    varying length, an empty object now and then, and rare keys."""
    h = (i * 2654435761) % 4294967296
    doc: dict[str, Any] = {"id": i, "kind": ["a", "b", "c", "d"][h % 4]}
    if h % 2:
        doc["user"] = {"name": f"u{h % 97}", "age": h % 90}
    if h % 3 == 0:
        doc["user"] = {
            "name": f"v{h % 89}",
            "address": {"city": CITIES[h % 5], "zip": f"{h % 99999:05d}"},
        }
    if h % 5 == 0:
        doc["tags"] = TAGS[: h % 4]
    if h % 7 == 0:
        doc["score"] = (h % 1000) / 8
    if h % 11 == 0:
        doc["note"] = NOTES[h % len(NOTES)]
    if h % 13 == 0:
        doc["flag"] = bool(h % 2)
    if h % 17 == 0:
        doc["meta"] = {}
    if i % 97 == 0:
        doc[f"rare_{i}"] = {"x": i, "items": [{"k": 1}, {"k": 2, "extra": None}]}
    return doc


def make_docs(n: int) -> list[dict[str, Any]]:
    return [make_doc(i) for i in range(1, n + 1)]


def build_pg_docs(url: str, docs: list[dict[str, Any]], table: str = "docs") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, doc jsonb)")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} VALUES (%s, %s)", [(d["id"], Jsonb(d)) for d in docs]
            )


def pg_docs_in_order(url: str, table: str = "docs") -> list[Any]:
    """The documents as PostgreSQL gives them back (jsonb orders an object's keys)."""
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(f"SELECT doc FROM {table} ORDER BY id")]


def build_sqlite_docs(path: Path, docs: list[dict[str, Any]]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany(
        "INSERT INTO docs VALUES (?, ?)",
        [(d["id"], json.dumps(d, ensure_ascii=False)) for d in docs],
    )
    conn.commit()
    conn.close()


def write_jsonl(path: Path, docs: list[Any]) -> None:
    path.write_text(
        "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )


# ---- the oracle: the documented flattening rules, written out plainly --------------------


def _text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def oracle_flatten(doc: Any, arrays: str = "json") -> dict[str, str]:
    """{column: CSV cell} of one document (docs/documents.md, "Flattening")."""
    out: dict[str, str] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                key = k.replace("\\", "\\\\").replace(".", "\\.")
                walk(v, f"{path}.{key}" if path else key)
        elif isinstance(value, list) and value and arrays == "index":
            for i, v in enumerate(value):
                walk(v, f"{path}.{i}")
        elif isinstance(value, (dict, list)):
            out[path] = _text(value)
        elif value is None:
            out[path] = ""
        elif value is True or value is False:
            out[path] = "true" if value else "false"
        else:
            out[path] = expected_cell(value)  # numbers and text: the CSV rules

    if isinstance(doc, dict):
        if doc:
            walk(doc, "")
    elif doc is not None:
        walk(doc, "$")
    return out


def _segments(path: str) -> tuple[str, ...]:
    """A column's keys (a backslash escapes the next character; a bare dot separates)."""
    return tuple(
        s.replace("\x00", ".").replace("\x01", "\\")
        for s in path.replace("\\\\", "\x01").replace("\\.", "\x00").split(".")
    )


def oracle_header(docs: list[Any], arrays: str = "json") -> list[str]:
    """Columns in tree order (docs/documents.md): the keys of each object in order of
    first appearance over all documents, depth first, a column before those under it.
    Written as a sort: a column's sort key is, for each of its key prefixes, when that
    prefix first appeared (reading the documents in order)."""
    first: dict[tuple[str, ...], int] = {}
    columns: dict[str, None] = {}
    for d in docs:
        for k in oracle_flatten(d, arrays):
            columns.setdefault(k)
            segs = _segments(k)
            for n in range(1, len(segs) + 1):
                first.setdefault(segs[:n], len(first))
    return sorted(
        columns, key=lambda k: [first[_segments(k)[:n]] for n in range(1, len(_segments(k)) + 1)]
    )


def oracle_rows(
    docs: list[Any], header: list[str], arrays: str = "json"
) -> Counter[tuple[str, ...]]:
    rows: Counter[tuple[str, ...]] = Counter()
    for d in docs:
        flat = oracle_flatten(d, arrays)
        rows[tuple(flat.get(k, "") for k in header)] += 1
    return rows


def read_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader)
    return header, list(reader)
