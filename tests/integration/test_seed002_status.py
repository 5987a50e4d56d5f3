"""Seed 002's vocabulary on every task: `task_status` (TaskStatusEnum, TIMEOUT inside the
seed's terminal set as FAILED), and what each list filter matches on /v1 and /v2."""

from __future__ import annotations

from typing import Any

from tests.integration.test_faults import BOOM_QUERY, SLOW_QUERY, setup_project
from tests.support import Api


def _ids(api: Api, path: str, **params: Any) -> set[str]:
    r = api.http.get(path, params=params)
    assert r.status_code == 200, r.text
    return {t["task_id"] for t in r.json()["export_tasks"]}


def test_task_status_field_and_the_status_filters(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=2, max_attempts=1)
    api = setup_project(server, pg_source, name="boom", query=BOOM_QUERY)
    server.client().dataset(
        "acme", kind="sql", url=pg_source, key="id", name="slow", query=SLOW_QUERY.format(every=5)
    )
    server.client().dataset("acme", kind="sql", url=pg_source, key="id", name="flights", table="flights")  # fmt: skip
    failed = api.export("acme", dataset_id="boom", parallelism=2)["task_id"]
    late = api.export("acme", dataset_id="slow", parallelism=2, timeout_seconds=1)["task_id"]
    small = [{"id": {"lte": 100}}]
    ok = api.export("acme", dataset_id="flights", filter=small)["task_id"]
    seen = {t: api.wait("acme", t, timeout=120) for t in (failed, late, ok)}
    assert {t: (d["status"], d["task_status"]) for t, d in seen.items()} == {
        failed: ("FAILED", "FAILED"),
        late: ("TIMEOUT", "FAILED"),  # inside seed 002's terminal set
        ok: ("COMPLETED", "COMPLETED"),
    }
    assert all(d["is_terminal"] for d in seen.values())

    v1 = "/v1/projects/acme/exports"
    # `status` matches the native `status` field: FAILED is FAILED only
    assert _ids(api, v1, status="FAILED") == {failed}
    assert _ids(api, v1, status="TIMEOUT") == {late}
    assert _ids(api, v1, status=["FAILED", "TIMEOUT"]) == {failed, late}
    # `task_status` matches the `task_status` field: FAILED is FAILED and TIMEOUT
    assert _ids(api, v1, task_status="FAILED") == {failed, late}
    assert _ids(api, v1, task_status="COMPLETED") == {ok}
    assert _ids(api, v1, task_status=["IN_PROGRESS", "PROCESSING", "DRAFT"]) == set()
    assert _ids(api, v1, status="TIMEOUT", task_status="FAILED") == {late}  # both hold
    assert _ids(api, v1, status="COMPLETED", task_status="FAILED") == set()
    # a seed-002 value that is not native is read as task_status
    assert _ids(api, v1, status="IN_PROGRESS") == set()
    for bad in ({"task_status": "RUNNING"}, {"task_status": "failed"}, {"status": "NOPE"}):
        r = api.http.get(v1, params=bad)
        assert r.status_code == 400 and r.json()["error_code"], (bad, r.text)

    # /v2 (seed 004): `status` is seed 004's vocabulary; FAIL is FAILED, CANCELED, TIMEOUT
    v2 = "/v2/acme/export-tasks"
    assert _ids(api, v2, status="FAIL") == {failed, late}
    assert _ids(api, v2, status="SUCCESS") == {ok}
    r = api.http.get(v2, params={"status": "FAILED"})
    assert r.status_code == 400 and r.json()["error_code"], r.text
