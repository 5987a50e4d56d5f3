"""Partition key ranges: every row exactly once, NULL keys in the last range only when a
table has them (so every other plan is made of plain, index-served ranges)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from exportd.model import Dataset
from exportd.sources import Selection
from exportd.sources.sql import SqlEngines, SqlSource, describe_sql


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        yield request.getfixturevalue("pg_database")


def _source(url: str, table: str | None, query: str | None, key: str) -> SqlSource:
    engine = SqlEngines().get(url)
    fields = describe_sql(engine, table, query)
    ds = Dataset("ds", "p", "d", "sql", url, table, query, key, fields, {}, datetime.now(UTC))
    return SqlSource(ds, engine)


def _all_rows(src: SqlSource, parts: list[dict[str, object]]) -> list[tuple[object, ...]]:
    sel = Selection(["k", "v"], [])
    return [row for p in parts for batch in src.read(sel, p, 100) for row in batch]


def test_null_keys_are_read_once_and_only_planned_when_present(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE with_nulls (k INTEGER, v TEXT)")
        conn.exec_driver_sql("CREATE TABLE no_nulls (k INTEGER NOT NULL, v TEXT)")
        rows = [{"k": i, "v": f"r{i}"} for i in range(1000)]
        for table in ("with_nulls", "no_nulls"):
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (:k, :v)"), rows)
        conn.execute(sa.text("INSERT INTO with_nulls VALUES (NULL, 'n1'), (NULL, 'n2')"))
    engine.dispose()

    with_nulls = _source(db_url, "with_nulls", None, "k")
    parts = with_nulls.plan(Selection(["k", "v"], []), 4)
    assert [p["nulls"] for p in parts] == [False, False, False, True]
    got = _all_rows(with_nulls, parts)
    assert sorted(v for _, v in got) == sorted([f"r{i}" for i in range(1000)] + ["n1", "n2"])

    no_nulls = _source(db_url, "no_nulls", None, "k")
    parts = no_nulls.plan(Selection(["k", "v"], []), 4)
    assert [p["nulls"] for p in parts] == [False] * 4
    assert sorted(k for k, _ in _all_rows(no_nulls, parts)) == list(range(1000))

    query = _source(db_url, None, "SELECT k, v FROM no_nulls", "k")  # cannot be asked cheaply
    assert [p["nulls"] for p in query.plan(Selection(["k", "v"], []), 4)][-1] is True
