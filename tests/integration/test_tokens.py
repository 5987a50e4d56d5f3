"""Project tokens over real HTTP: names, expiry, last use, listing and revocation; admin
role only, nothing across projects, and the token's value never shown again."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.api_support import Project, make_project, small_sqlite_source
from tests.support import LiveServer


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    return small_sqlite_source(tmp_path_factory.mktemp("tokens"))


@pytest.fixture
def server(live_server: Any) -> LiveServer:
    s: LiveServer = live_server(workers=0)
    return s


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json() == {"error_code": code, "error_msg": r.json()["error_msg"]}


def bearer(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})


def test_list_shows_everything_but_the_token(server: LiveServer, source: str) -> None:
    a = make_project(server, "a", source)
    made = a["admin"].http.post(
        "/v1/projects/a/tokens", json={"role": "reader", "name": "nightly", "expires_in": 3600}
    )
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["token"].startswith("ext_") and new["name"] == "nightly"
    assert new["expires_time"] is not None and new["expired"] is False

    listed = a["admin"].http.get("/v1/projects/a/tokens")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    by_id = {t["token_id"]: t for t in body["tokens"]}
    assert body["count"] == 4 and set(by_id) == {*a.token_ids.values(), new["token_id"]}
    for t in body["tokens"]:
        assert set(t) == {
            "token_id", "project_id", "name", "role", "create_time", "expires_time",
            "last_used_time", "expired",
        }  # fmt: skip
    assert by_id[new["token_id"]]["role"] == "reader"
    assert by_id[a.token_ids["writer"]]["name"] == "writer-bot"
    assert by_id[a.token_ids["writer"]]["expires_time"] is None
    for token in (*a.tokens.values(), new["token"]):
        assert token not in listed.text


def test_last_use_is_recorded_at_most_once_a_minute(server: LiveServer, source: str) -> None:
    a = make_project(server, "a", source)
    root = server.client()

    def last_used() -> str | None:
        tokens = root.http.get("/v1/projects/a/tokens").json()["tokens"]
        [t] = [t for t in tokens if t["token_id"] == a.token_ids["reader"]]
        return t["last_used_time"]  # type: ignore[no-any-return]

    assert last_used() is None  # made, never used
    assert a["reader"].http.get("/v1/projects/a/datasets").status_code == 200
    first = last_used()
    assert first is not None
    for _ in range(3):
        assert a["reader"].http.get("/v1/projects/a/datasets").status_code == 200
    assert last_used() == first  # not written again within the minute


def test_expired_token_is_refused(server: LiveServer, source: str) -> None:
    make_project(server, "a", source)
    root = server.client()
    made = root.http.post("/v1/projects/a/tokens", json={"role": "writer", "expires_in": 1})
    token = made.json()["token"]
    with bearer(server, token) as short:
        deadline = time.monotonic() + 30
        while (r := short.get("/v1/projects/a/datasets")).status_code == 200:
            assert time.monotonic() < deadline, "the token never expired"
            time.sleep(0.2)
        refused(r, 401, "TOKEN_EXPIRED")
    [listed] = [
        t
        for t in root.http.get("/v1/projects/a/tokens").json()["tokens"]
        if t["token_id"] == made.json()["token_id"]
    ]
    assert listed["expired"] is True


@pytest.mark.parametrize("expires_in", [0, -5, 10**12, "soon"])
def test_bad_expiry_is_400_and_makes_nothing(
    server: LiveServer, source: str, expires_in: Any
) -> None:
    make_project(server, "a", source)
    root = server.client()
    r = root.http.post("/v1/projects/a/tokens", json={"role": "reader", "expires_in": expires_in})
    assert r.status_code == 400, r.text
    assert root.http.get("/v1/projects/a/tokens").json()["count"] == 3


def test_revoke(server: LiveServer, source: str) -> None:
    a = make_project(server, "a", source)
    writer_id = a.token_ids["writer"]
    assert a["writer"].http.get("/v1/projects/a/datasets").status_code == 200
    r = a["admin"].http.delete(f"/v1/projects/a/tokens/{writer_id}")
    assert r.status_code == 204, r.text
    refused(a["writer"].http.get("/v1/projects/a/datasets"), 401, "UNAUTHORIZED")
    ids = [t["token_id"] for t in a["admin"].http.get("/v1/projects/a/tokens").json()["tokens"]]
    assert writer_id not in ids and len(ids) == 2
    refused(a["admin"].http.delete(f"/v1/projects/a/tokens/{writer_id}"), 404, "TOKEN_NOT_FOUND")
    # a project admin may revoke its own token; it is refused at once
    own = a.token_ids["admin"]
    assert a["admin"].http.delete(f"/v1/projects/a/tokens/{own}").status_code == 204
    refused(a["admin"].http.get("/v1/projects/a/tokens"), 401, "UNAUTHORIZED")


def test_admin_role_only_and_nothing_across_projects(server: LiveServer, source: str) -> None:
    a = make_project(server, "a", source)
    b: Project = make_project(server, "b", source)
    target = a.token_ids["reader"]
    for role in ("reader", "writer"):
        refused(a[role].http.get("/v1/projects/a/tokens"), 403, "FORBIDDEN")
        refused(a[role].http.delete(f"/v1/projects/a/tokens/{target}"), 403, "FORBIDDEN")
    for role in ("reader", "writer", "admin"):  # project b's tokens: project a is unknown
        refused(b[role].http.get("/v1/projects/a/tokens"), 404, "PROJECT_NOT_FOUND")
        refused(b[role].http.delete(f"/v1/projects/a/tokens/{target}"), 404, "PROJECT_NOT_FOUND")
    # b's admin naming a's token under its own project: not found, and a's token still works
    refused(b["admin"].http.delete(f"/v1/projects/b/tokens/{target}"), 404, "TOKEN_NOT_FOUND")
    assert a["reader"].http.get("/v1/projects/a/datasets").status_code == 200
    listed = b["admin"].http.get("/v1/projects/b/tokens").json()
    assert {t["project_id"] for t in listed["tokens"]} == {"b"}
    assert not {t["token_id"] for t in listed["tokens"]} & set(a.token_ids.values())
    # the server administrator may do both, in any project
    root = server.client()
    assert root.http.delete(f"/v1/projects/a/tokens/{target}").status_code == 204
    refused(a["reader"].http.get("/v1/projects/a/datasets"), 401, "UNAUTHORIZED")
