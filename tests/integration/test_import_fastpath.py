"""The fast paths of CSV imports into PostgreSQL (chunks checked and written in C, or
Arrow-read blocks with columns checked by `pyarrow.compute`; rows COPYed as CSV) against the Python path (record by record, every
value through `TargetColumn.convert`): the same awkward file, imported by a server with
fast paths on and one with them off, gives the same rows in the table, the same failed
items (line, column, reason) and the same error report. And the rows an import commits
are counted in `exportd_rows_written`."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from tests.imports_support import report_rows, start_import, upload
from tests.support import Api, LiveServer

TABLE = """CREATE TABLE {name} (id bigint PRIMARY KEY, s smallint, i integer NOT NULL,
    r real, d double precision, n numeric(6,2), u numeric, b boolean, day date,
    ts timestamp, tz timestamptz, code varchar(5), note text, k integer,
    x double precision)"""
COLUMNS = ["id", "s", "i", "r", "d", "n", "u", "b", "day", "ts", "tz", "code", "note", "k", "x"]

# per column: plain values (most rows) and awkward ones (some rows), as text in the file
POOLS: dict[str, tuple[list[str], list[str]]] = {
    "s": (["1", "-7", "32767", "NA"], ["+5", " 7", "1_000", "007", "32768", "-32769", "x", ""]),
    "i": (["0", "123456", "-2147483648"], ["2147483648", "1e3", "NA", "", "12.0", "٣"]),
    "r": (["1.5", "0.1", "-3", "NA"], ["1e5", "inf", "nan", ".5", "5.", "1e400", "3.4028236e38"]),
    "d": (["2.25", "1e-7", "123456789.123456789", ""], ["-0", "1E+2", "0x10", "1,5", " 2", "1e-400"]),
    "n": (["12.34", "-0.5", "9999.99", "NA"], ["1.005", "10000", "12345.6", "+1.5", "0.125"]),
    "u": (["1.500", "-12", "0.0001", ""], ["1e3", "+.5", "00012.30", "NaN", "1.2.3"]),
    "b": (["true", "f", "1", "NA"], ["Yes", "TRUE", " t", "on", "N", "2"]),
    "day": (["2013-01-01", "2024-02-29", "NA"],
            ["2013-02-30", "2013-1-5", "20130105", "0000-01-01", "0999-12-31", "2013-13-01"]),
    "ts": (["2013-01-01T10:00:00", "2013-06-01 23:59:59.5", "NA"],
           ["2013-03-10 02:30:00", "2013-11-03 01:30:00", "2013-01-01T10:00",
            "2013-01-01T10:00:00Z", "2013-01-01T10:00:00.1234567", "2013-01-01T24:00:00",
            "2013-02-29T10:00:00"]),
    "tz": (["2013-01-01T10:00:00+00:00", "2013-01-01T05:00:00-05:00", "2013-01-01 10:00:00"],
           ["2013-01-01T10:00:00+05:30", "2013-03-10T02:30:00", "2013-01-01T10:00:00+0530",
            "2013-01-01T10:00:00.000001Z", "NA"]),
    "code": (["AA", "UA123", "", "NA"], ["TOOLONG", "caf\u00e9s", "\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"]),
    "note": (["plain", "", "NA"], ['say "hi"', "a,b", "two\nlines", "tab\there"]),
    # forms Arrow reads as a whole batch (no regex), odd as some are
    "k": (["007", "-0", "42", "2147483647", "NA"], []),
    "x": (["1.", ".5", "+1.5", "2.5E-3", "NA"], []),
}  # fmt: skip

CONFIGS: dict[str, dict[str, Any]] = {
    # no quoted field and no broken line: every chunk is checked in C (`native`)
    "iso-utc-plain": {"null_values": ["", "NA"], "timezone": "UTC"},
    "iso-new-york": {"null_values": ["", "NA"], "timezone": "America/New_York"},
    "comma-decimals-paris": {
        "null_values": ["NA"], "timezone": "Europe/Paris", "decimal_separator": ",",
        "date_format": "%d.%m.%Y", "datetime_format": "%d.%m.%Y %H:%M:%S",
    },
}  # fmt: skip


def _european(col: str, v: str) -> str:
    if col in ("r", "d", "n", "u", "x"):
        return v.replace(",", ";").replace(".", ",")
    if col == "day" and len(v) == 10 and v[4] == "-":
        return f"{v[8:10]}.{v[5:7]}.{v[0:4]}"
    if col in ("ts", "tz") and len(v) >= 19 and v[4] == "-":
        return f"{v[8:10]}.{v[5:7]}.{v[0:4]} {v[11:19]}"
    return v


def awkward_csv(n: int, seed: int, european: bool, plain: bool = False) -> str:
    """n rows of awkward values; `plain`: none that CSV quotes, and no broken line."""
    rnd = random.Random(seed)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for i in range(n):
        key = str(rnd.randint(1, i)) if i > 10 and rnd.random() < 0.01 else str(i + 1)
        row = [key]
        for col in COLUMNS[1:]:
            usual, odd = POOLS[col]
            if plain:
                odd = [v for v in odd if not any(c in v for c in ',"\n')]
            v = rnd.choice(odd if odd and rnd.random() < 0.02 else usual)
            row.append(_european(col, v) if european else v)
        w.writerow(row)
        if not plain and rnd.random() < 0.002:
            out.write(rnd.choice(["\n", "1,2\n", '"broken,3\n', "x,\xff,y\n"]))
    return out.getvalue()


def _server(live_server: Any, url: str, table: str, fast: bool, **settings: Any) -> Api:
    server: LiveServer = live_server(workers=2, batch_size=700, fast_paths=fast, **settings)
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", name="t", kind="sql", url=url, table=table, key="id", writable=True)
    return server.client(token)


def _table(url: str, table: str) -> Counter[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        got = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {table}").fetchall()
    nan = "NaN"  # NaN != NaN: compared as text
    return Counter(tuple(nan if v != v else v for v in r) for r in got)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_fast_path_imports_what_the_python_path_imports(
    pg_database: str, live_server: Any, config: str
) -> None:
    rules = CONFIGS[config]
    plain = config.endswith("-plain")
    text = awkward_csv(4000, seed=len(config), european="decimal_separator" in rules, plain=plain)
    results = {}
    # the fast path staging its rows as files; the Python path; (the plain file) the fast
    # path into staging tables
    for run in ("files", "python", *(["tables"] if plain else [])):
        fast = run != "python"
        table = f"t_{run}"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(TABLE.format(name=table))
        extra = {"import_staged_files": False} if run == "tables" else {}
        api = _server(live_server, pg_database, table, fast, **extra)
        up = upload(api, "awkward.csv", text.encode("utf-8", "surrogateescape"))
        task = start_import(api, dataset_id="t", upload_id=up["upload_id"], parallelism=3,
                            allow_partial=True, **rules)  # fmt: skip
        done = api.wait("acme", task["task_id"], timeout=180)
        assert done["status"] == "COMPLETED_WITH_ERRORS", done
        items = [(i["line"], i["column"], i["reason"]) for i in done["failed_items"]]
        manifest = api.http.get(f"/v1/projects/acme/imports/{task['task_id']}/manifest").json()
        paths = [(p["fast_path"], p["checked_in_python"]) for p in manifest["partitions"]]
        in_c = {p["checked_in_c"] for p in manifest["partitions"]}
        checked = sum(n for _, n in paths)
        staged_as = {p["staged_as"] for p in manifest["partitions"]}
        if fast:  # C or Arrow vouched for the plain rows; Python saw the bad and the doubtful
            assert all(f for f, _ in paths), paths
            assert checked - done["failed_count"] < 0.25 * done["finished_count"], paths
            # in C where the time zone is UTC; else (a zone of its own) by pyarrow
            assert in_c == {rules["timezone"] == "UTC"}, manifest
        else:
            assert not any(f for f, _ in paths) and checked >= 4000, paths
            assert in_c == {False}
        if run == "files":  # COPYed into the target (the duplicates filtered out)
            assert manifest["published_from"] == "files" and staged_as == {"file"}, manifest
        else:
            assert manifest["published_from"] == "staging" and staged_as == {"table"}
        results[run] = (done["finished_count"], done["failed_count"], items,
                        report_rows(api, done), _table(pg_database, table))  # fmt: skip
    python_run = results.pop("python")
    for fast_run in results.values():
        assert fast_run[0] == python_run[0] > 2000  # the rows loaded
        assert fast_run[1] == python_run[1] > 50  # the rows rejected
        assert fast_run[2] == python_run[2]  # line, column and reason of each failed item
        assert fast_run[3] == python_run[3]  # the error report, line by line
        assert fast_run[4] == python_run[4]  # the table, value by value


def _rows_written() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == "exportd_rows_written_total":
                total += s.value
    return total


def test_committed_import_rows_are_counted(pg_database: str, live_server: Any) -> None:
    """`exportd_rows_written` grows by the rows the import's partitions committed (the
    counter is the test process's: compare before and after, other tests add to it)."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(TABLE.format(name="t_count"))
    api = _server(live_server, pg_database, "t_count", True)
    lines = ["id,i,note"] + [f"{k},{k * 3},n{k}" for k in range(1, 2501)] + ["2501,bad,x"]
    up = upload(api, "count.csv", ("\n".join(lines) + "\n").encode())
    before = _rows_written()
    task = start_import(api, dataset_id="t", upload_id=up["upload_id"], parallelism=2,
                        allow_partial=True)  # fmt: skip
    done = api.wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED_WITH_ERRORS" and done["finished_count"] == 2500, done
    assert sum(p["finished_count"] for p in done["partitions"]) == 2500
    assert _rows_written() - before == 2500


