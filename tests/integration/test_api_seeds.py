"""Seed-compatible views over real HTTP: the same tasks seen through seeds 001, 003 and 004,
field by field, in every status they can be in."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.api_support import Project, make_project, small_sqlite_source
from tests.support import LiveServer

SEED_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JFK = [{"origin": {"eq": "JFK"}}]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    return small_sqlite_source(tmp_path_factory.mktemp("seeds"))


def as_seed_time(iso: str) -> str:
    """The native ISO time rendered as seed 004 does (milliseconds, Z)."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def as_epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def jfk_rows(source: str) -> int:
    with sqlite3.connect(source.removeprefix("sqlite:///")) as conn:
        return int(conn.execute("SELECT count(*) FROM flights WHERE origin = 'JFK'").fetchone()[0])


def seed004(p: Project, role: str = "reader", **params: Any) -> dict[str, Any]:
    r = p[role].http.get(f"/v2/{p.project_id}/export-tasks", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def seed001(p: Project, task_id: str, role: str = "reader") -> dict[str, Any]:
    r = p[role].http.get(
        f"/v2/{p.project_id}/quality/resource/status/{task_id}",
        headers={"workspace": "ws-1", "X-Auth-Token": p.tokens[role], "Authorization": ""},
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def seed003(p: Project, task_id: str) -> dict[str, Any]:
    r = p["reader"].http.get(
        f"/v2/{p.project_id}/datasets/{p.dataset['dataset_id']}/export-tasks/{task_id}"
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_seed_views_of_a_completed_export(store_url: str, source: str, live_server: Any) -> None:
    server: LiveServer = live_server(store_url=store_url, workers=2)
    p = make_project(server, "acme", source)
    task = p["writer"].export("acme", dataset_id="flights", filter=JFK, file_name="jfk.csv")
    done = p["writer"].wait("acme", task["task_id"])
    assert done["status"] == "COMPLETED", done
    tid, rows = done["task_id"], jfk_rows(source)

    [item] = seed004(p)["export_tasks"]
    assert item == {
        "task_id": tid,
        "file_name": "jfk.csv",
        "status": "SUCCESS",
        "fail_reason": None,
        "error_code": None,
        "create_time": as_seed_time(done["create_time"]),
        "end_time": as_seed_time(done["end_time"]),
        "is_download": False,
        "currentState": {"statusId": 90, "status": "Completed"},
    }
    assert SEED_TIME.match(item["create_time"]) and SEED_TIME.match(item["end_time"])

    view = seed003(p, tid)
    assert view == {
        "create_time": as_epoch_ms(done["create_time"]),
        "error_code": None,
        "error_msg": None,
        "export_format": 2,
        "export_params": {
            "clear_hard_property": True,
            "export_dataset_version_format": None,
            "export_dataset_version_name": None,
            "export_dest": "DIR",
            "export_new_dataset_name": None,
            "export_new_dataset_work_path": None,
            "ratio_sample_usage": False,
            "sample_state": "",
            "samples": None,
            "search_conditions": JFK,
            "train_sample_ratio": "1.00",
        },
        "export_type": 3,
        "finished_sample_count": rows,
        "path": f"/exports/acme/{tid}/",
        "progress": 100.0,
        "status": "COMPLETED",
        "task_id": tid,
        "total_sample_count": rows,
        "update_time": as_epoch_ms(done["update_time"]),
        "version_format": "CSV",
        "version_id": None,
        "currentState": {"statusId": 90, "status": "Completed"},
    }

    status = seed001(p, tid)
    assert status == {
        "id": tid,
        "resource_id": tid,
        "resource_type": "DATASET",
        "action": "EXPORT",
        "file_name": "jfk.csv",
        "start_time": as_seed_time(done["start_time"]),
        "end_time": as_seed_time(done["end_time"]),
        "status": "SUCCESS",
        "error_msg": None,
        "project_id": "acme",
        "domain_id": p.token_ids["writer"],
        "user_name": "writer-bot",
        "export_resources": p.dataset["dataset_id"],
        "import_body": "",
        "file_status": "GENERATED",
        "currentState": {"statusId": 90, "status": "Completed"},
    }

    # is_download: false by default (as seed 004 documents), true after a download
    assert p["reader"].http.get(f"/v1/projects/acme/exports/{tid}/download").status_code == 200
    assert seed004(p) == {"export_tasks": [], "count": 0}
    [item] = seed004(p, is_download="true")["export_tasks"]
    assert item["is_download"] is True and item["task_id"] == tid


def _doomed_dataset(p: Project, directory: Path) -> str:
    """A dataset whose table is gone by the time it is exported."""
    path = directory / "doomed.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    ds = p["root"].dataset(
        p.project_id, name="doomed", url=f"sqlite:///{path}", table="t", key="id"
    )
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE t")
    return str(ds["dataset_id"])


def test_seed_statuses_through_a_task_lifecycle(
    tmp_path: Path, source: str, live_server: Any
) -> None:
    """PENDING, CANCELED, FAILED, COMPLETED and expired files, as each seed names them;
    the workers start only after the waiting tasks were looked at."""
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "acme", source)
    doomed = _doomed_dataset(p, tmp_path)
    w = p["writer"]
    waiting = w.export("acme", dataset_id="flights", file_name="a.csv")
    canceled = w.export("acme", dataset_id="flights", file_name="b.csv")
    failing = w.export("acme", dataset_id=doomed, file_name="c.csv")
    expiring = w.export("acme", dataset_id="flights", file_name="d.csv")

    r = p["reader"].http.get(f"/v2/acme/quality/resource/status/{waiting['task_id']}",
                             headers={"workspace": "w"})  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] == "WAITING"
    assert r.json()["file_status"] == "PREPARING" and r.json()["start_time"] is None
    assert r.headers["Retry-After"] == "1"
    assert seed003(p, waiting["task_id"])["status"] == "PENDING"
    assert seed003(p, waiting["task_id"])["export_type"] == 2
    assert seed003(p, waiting["task_id"])["export_params"]["search_conditions"] is None
    assert w.http.post(f"/v1/projects/acme/exports/{canceled['task_id']}/cancel").status_code == 202
    listed = seed004(p)
    assert listed["count"] == 4
    by_id = {i["task_id"]: i for i in listed["export_tasks"]}
    assert by_id[waiting["task_id"]]["status"] == "CREATING"
    assert by_id[waiting["task_id"]]["end_time"] is None
    assert by_id[canceled["task_id"]]["status"] == "FAIL"
    assert by_id[canceled["task_id"]]["error_code"] == "CANCELED"
    assert seed001(p, canceled["task_id"])["status"] == "FAILED"

    server.start_worker(concurrency=2)
    for t in (waiting, failing, expiring):
        w.wait("acme", t["task_id"], timeout=60)
    failed = seed001(p, failing["task_id"])
    assert failed["status"] == "FAILED" and failed["file_status"] == "FAILED"
    assert failed["error_msg"]
    with sa.create_engine(server.settings.store_url).begin() as conn:  # files expired
        conn.execute(
            sa.text("UPDATE tasks SET file_status = 'DELETED' WHERE task_id = :t"),
            {"t": expiring["task_id"]},
        )
    assert seed001(p, expiring["task_id"])["file_status"] == "DELETED"

    def ids(**params: Any) -> set[str]:
        return {i["task_id"] for i in seed004(p, **params)["export_tasks"]}

    assert ids(status="SUCCESS") == {waiting["task_id"]}
    assert ids(status="FAIL") == {canceled["task_id"], failing["task_id"]}
    assert ids(status="EXPIRED") == {expiring["task_id"]}
    assert ids(status="CREATING") == set()
    [fail] = seed004(p, status="FAIL", task_id=failing["task_id"])["export_tasks"]
    assert fail["fail_reason"] and fail["error_code"]
    assert ids(file_name="b.csv") == {canceled["task_id"]}
    names = [i["file_name"] for i in seed004(p, sort_field="file_name")["export_tasks"]]
    assert names == ["a.csv", "b.csv", "c.csv", "d.csv"]
    names = [
        i["file_name"]
        for i in seed004(p, sort_field="file_name", sort_type="desc", limit=2, offset=1)[
            "export_tasks"
        ]
    ]
    assert names == ["c.csv", "b.csv"]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "RUNNING"},
        {"limit": 0},
        {"limit": 101},
        {"offset": -1},
        {"sort_type": "asc"},
        {"sort_field": "url"},
        {"is_download": "maybe"},
    ],
)
def test_seed004_bad_parameters_are_400(
    params: dict[str, Any], source: str, live_server: Any
) -> None:
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "acme", source)
    r = p["reader"].http.get("/v2/acme/export-tasks", params=params)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error_code", "error_msg"}


