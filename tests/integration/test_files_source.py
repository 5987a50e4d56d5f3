"""`files` datasets over real HTTP: Parquet, CSV and JSON Lines files on the server's disk,
read with pyarrow's dataset API, partitioned by files and row groups, filters pushed
into the scan; the administrator's paths are checked, callers never name one."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exportd.model import Dataset
from exportd.sources import Selection
from exportd.sources.files import ArrowFilesSource, compile_arrow_filter
from tests.documents_support import read_csv
from tests.support import FLIGHT_COLUMNS, expected_cell, flight_rows

ROWS = list(flight_rows(5500))
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("carrier", pa.string()),
        ("origin", pa.string()),
        ("dest", pa.string()),
        ("dep_delay", pa.int32()),
        ("distance", pa.float64()),
        ("note", pa.string()),
        ("dep_time", pa.timestamp("us", tz="UTC")),
    ]
)


def write_parquet(path: Path, rows: list[tuple[Any, ...]]) -> None:
    table = pa.Table.from_pylist([dict(zip(FLIGHT_COLUMNS, r, strict=True)) for r in rows], SCHEMA)
    pq.write_table(table, path, row_group_size=1000)


def write_csv(path: Path, rows: list[tuple[Any, ...]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(FLIGHT_COLUMNS)
        w.writerows([expected_cell(v) for v in r] for r in rows)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A source directory: flights in 2 Parquet files (row groups of 1,000), 2 CSV files
    and a JSON Lines file with a nested column."""
    d = tmp_path / "src"
    (d / "pq").mkdir(parents=True)
    (d / "csv").mkdir()
    write_parquet(d / "pq" / "a.parquet", ROWS[:3000])
    write_parquet(d / "pq" / "b.parquet", ROWS[3000:])
    write_csv(d / "csv" / "a.csv", ROWS[:2000])
    write_csv(d / "csv" / "b.csv", ROWS[2000:2600])
    with (d / "events.jsonl").open("w") as fh:
        for r in ROWS[:800]:
            fh.write(
                json.dumps(
                    {
                        "id": r[0],
                        "carrier": r[1],
                        "delay": r[4],
                        "extra": {"n": r[0] % 7, "tags": [r[2], r[3]]},
                    }
                )
                + "\n"
            )
    return d


def cells(rows: list[tuple[Any, ...]]) -> Counter[tuple[str, ...]]:
    return Counter(tuple(expected_cell(v) for v in r) for r in rows)


def setup(live_server: Any, src: Path, **dataset: Any) -> tuple[Any, dict[str, Any]]:
    server = live_server(workers=2, source_dirs=[str(src)])
    admin = server.client()
    token = admin.project("p")
    ds = admin.dataset("p", name="f", kind="files", **dataset)
    return server.client(token), ds


def export(api: Any, **body: Any) -> tuple[dict[str, Any], bytes]:
    task = api.export("p", dataset_id="f", **body)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", (done["error_msg"], done["failed_items"])
    r = api.http.get(f"/v1/projects/p/exports/{task['task_id']}/download")
    return done, r.content


def test_parquet_files_by_row_groups_with_pushdown(src: Path, live_server: Any) -> None:
    api, ds = setup(live_server, src, path=f"{src}/pq/*.parquet")
    assert ds["file_format"] == "parquet" and ds["key"] is None
    kinds = {f["name"]: f["kind"] for f in ds["fields"]}
    assert kinds == {
        "id": "int", "carrier": "str", "origin": "str", "dest": "str", "dep_delay": "int",
        "distance": "float", "note": "str", "dep_time": "datetime",
    }  # fmt: skip

    done, body = export(api, format="csv", parallelism=4)
    assert len(done["partitions"]) == 4  # 6 row groups in 2 files, split by rows
    assert [p["finished_count"] for p in done["partitions"]] == [1000, 2000, 1000, 1500]
    header, rows = read_csv(body)
    assert header == FLIGHT_COLUMNS
    assert Counter(tuple(r) for r in rows) == cells(ROWS)

    flt = [
        {
            "carrier": {"eq": "AA"},
            "dep_delay": {"gt": 100},
            "dep_time": {"gte": "2013-03-01T00:00:00Z"},
        },
        {"id": {"in": [1, 2, 3]}},
        {"note": {"like": "%lines%"}, "distance": {"between": [1000, 2000]}},
    ]
    done, body = export(
        api,
        format="jsonl",
        parallelism=3,
        filter=flt,
        fields=["id", {"name": "carrier", "as": "c"}, "dep_delay", "note"],
    )
    got = [json.loads(line) for line in body.decode().splitlines()]
    want = [
        r for r in ROWS
        if (r[1] == "AA" and r[4] is not None and r[4] > 100 and r[7].month >= 3)
        or r[0] in (1, 2, 3)
        or (r[6] is not None and "lines" in r[6] and 1000 <= r[5] <= 2000)
    ]  # fmt: skip
    assert got == [{"id": r[0], "c": r[1], "dep_delay": r[4], "note": r[6]} for r in want]
    assert done["finished_count"] == len(want) > 3