def test_a_key_already_in_the_table_falls_back_to_staging_tables(
    pg_database: str, live_server: Any
) -> None:
    """Rows staged as files meet keys already in the table: the target refuses the COPY,
    the publish is rolled back, the files go into staging tables and the import ends
    exactly as the staging path ends it (the same rows, failed items and report)."""
    lines = ["id,i,note"] + [f"{k},{k * 3},n{k}" for k in range(1, 3001)]
    lines += ["17,1,again in the file", "2999,x,bad"]
    text = ("\n".join(lines) + "\n").encode()
    results = {}
    for fast in (True, False):
        table = "t_conflict_fast" if fast else "t_conflict_slow"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(TABLE.format(name=table))
            conn.execute(
                f"INSERT INTO {table} (id, i, note) VALUES (5, 0, 'old'), (2500, 0, 'old')"
            )
        api = _server(live_server, pg_database, table, fast)
        up = upload(api, "conflict.csv", text)
        task = start_import(api, dataset_id="t", upload_id=up["upload_id"], parallelism=3,
                            allow_partial=True)  # fmt: skip
        done = api.wait("acme", task["task_id"], timeout=120)
        manifest = api.http.get(f"/v1/projects/acme/imports/{task['task_id']}/manifest").json()
        staged_as = {p["staged_as"] for p in manifest["partitions"]}
        if fast:
            assert manifest["published_from"] == "tables" and staged_as == {"file"}, manifest
        else:
            assert manifest["published_from"] == "staging" and staged_as == {"table"}
        items = [(i["line"], i["column"], i["reason"]) for i in done["failed_items"]]
        results[fast] = (done["status"], done["finished_count"], done["failed_count"], items,
                         report_rows(api, done), _table(pg_database, table))  # fmt: skip
    fast_run, python_run = results[True], results[False]
    assert fast_run[0] == python_run[0] == "COMPLETED_WITH_ERRORS"
    assert (
        fast_run[1:3] == python_run[1:3] == (2998, 4)
    )  # 3002 rows - 2 in the table, a duplicate, a bad one
    assert fast_run[3] == python_run[3]
    assert {(line, reason) for line, _, reason in fast_run[3]} >= {
        (6, "key (id) already in the table"), (2501, "key (id) already in the table"),
        (3002, "duplicate key (id) in the file"),
    }  # fmt: skip
    assert fast_run[4] == python_run[4]
    assert fast_run[5] == python_run[5] and sum(fast_run[5].values()) == 3000