def test_seed_views_refuse_without_token_and_hide_other_projects(
    source: str, live_server: Any
) -> None:
    server: LiveServer = live_server(workers=0)
    a = make_project(server, "a", source)
    b = make_project(server, "b", source)
    task = b["writer"].export("b", dataset_id="flights")
    ds = b.dataset["dataset_id"]
    paths = [
        "/v2/b/export-tasks",
        f"/v2/b/datasets/{ds}/export-tasks/{task['task_id']}",
        f"/v2/b/quality/resource/status/{task['task_id']}",
    ]
    anonymous = server.client("")
    anonymous.http.headers.pop("Authorization", None)
    for path in paths:
        r = anonymous.http.get(path, headers={"workspace": "w"})
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHORIZED"
        r = a["admin"].http.get(path, headers={"workspace": "w"})
        assert r.status_code == 404, r.text
        assert task["task_id"] not in r.text and ds not in r.text
    # seed 003: a task of another dataset of the same project is not found either
    other = b["root"].dataset("b", name="other", url=source, table="flights", key="id")
    r = b["reader"].http.get(f"/v2/b/datasets/{other['dataset_id']}/export-tasks/{task['task_id']}")
    assert r.status_code == 404 and r.json()["error_code"] == "TASK_NOT_FOUND"
    # seed 001: the workspace header is mandatory
    r = b["reader"].http.get(f"/v2/b/quality/resource/status/{task['task_id']}")
    assert r.status_code == 400 and "workspace" in r.json()["error_msg"]


