"""Bad input gets a clear 400 and creates nothing; projects are isolated; tokens required."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Api, LiveServer


@pytest.fixture
def api(sqlite_source: str, live_server: Any) -> tuple[LiveServer, Api]:
    server = live_server(workers=1)
    admin = server.client()
    token = admin.project("acme")
    admin.dataset("acme", name="flights", url=sqlite_source, table="flights", key="id")
    return server, server.client(token)


BAD_EXPORTS = [
    ({"dataset_id": "nope"}, "DATASET_NOT_FOUND"),
    ({"dataset_id": "flights", "fields": ["id", "secret"]}, "INVALID_FIELD"),
    ({"dataset_id": "flights", "fields": ["id", {"name": "id", "as": "id"}]}, "DUPLICATE_COLUMN"),
    ({"dataset_id": "flights", "filter": [{"nope": {"eq": 1}}]}, "INVALID_FIELD"),
    ({"dataset_id": "flights", "filter": [{"id": {"regex": ".*"}}]}, "INVALID_OPERATOR"),
    ({"dataset_id": "flights", "filter": [{"id": {"eq": "not a number"}}]}, "INVALID_FILTER_VALUE"),
    ({"dataset_id": "flights", "filter": [{"id": {"between": [1]}}]}, "INVALID_FILTER_VALUE"),
    ({"dataset_id": "flights", "filter": [{"id": {"in": []}}]}, "INVALID_FILTER_VALUE"),
    ({"dataset_id": "flights", "filter": [{"id": {"is_null": "yes"}}]}, "INVALID_FILTER_VALUE"),
    ({"dataset_id": "flights", "filter": [{"note": {"eq": "a\x00b"}}]}, "INVALID_FILTER_VALUE"),
    ({"dataset_id": "flights", "filter": "id > 1; DROP TABLE flights"}, "INVALID_REQUEST"),
    ({"dataset_id": "flights", "file_name": "../../etc/passwd"}, "INVALID_FILE_NAME"),
    ({"dataset_id": "flights", "file_name": "a/b.csv"}, "INVALID_FILE_NAME"),
    ({"dataset_id": "flights", "file_name": "..csv"}, "INVALID_FILE_NAME"),
    ({"dataset_id": "flights", "file_name": "x" * 300}, "INVALID_REQUEST"),
    ({"dataset_id": "flights", "format": "exe"}, "INVALID_FORMAT"),
    ({"dataset_id": "flights", "parallelism": 0}, "INVALID_REQUEST"),
    ({"dataset_id": "flights", "parallelism": 1_000_000}, "INVALID_REQUEST"),
    ({"dataset_id": "flights", "parallelism": 500}, "INVALID_PARALLELISM"),
    ({"dataset_id": "flights", "timeout_seconds": 0}, "INVALID_REQUEST"),
    ({"dataset_id": "flights", "unknown_option": True}, "INVALID_REQUEST"),
    ({}, "INVALID_REQUEST"),
]


@pytest.mark.parametrize(("body", "code"), BAD_EXPORTS)
def test_bad_export_requests_are_400_and_create_nothing(
    api: tuple[LiveServer, Api], body: dict[str, Any], code: str
) -> None:
    _, client = api
    r = client.http.post("/v1/projects/acme/exports", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == code
    assert r.json()["error_msg"]
    assert client.http.get("/v1/projects/acme/exports").json()["count"] == 0


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"sort_field": "password"}, {"offset": -1},
     {"status": "DONE"}, {"sort_type": "asc"}, {"sort_field": "create_time; drop"}],
)  # fmt: skip
def test_bad_list_parameters(api: tuple[LiveServer, Api], params: dict[str, Any]) -> None:
    _, client = api
    r = client.http.get("/v1/projects/acme/exports", params=params)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error_code", "error_msg"}


def test_not_json_body(api: tuple[LiveServer, Api]) -> None:
    _, client = api
    r = client.http.post(
        "/v1/projects/acme/exports",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_REQUEST"


def test_tokens_and_isolation(api: tuple[LiveServer, Api], sqlite_source: str) -> None:
    server, acme = api
    admin = server.client()
    other_token = admin.project("globex")
    admin.dataset("globex", name="flights", url=sqlite_source, table="flights", key="id")
    globex = server.client(other_token)
    task = globex.export("globex", dataset_id="flights", parallelism=1)
    tid = task["task_id"]

    anonymous = server.client(token="")
    anonymous.http.headers.pop("Authorization", None)
    r = anonymous.http.get(f"/v1/projects/globex/exports/{tid}")
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHORIZED"
    r = server.client(token="ext_forged").http.get("/v1/projects/globex/exports")
    assert r.status_code == 401

    # acme's token on globex's objects: 404, and nothing about them is revealed
    for method, path in [
        ("GET", f"/v1/projects/globex/exports/{tid}"),
        ("GET", "/v1/projects/globex/exports"),
        ("POST", f"/v1/projects/globex/exports/{tid}/cancel"),
        ("DELETE", f"/v1/projects/globex/exports/{tid}"),
        ("GET", f"/v1/projects/globex/exports/{tid}/download"),
        ("GET", "/v1/projects/globex/datasets"),
        ("GET", f"/v1/projects/acme/exports/{tid}"),  # globex's task under acme's own path
    ]:
        r = acme.http.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        # exactly what a project or task that does not exist gets
        fake = "0" * 32
        twin = acme.http.request(method, path.replace(tid, fake).replace("globex", "nosuch"))
        assert twin.status_code == 404
        assert r.json()["error_code"] == twin.json()["error_code"]
        shown = r.json()["error_msg"].replace(tid, fake).replace("globex", "nosuch")
        assert shown == twin.json()["error_msg"]

    # a project token cannot create projects or register datasets
    assert acme.http.post("/v1/projects", json={"project_id": "evil"}).status_code == 403
    r = acme.http.post(
        "/v1/projects/acme/datasets",
        json={"name": "x", "url": sqlite_source, "table": "flights", "key": "id"},
    )
    assert r.status_code == 403

    # a reader may look but not create or cancel
    reader = admin.http.post("/v1/projects/globex/tokens", json={"role": "reader"}).json()["token"]
    rd = server.client(reader)
    assert rd.http.get(f"/v1/projects/globex/exports/{tid}").status_code == 200
    assert (
        rd.http.post("/v1/projects/globex/exports", json={"dataset_id": "flights"}).status_code
        == 403
    )
    assert rd.http.post(f"/v1/projects/globex/exports/{tid}/cancel").status_code == 403


def test_dataset_url_is_never_returned(api: tuple[LiveServer, Api], sqlite_source: str) -> None:
    _, client = api
    listing = client.http.get("/v1/projects/acme/datasets")
    assert listing.status_code == 200
    assert sqlite_source not in listing.text and "sqlite://" not in listing.text
    [ds] = listing.json()["datasets"]
    assert ds["name"] == "flights" and "url" not in ds
    assert [f["name"] for f in ds["fields"]][:2] == ["id", "carrier"]
    task = client.export("acme", dataset_id="flights", parallelism=1)
    assert sqlite_source not in str(client.task("acme", task["task_id"]))


def test_idempotency_key(api: tuple[LiveServer, Api]) -> None:
    _, client = api
    body = {"dataset_id": "flights", "parallelism": 2, "filter": [{"id": {"lt": 100}}]}
    headers = {"Idempotency-Key": "order-42"}
    first = client.http.post("/v1/projects/acme/exports", json=body, headers=headers)
    second = client.http.post("/v1/projects/acme/exports", json=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["task_id"] == second.json()["task_id"]
    changed = client.http.post(
        "/v1/projects/acme/exports", json={**body, "parallelism": 3}, headers=headers
    )
    assert changed.status_code == 409 and changed.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert client.http.get("/v1/projects/acme/exports").json()["count"] == 1


def test_list_filters_sort_and_delete(api: tuple[LiveServer, Api]) -> None:
    _, client = api
    ids = []
    for i in range(3):
        t = client.export(
            "acme", dataset_id="flights", parallelism=1, file_name=f"part-{i}.csv",
            filter=[{"id": {"lte": 10}}],
        )  # fmt: skip
        ids.append(t["task_id"])
    for tid in ids:
        client.wait("acme", tid)
    page = client.http.get("/v1/projects/acme/exports", params={"limit": 2}).json()
    assert page["count"] == 3 and len(page["export_tasks"]) == 2
    assert [t["task_id"] for t in page["export_tasks"]] == ids[::-1][:2]  # newest first
    asc = client.http.get(
        "/v1/projects/acme/exports", params={"sort_field": "file_name", "sort_type": "asc"}
    ).json()
    assert [t["file_name"] for t in asc["export_tasks"]] == [
        "part-0.csv",
        "part-1.csv",
        "part-2.csv",
    ]
    one = client.http.get("/v1/projects/acme/exports", params={"file_name": "part-1.csv"}).json()
    assert [t["task_id"] for t in one["export_tasks"]] == [ids[1]]
    done = client.http.get("/v1/projects/acme/exports", params={"status": "COMPLETED"}).json()
    assert done["count"] == 3
    assert (
        client.http.get("/v1/projects/acme/exports", params={"status": "FAILED"}).json()["count"]
        == 0
    )

    assert client.http.delete(f"/v1/projects/acme/exports/{ids[0]}").status_code == 204
    assert client.http.get(f"/v1/projects/acme/exports/{ids[0]}").status_code == 404
    assert client.http.get("/v1/projects/acme/exports").json()["count"] == 2