def test_csv_and_jsonl_files(src: Path, live_server: Any) -> None:
    api, ds = setup(live_server, src, path=f"{src}/csv/*.csv")
    assert ds["file_format"] == "csv"
    done, body = export(
        api,
        format="csv",
        parallelism=2,
        filter={"note": {"is_null": False}, "dep_delay": {"lt": 0}},
    )
    header, rows = read_csv(body)
    assert header == FLIGHT_COLUMNS
    # an empty CSV cell reads as NULL: notes "" and None are both null here
    want = [r for r in ROWS[:2600] if r[6] and r[4] is not None and r[4] < 0]
    assert Counter(tuple(r) for r in rows) == cells(want) and want
    assert [p["phase"] for p in done["partitions"]] == ["EXPORT", "EXPORT"]

    server = live_server(workers=1, source_dirs=[str(src)])
    admin = server.client()
    admin.project("q")
    ds = admin.dataset("q", name="ev", kind="files", path=f"{src}/events.jsonl")
    assert {f["name"]: f["kind"] for f in ds["fields"]}["extra"] == "json"
    api2 = server.client()
    task = api2.export("q", dataset_id="ev", format="csv", filter={"delay": {"gte": 200}})
    done = api2.wait("q", task["task_id"])
    assert done["status"] == "COMPLETED", done["error_msg"]
    header, rows = read_csv(
        api2.http.get(f"/v1/projects/q/exports/{task['task_id']}/download").content
    )
    assert header == ["id", "carrier", "delay", "extra"]
    want = [r for r in ROWS[:800] if r[4] is not None and r[4] >= 200]
    assert rows == [
        [
            str(r[0]),
            r[1],
            str(r[4]),
            json.dumps({"n": r[0] % 7, "tags": [r[2], r[3]]}, separators=(",", ":")),
        ]
        for r in want
    ]


def test_estimates_at_stage_10(src: Path, tmp_path: Path) -> None:
    """Parquet: exact from the metadata (an upper bound with a filter); CSV: counted when
    small, extrapolated when large; both flagged honestly."""
    from exportd.sources.files import describe_files

    def source(pattern: str, file_format: str) -> ArrowFilesSource:
        files = sorted(str(p) for p in Path(pattern).parent.glob(Path(pattern).name))
        fields, schema = describe_files(files, file_format)
        options = {
            "path": pattern,
            "root": str(src),
            "file_format": file_format,
            "arrow_schema": schema,
        }
        return ArrowFilesSource(
            Dataset("d", "p", "n", "files", "", None, None, "", fields, options, None)
        )  # type: ignore[arg-type]

    everything = Selection(FLIGHT_COLUMNS, [])
    some = Selection(FLIGHT_COLUMNS, [{"carrier": {"eq": "AA"}}])
    parquet = source(f"{src}/pq/*.parquet", "parquet")
    assert (parquet.estimate(everything).count, parquet.estimate(everything).is_estimate) == (
        5500,
        False,
    )
    assert (parquet.estimate(some).count, parquet.estimate(some).is_estimate) == (5500, True)
    small = source(f"{src}/csv/*.csv", "csv")
    assert (small.estimate(everything).count, small.estimate(everything).is_estimate) == (
        2600,
        False,
    )
    assert small.estimate(some).count is None
    write_csv(src / "big.csv", list(flight_rows(40_000)))
    assert os.path.getsize(src / "big.csv") > 1 << 20
    big = source(f"{src}/big.csv", "csv")
    estimate = big.estimate(everything)
    assert estimate.is_estimate and 36_000 < (estimate.count or 0) < 44_000
    expr = compile_arrow_filter([{"id": {"between": [1, 5]}}, {"note": {"is_null": True}}])
    assert str(expr) == "(((id >= 1) and (id <= 5)) or is_null(note, {nan_is_null=false}))"
    assert (
        parquet.count(everything, {"pieces": [{"file": f"{src}/pq/b.parquet", "row_groups": [2]}]})
        == 500
    )


def test_paths_are_the_administrators_alone(src: Path, tmp_path: Path, live_server: Any) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    write_parquet(outside / "secret.parquet", ROWS[:10])
    (src / "link.parquet").symlink_to(outside / "secret.parquet")
    server = live_server(workers=1, source_dirs=[str(src)])
    admin = server.client()
    token = admin.project("p")
    for body in (
        {"path": f"{outside}/*.parquet"},
        {"path": f"{src}/../outside/secret.parquet"},
        {"path": f"{src}/*.parquet"},  # matches the symlink pointing outside
        {"path": f"{src}/nothing-*.csv"},
        {"path": f"{src}/events.jsonl", "file_format": "xml"},
        {"path": f"{src}/pq/a.parquet", "url": "sqlite:///x.db"},
        {"path": "pq/a.parquet"},
    ):
        r = admin.http.post("/v1/projects/p/datasets", json={"name": "x", "kind": "files", **body})
        assert r.status_code == 400, (body, r.text)
    no_dirs = live_server(workers=0, source_dirs=[]).client()
    no_dirs.project("p")
    r = no_dirs.http.post(
        "/v1/projects/p/datasets",
        json={"name": "x", "kind": "files", "path": f"{src}/pq/a.parquet"},
    )
    assert r.status_code == 400 and "EXPORTD_SOURCE_DIRS" in r.json()["error_msg"]

    admin.dataset("p", name="f", kind="files", path=f"{src}/pq/a.parquet")
    api = server.client(token)
    r = api.http.post("/v1/projects/p/exports", json={"dataset_id": "f", "path": str(outside)})
    assert r.status_code == 400
    r = api.http.post(
        "/v1/projects/p/exports", json={"dataset_id": "f", "filter": {"extra": {"eq": 1}}}
    )
    assert (r.status_code, r.json()["error_code"]) == (400, "INVALID_FIELD")
    (src / "pq" / "a.parquet").unlink()
    task = api.export("p", dataset_id="f")
    done = api.wait("p", task["task_id"])
    assert (done["status"], done["error_code"]) == ("FAILED", "SOURCE_FILES_MISSING")