def test_seed001_answers_500_with_an_error_body(source: str, live_server: Any) -> None:
    """A broken store: the error body, and nothing of the failure's internals."""
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "acme", source)
    task = p["writer"].export("acme", dataset_id="flights")
    with sa.create_engine(server.settings.store_url).begin() as conn:
        conn.execute(sa.text("DROP TABLE files"))
    r = p["reader"].http.get(
        f"/v2/acme/quality/resource/status/{task['task_id']}", headers={"workspace": "w"}
    )
    assert r.status_code == 500
    assert r.json() == {
        "error_code": "INTERNAL_ERROR",
        "error_msg": "internal error; see the server log",
    }


def test_partial_success_as_seed_002_describes_it(
    pg_source: str, pg_database: str, live_server: Any
) -> None:
    """One row of 4,000 fails (division by zero), isolated by bisection:
    COMPLETED_WITH_ERRORS with the successful and failed items, the errors and the rate;
    terminal, so no Retry-After; the seed views call it a success."""
    server: LiveServer = live_server(store_url=pg_database, workers=2)
    query = "SELECT id, carrier, 1 / (id - 1500) AS boom FROM flights WHERE id <= 4000"
    p = make_project(server, "acme", pg_source, name="boomy", table=None, query=query)
    task = p["writer"].export(
        "acme", dataset_id="boomy", parallelism=4, allow_partial=True, max_error_rate=0.5
    )
    done = p["writer"].wait("acme", task["task_id"], timeout=120)
    assert done["status"] == "COMPLETED_WITH_ERRORS", done
    assert done["is_terminal"] is True and done["retry_after"] is None
    # item-level: the one bad row (id 1500) is isolated, its partition commits the rest
    assert [(i["partition"], i["key"]) for i in done["failed_items"]] == [(1, 1500)]
    [failed] = done["failed_items"]
    assert failed["error_code"] == "ROW_FAILED" and "division by zero" in failed["error_msg"]
    assert [i["partition"] for i in done["successful_items"]] == [0, 1, 2, 3]
    assert sum(i["rows"] for i in done["successful_items"]) == 3999 == done["finished_count"]
    assert done["failed_count"] == 1
    assert done["success_rate"] == 99.97  # 3999 / 4000, rounded down
    assert done["error_code"] == "PARTIAL_FAILURE"
    r = p["reader"].http.get(f"/v1/projects/acme/exports/{task['task_id']}")
    assert "Retry-After" not in r.headers
    listed = (
        p["reader"]
        .http.get("/v1/projects/acme/exports", params={"status": "COMPLETED_WITH_ERRORS"})
        .json()
    )
    assert [t["task_id"] for t in listed["export_tasks"]] == [task["task_id"]]
    assert listed["export_tasks"][0]["failed_items"] == done["failed_items"]
    [item] = seed004(p)["export_tasks"]
    assert item["status"] == "SUCCESS" and item["error_code"] == "PARTIAL_FAILURE"
    assert seed001(p, task["task_id"])["status"] == "SUCCESS"
    # cancel of a terminal task: refused, and the status stays
    r = p["writer"].http.post(f"/v1/projects/acme/exports/{task['task_id']}/cancel")
    assert r.status_code == 409 and r.json()["error_code"] == "TASK_ALREADY_FINISHED"
    assert p["reader"].task("acme", task["task_id"])["status"] == "COMPLETED_WITH_ERRORS"
