"""Filters on document paths mean the same in PostgreSQL (jsonb), SQLite (json_extract) and
Python (JSON Lines files): each compiled filter selects exactly the documents the test's
own reading of the documented rule selects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from exportd.documents.flatten import DocumentPaths
from exportd.sources.documents import PostgresJson, SqliteJson
from exportd.sources.filters import compile_document_filter, document_predicate, validate_filter
from tests.documents_support import build_pg_docs, build_sqlite_docs, make_docs
from tests.support import PG_ADMIN_URL, drop_database, pg_url

EDGE = [
    {"id": 9001, "user": {"age": "45"}, "score": None},  # a string where numbers are usual
    {"id": 9002, "user": [1, 2], "tags": {"0": "red"}},  # an array, an object with key "0"
    {"id": 9003, "flag": 1, "kind": "A"},  # 1 is not true; "A" is not "a"
    {"id": 9004, "score": 125.0, "tags": ["red"], "note": "100%"},
]
DOCS = make_docs(400) + EDGE


MISSING = object()


def at(doc: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING (test oracle)."""
    cur = doc
    for seg in path.split("."):
        if isinstance(cur, dict) and seg in cur:
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit() and int(seg) < len(cur):
            cur = cur[int(seg)]
        else:
            return MISSING
    return cur


def num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


CASES: list[tuple[Any, Callable[[Any], bool]]] = [
    ({"user.age": {"gte": 45}}, lambda d: num(at(d, "user.age")) and at(d, "user.age") >= 45),
    ({"user.age": {"eq": "45"}}, lambda d: at(d, "user.age") == "45"),
    ({"kind": {"ne": "a"}}, lambda d: at(d, "kind") != "a"),
    ({"kind": {"in": ["b", "c"]}}, lambda d: at(d, "kind") in ("b", "c")),
    ({"kind": {"nin": ["b", "c"]}}, lambda d: at(d, "kind") not in ("b", "c")),
    ({"flag": {"eq": True}}, lambda d: at(d, "flag") is True),
    ({"flag": {"eq": False}}, lambda d: at(d, "flag") is False),
    (
        {"score": {"between": [50, 100.5]}},
        lambda d: num(at(d, "score")) and 50 <= at(d, "score") <= 100.5,
    ),
    ({"score": {"is_null": True}}, lambda d: at(d, "score") in (None, MISSING)),
    ({"score": {"is_null": False}}, lambda d: at(d, "score") not in (None, MISSING)),
    ({"tags.0": {"eq": "red"}}, lambda d: at(d, "tags.0") == "red"),  # array or key "0"
    ({"rare_97.items.1.k": {"eq": 2}}, lambda d: at(d, "rare_97.items.1.k") == 2),
    (
        {"user.address.city": {"like": "%o%"}},
        lambda d: (
            "o" in str(at(d, "user.address.city")) and isinstance(at(d, "user.address.city"), str)
        ),
    ),
    ({"note": {"like": "100\\%"}}, lambda d: at(d, "note") == "100%"),
    ({"kind": {"like": "A"}}, lambda d: at(d, "kind") == "A"),  # case-sensitive
    (
        {"note": {"like": "%_%"}},
        lambda d: isinstance(at(d, "note"), str) and len(at(d, "note")) >= 1,
    ),
    (
        {"user.name": {"lt": "u5"}, "kind": {"eq": "d"}},
        lambda d: (
            isinstance(at(d, "user.name"), str)
            and at(d, "user.name") < "u5"
            and at(d, "kind") == "d"
        ),
    ),
    (
        [{"score": {"gt": 120}}, {"user.address.zip": {"gte": "50000"}}],
        lambda d: (
            (num(at(d, "score")) and at(d, "score") > 120)
            or (isinstance(at(d, "user.address.zip"), str) and at(d, "user.address.zip") >= "50000")
        ),
    ),
]


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[sa.Engine, Any, Any]]]:
    name = f"exportd_dfilter_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    build_pg_docs(pg_url(name), DOCS)
    sqlite_path = tmp_path_factory.mktemp("dfilter") / "docs.db"
    build_sqlite_docs(sqlite_path, DOCS)
    pg = sa.create_engine("postgresql+psycopg" + pg_url(name)[len("postgresql") :])
    lite = sa.create_engine(f"sqlite:///{sqlite_path}")
    pg_docs = sa.table("docs", sa.column("id"), sa.column("doc"))
    lite_docs = sa.table("docs", sa.column("id"), sa.column("body"))
    yield {
        "postgresql": (pg, pg_docs, PostgresJson(pg_docs.c.doc)),
        "sqlite": (lite, lite_docs, SqliteJson(lite_docs.c.body)),
    }
    pg.dispose()
    lite.dispose()
    drop_database(name)


@pytest.mark.parametrize(("raw", "oracle"), CASES, ids=[json.dumps(c[0])[:60] for c in CASES])
def test_same_documents_everywhere(raw: Any, oracle: Callable[[Any], bool], engines: Any) -> None:
    conditions = validate_filter(raw, DocumentPaths())
    want = [d["id"] for d in DOCS if oracle(d)]
    assert want, "the case must select something"
    assert len(want) < len(DOCS)
    predicate = document_predicate(conditions)
    assert predicate is not None
    assert [d["id"] for d in DOCS if predicate(d)] == want
    for engine, docs, access in engines.values():
        stmt = (
            sa.select(docs.c.id)
            .where(compile_document_filter(conditions, access))
            .order_by(docs.c.id)
        )
        with engine.connect() as conn:
            assert [r[0] for r in conn.execute(stmt)] == want, engine.dialect.name


def test_values_are_bound_never_inlined(engines: Any) -> None:
    conditions = validate_filter(
        {"a'; DROP TABLE docs; --": {"eq": "x' OR '1'='1"}}, DocumentPaths()
    )
    for engine, _docs, access in engines.values():
        compiled = (
            sa.select(sa.literal(1))
            .where(compile_document_filter(conditions, access))
            .compile(engine)
        )
        assert "DROP" not in str(compiled) and "'1'='1" not in str(compiled)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM docs")).scalar() == len(DOCS)
