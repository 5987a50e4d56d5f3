"""The native list over real HTTP: every filter, every sort field, and pages that never
overlap or skip."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api_support import make_project, small_sqlite_source
from tests.support import LiveServer

SORT_FIELDS = ["create_time", "update_time", "end_time", "file_name", "status", "task_id"]


@pytest.fixture
def tasks_in_many_states(tmp_path: Any, live_server: Any) -> tuple[Any, dict[str, list[str]]]:
    """18 tasks: 7 COMPLETED (2 downloaded), 3 CANCELED, 8 PENDING of a second dataset;
    file names repeat so that sorts have ties."""
    source = small_sqlite_source(tmp_path, rows=200)
    server: LiveServer = live_server(workers=0)
    p = make_project(server, "acme", source)
    other = p["root"].dataset("acme", name="flights2", url=source, table="flights", key="id")
    w = p["writer"]
    first = [w.export("acme", dataset_id="flights", file_name=f"r-{i % 3}.csv") for i in range(10)]
    for t in first[:3]:
        assert w.http.post(f"/v1/projects/acme/exports/{t['task_id']}/cancel").status_code == 202
    worker = server.start_worker(concurrency=2)
    for t in first[3:]:
        assert w.wait("acme", t["task_id"], timeout=60)["status"] == "COMPLETED"
    worker.kill()
    worker.wait()
    for t in first[3:5]:
        assert w.http.get(f"/v1/projects/acme/exports/{t['task_id']}/download").status_code == 200
    second = [
        w.export("acme", dataset_id=other["dataset_id"], file_name=f"s-{i % 2}.csv")
        for i in range(8)
    ]
    ids = {
        "canceled": [t["task_id"] for t in first[:3]],
        "completed": [t["task_id"] for t in first[3:]],
        "downloaded": [t["task_id"] for t in first[3:5]],
        "pending": [t["task_id"] for t in second],
        "second_created": [t["create_time"] for t in second],
        "dataset2": [other["dataset_id"]],
    }
    return p, ids


def test_list_filters(tasks_in_many_states: tuple[Any, dict[str, list[str]]]) -> None:
    p, ids = tasks_in_many_states
    api = p["reader"].http

    def found(**params: Any) -> set[str]:
        r = api.get("/v1/projects/acme/exports", params={"limit": 100, **params})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["export_tasks"])
        return {t["task_id"] for t in body["export_tasks"]}

    everything = set(ids["canceled"] + ids["completed"] + ids["pending"])
    assert found() == everything
    assert found(status="PENDING") == set(ids["pending"])
    assert found(status=["COMPLETED", "CANCELED"]) == set(ids["completed"] + ids["canceled"])
    assert found(status=["PENDING", "DRAFT"]) == set(ids["pending"])  # seed 002 values
    assert found(status="IN_PROGRESS") == set()
    assert found(dataset_id=ids["dataset2"][0]) == set(ids["pending"])
    assert found(dataset_id="flights2") == set(ids["pending"])  # by name, as requests do
    assert found(dataset_id="flights") == set(ids["canceled"] + ids["completed"])
    assert found(dataset_id="nope") == set()
    assert len(found(file_name="r-1.csv")) == 3
    assert found(file_name_prefix="s-") == set(ids["pending"])
    assert found(file_name_prefix="r-") == set(ids["canceled"] + ids["completed"])
    assert found(file_name="r-") == set()
    assert found(is_download="true") == set(ids["downloaded"])
    assert len(found(is_download="false")) == 16
    start, fourth = ids["second_created"][0], ids["second_created"][4]
    assert found(created_from=start) == set(ids["pending"])
    assert found(created_to=start) == set(ids["canceled"] + ids["completed"])
    assert found(created_from=start, created_to=fourth) == set(ids["pending"][:4])
    assert found(status="COMPLETED", is_download="true", file_name_prefix="r-") == set(
        ids["downloaded"]
    )


@pytest.mark.parametrize("sort_type", ["asc", "desc", None])
def test_pages_never_overlap_or_skip(
    tasks_in_many_states: tuple[Any, dict[str, list[str]]], sort_type: str | None
) -> None:
    p, _ids = tasks_in_many_states
    api = p["reader"].http
    for field in [*SORT_FIELDS, None]:
        params: dict[str, Any] = {}
        if field is not None:
            params["sort_field"] = field
            if sort_type:
                params["sort_type"] = sort_type
        whole = api.get("/v1/projects/acme/exports", params={**params, "limit": 100}).json()
        order = [t["task_id"] for t in whole["export_tasks"]]
        assert whole["count"] == 18 == len(order) == len(set(order))
        paged: list[str] = []
        for offset in range(0, 20, 4):
            page = api.get(
                "/v1/projects/acme/exports", params={**params, "offset": offset, "limit": 4}
            ).json()
            assert page["count"] == 18
            paged += [t["task_id"] for t in page["export_tasks"]]
        assert paged == order, (field, sort_type)
        if field in ("file_name", "status", "task_id"):
            keys = [t[field] for t in whole["export_tasks"]]
            descending = sort_type == "desc" or field is None
            assert keys == sorted(keys, reverse=descending), field
        ties = (
            [(t[field], t["task_id"]) for t in whole["export_tasks"]]
            if field in ("file_name", "status")
            else []
        )
        assert ties == sorted(ties, reverse=sort_type == "desc")  # ties: by task_id


def test_seed004_pages_never_overlap_or_skip(
    tasks_in_many_states: tuple[Any, dict[str, list[str]]],
) -> None:
    p, _ids = tasks_in_many_states
    api = p["reader"].http
    for field in ("create_time", "end_time", "file_name", "task_id"):
        for sort_type in ("asc", "desc"):
            params = {"sort_field": field, "sort_type": sort_type}
            whole = api.get("/v2/acme/export-tasks", params={**params, "limit": 100}).json()
            order = [t["task_id"] for t in whole["export_tasks"]]
            assert whole["count"] == 16 == len(set(order))  # is_download defaults to false
            paged = []
            for offset in range(0, 16, 5):
                page = api.get(
                    "/v2/acme/export-tasks", params={**params, "offset": offset, "limit": 5}
                )
                paged += [t["task_id"] for t in page.json()["export_tasks"]]
            assert paged == order
