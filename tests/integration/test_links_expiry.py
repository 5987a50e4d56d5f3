"""Signed links, file expiry and destination prefixes, over real HTTP on the embedded
default (SQLite store, local directory)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import httpx
import pytest

from exportd.delivery.links import LinkSigner

FILTER = {"id": {"between": [1, 300]}}


def setup(server: Any, source: str) -> tuple[Any, Any]:
    admin = server.client()
    token = admin.project("p")
    admin.dataset("p", name="flights", url=source, table="flights", key="id")
    return admin, server.client(token)


def finished(api: Any, **body: Any) -> dict[str, Any]:
    task = api.export("p", dataset_id="flights", filter=FILTER, **body)
    done = api.wait("p", task["task_id"])
    assert done["status"] == "COMPLETED", done
    return done


def data_file(task: dict[str, Any]) -> dict[str, Any]:
    [f] = [f for f in task["files"] if f["kind"] == "data"]
    return f


def with_query(url: str, **changes: str) -> str:
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunparse(parts._replace(query=urlencode(query)))


def test_signed_link_works_without_a_token(sqlite_source: str, live_server: Any) -> None:
    server = live_server()
    _, api = setup(server, sqlite_source)
    done = finished(api, expires_in=3600)
    f = data_file(done)
    assert f["url"].startswith(server.url + "/v1/links/p/")
    expires_at = datetime.fromisoformat(f["url_expires_at"].replace("Z", "+00:00"))
    file_expires = datetime.fromisoformat(done["file_expires_at"].replace("Z", "+00:00"))
    assert expires_at <= file_expires < datetime.now(UTC) + timedelta(seconds=3601)
    assert file_expires - expires_at < timedelta(seconds=1)  # valid while the file lives

    by_token = api.http.get(f"/v1/projects/p/exports/{done['task_id']}/download").content
    r = httpx.get(f["url"])  # no Authorization header
    assert r.status_code == 200 and r.content == by_token
    assert "attachment" in r.headers["content-disposition"]
    again = api.task("p", done["task_id"])
    assert again["is_download"] is True and again["download_count"] == 2


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: with_query(
            url, signature="A" + parse_qs(urlparse(url).query)["signature"][0][1:]
        ),
        lambda url: with_query(
            url, expires=str(int(parse_qs(urlparse(url).query)["expires"][0]) + 60)
        ),
        lambda url: url.replace(".csv?", ".csvx?"),
        lambda url: with_query(url, signature=""),
        lambda url: url.split("?")[0],
    ],
    ids=["signature", "expiry", "file", "empty", "unsigned"],
)
def test_tampered_link_is_403(tamper: Any, sqlite_source: str, live_server: Any) -> None:
    server = live_server()
    _, api = setup(server, sqlite_source)
    done = finished(api, file_name="a.csv")
    r = httpx.get(tamper(data_file(done)["url"]))
    assert r.status_code == 403
    assert r.json()["error_code"] == "LINK_INVALID"
    assert api.task("p", done["task_id"])["download_count"] == 0


def test_expired_link_is_403(sqlite_source: str, live_server: Any, tmp_path: Path) -> None:
    server = live_server()
    _, api = setup(server, sqlite_source)
    done = finished(api, file_name="a.csv")
    # a link signed with the server's secret, but whose time is up
    secret = (server.settings.data_dir / "link_secret").read_text().strip()
    path = LinkSigner(secret).path("p", done["task_id"], "a.csv", int(time.time()) - 1)
    r = httpx.get(server.url + path)
    assert r.status_code == 403 and r.json()["error_code"] == "LINK_EXPIRED"
    # the same with a live expiry works: the signature is what was checked
    path = LinkSigner(secret).path("p", done["task_id"], "a.csv", int(time.time()) + 60)
    assert httpx.get(server.url + path).status_code == 200


def test_expired_files_are_deleted_and_the_task_keeps_its_history(
    sqlite_source: str, live_server: Any
) -> None:
    server = live_server()
    _, api = setup(server, sqlite_source)
    done = finished(api, file_name="old.csv", expires_in=3600)
    out = server.settings.data_dir / "files" / "exports" / "p" / done["task_id"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "old.csv"]
    # time passes: the file's expiry is moved into the past in the store
    with sqlite3.connect(server.settings.data_dir / "exportd.db") as db:
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat(sep=" ")
        db.execute(
            "UPDATE tasks SET file_expires_at = ? WHERE task_id = ?", (past, done["task_id"])
        )

    gone = api.wait("p", done["task_id"], until=lambda t: t["file_status"] == "DELETED")
    assert list(out.iterdir()) == []
    assert gone["status"] == "COMPLETED" and gone["finished_count"] == 300  # history kept
    assert gone["files"][0]["url"] is None
    r = api.http.get(f"/v1/projects/p/exports/{done['task_id']}/download")
    assert r.status_code == 404 and r.json()["error_code"] == "FILE_DELETED"
    r = httpx.get(data_file(done)["url"])  # the link handed out before
    assert r.status_code == 404 and r.json()["error_code"] == "FILE_DELETED"


def test_delete_removes_the_files(sqlite_source: str, live_server: Any) -> None:
    server = live_server()
    _, api = setup(server, sqlite_source)
    done = finished(api, destination={"prefix": "daily/2026-06-01"})
    out = server.settings.data_dir / "files" / "exports" / "p" / "daily" / "2026-06-01"
    assert {p.name for p in (out / done["task_id"]).iterdir()} == {
        "manifest.json", done["file_name"],
    }  # fmt: skip
    assert api.http.delete(f"/v1/projects/p/exports/{done['task_id']}").status_code == 204
    assert not (out / done["task_id"]).exists()
    assert api.http.get(f"/v1/projects/p/exports/{done['task_id']}").status_code == 404


@pytest.mark.parametrize(
    "prefix", ["../q", "/abs", "a//b", "a/./b", "a/../../b", "a\\b", ".hidden", "a/", "x" * 101]
)
def test_destination_cannot_escape(prefix: str, sqlite_source: str, live_server: Any) -> None:
    server = live_server(workers=0)
    _, api = setup(server, sqlite_source)
    r = api.http.post(
        "/v1/projects/p/exports", json={"dataset_id": "flights", "destination": {"prefix": prefix}}
    )
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_DESTINATION"
    assert api.http.get("/v1/projects/p/exports").json()["count"] == 0


def test_storage_root_is_the_administrators(sqlite_source: str, live_server: Any) -> None:
    server = live_server()
    admin, api = setup(server, sqlite_source)
    project_admin = server.client(
        admin.http.post("/v1/projects/p/tokens", json={"role": "admin"}).json()["token"]
    )
    r = project_admin.http.put("/v1/projects/p/settings", json={"storage_prefix": "elsewhere"})
    assert r.status_code == 403
    for bad in ("exports/other", "parts/p", "../up", "/root"):
        r = admin.http.put("/v1/projects/p/settings", json={"storage_prefix": bad})
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_STORAGE_PREFIX", bad
    r = admin.http.put("/v1/projects/p/settings", json={"storage_prefix": "teams/acme"})
    assert r.status_code == 200 and r.json()["storage_prefix"] == "teams/acme"
    assert r.json()["webhook_secret_set"] is True and "whsec_" not in r.text
    # a project admin may change the notification defaults; the root stays
    r = project_admin.http.put(
        "/v1/projects/p/settings", json={"notify": {"emails": ["ops@example.com"]}}
    )
    assert r.status_code == 200 and r.json()["storage_prefix"] == "teams/acme"

    done = finished(api, destination={"prefix": "q2"})
    out = server.settings.data_dir / "files" / "teams" / "acme" / "q2" / done["task_id"]
    assert (out / done["file_name"]).is_file()
    r = api.http.get(f"/v1/projects/p/exports/{done['task_id']}/download")
    assert r.status_code == 200 and r.content == (out / done["file_name"]).read_bytes()


def test_webhook_secret_rotation(sqlite_source: str, live_server: Any) -> None:
    server = live_server(workers=0)
    admin, api = setup(server, sqlite_source)
    r = api.http.post("/v1/projects/p/webhook-secret")
    assert r.status_code == 403  # a writer token cannot
    first = admin.http.post("/v1/projects/p/webhook-secret").json()["webhook_secret"]
    second = admin.http.post("/v1/projects/p/webhook-secret").json()["webhook_secret"]
    assert first.startswith("whsec_") and second.startswith("whsec_") and first != second
