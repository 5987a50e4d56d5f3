"""The cheap status path: every status answer carries a weak ETag; a poller that sends it
back gets 304 with no body while nothing the body shows has changed, and the full body
as soon as anything has (a partition's progress, the terminal move, a cancel). Over real
HTTP; the tag never crosses projects."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.api_support import make_project, small_sqlite_source
from tests.integration.test_faults import SLOW_QUERY, setup_project
from tests.integration.test_operations import scrape, total


def _get(api: Any, path: str, tag: str | None = None) -> Any:
    return api.http.get(path, headers={"If-None-Match": tag} if tag else {})


def test_finished_task_answers_304_to_its_own_tag_only(live_server: Any, tmp_path: Path) -> None:
    server = live_server(workers=1)
    acme = make_project(server, "acme", small_sqlite_source(tmp_path))
    (tmp_path / "other").mkdir()
    other = make_project(server, "other", small_sqlite_source(tmp_path / "other", rows=10))
    task = acme["writer"].export("acme", dataset_id="flights", format="csv")
    done = acme["reader"].wait("acme", task["task_id"])
    assert done["status"] == "COMPLETED"
    path = f"/v1/projects/acme/exports/{task['task_id']}"

    first = _get(acme["reader"], path)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('W/"') and first.headers["cache-control"] == "no-cache"
    assert first.json()["finished_count"] == 2000

    kept = _get(acme["reader"], path)  # the same body again, with its headers
    assert kept.content == first.content and kept.headers["etag"] == tag
    assert kept.headers["x-task-version"] == first.headers["x-task-version"]
    assert kept.headers["content-type"] == "application/json"

    again = _get(acme["reader"], path, tag)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag
    # the strong spelling of the same tag, a list holding it, and `*` match too
    assert _get(acme["reader"], path, tag.removeprefix("W/")).status_code == 304
    assert _get(acme["reader"], path, f'"nope", {tag}').status_code == 304
    assert _get(acme["reader"], path, "*").status_code == 304
    # another tag gets the body
    stale = _get(acme["reader"], path, 'W/"0000"')
    assert stale.status_code == 200 and stale.json()["task_id"] == task["task_id"]

    # the tag opens nothing elsewhere: another project's token is refused before any tag
    # is compared (no 304, no body), and a task that is not there is 404 with any tag
    foreign = _get(other["reader"], path, tag)
    assert foreign.status_code in (403, 404) and "etag" not in foreign.headers
    assert task["task_id"] not in foreign.text
    missing = _get(acme["reader"], "/v1/projects/acme/exports/nope", "*")
    assert missing.status_code == 404 and missing.json()["error_code"] == "TASK_NOT_FOUND"


def test_tag_moves_with_progress_and_the_cancel(pg_source: str, live_server: Any) -> None:
    server = live_server(workers=1)
    api = setup_project(server, pg_source, name="slow", query=SLOW_QUERY.format(every=200))
    task = api.export("acme", dataset_id="slow", parallelism=3)
    path = f"/v1/projects/acme/exports/{task['task_id']}"
    seen: dict[str, dict[str, Any]] = {}
    tag = None
    # poll with the last tag: every 200 carries a new tag and a body that differs from
    # the one before; a 304 only ever answers the latest tag
    stop_by = time.monotonic() + 60
    while len(seen) < 4:
        assert time.monotonic() < stop_by, f"the tag moved {len(seen)} times in 60 s"
        r = _get(api, path, tag)
        if r.status_code == 304:
            assert r.headers["etag"] == tag
            time.sleep(0.05)
            continue
        assert r.status_code == 200
        new = r.headers["etag"]
        assert new != tag and new not in seen
        body = r.json()
        assert all(body != b for b in seen.values())
        seen[new], tag = body, new
        if body["is_terminal"]:
            break
    plain = _get(api, path)  # a plain GET: its body is kept for the next ones
    assert plain.status_code == 200 and plain.json()["status"] == "RUNNING"
    r = api.http.post(f"{path}/cancel")
    assert r.status_code in (200, 202), r.text
    # the kept body is never answered once the tag moved: plain and conditional alike
    plain_after = _get(api, path)
    assert plain_after.json()["status"] in ("CANCELED", "CANCELING")
    assert plain_after.headers["etag"] != plain.headers["etag"]
    after = _get(api, path, tag)
    assert after.status_code == 200 and after.headers["etag"] != tag
    assert after.json()["status"] in ("CANCELED", "CANCELING")


def _lane_answers(server: Any) -> dict[str, float]:
    """exportd_status_lane_answers by answer, from the API's /metrics."""
    samples = scrape(f"{server.url}/metrics", server.admin_token)
    name = "exportd_status_lane_answers_total"
    return {a: total(samples, name, answer=a) for a in ("cached", "not_modified")}


def _same_answer(lane: Any, route: Any) -> None:
    assert lane.status_code == route.status_code
    assert lane.content == route.content
    drop = {"date", "server"}
    assert [(k, v) for k, v in lane.headers.items() if k not in drop] == [
        (k, v) for k, v in route.headers.items() if k not in drop
    ]


def test_the_status_lane_answers_as_the_route(live_server: Any, tmp_path: Path) -> None:
    """Pollers' GETs with no query string are answered in front of FastAPI (a 304, or the
    kept body); a query string (`wait=0` changes nothing) always reaches the route: both
    answers are the same, header for header, and the lane answers only what the route
    would let through."""
    server = live_server(workers=1)
    acme = make_project(server, "acme", small_sqlite_source(tmp_path))
    (tmp_path / "other").mkdir()
    other = make_project(server, "other", small_sqlite_source(tmp_path / "other", rows=10))
    task = acme["writer"].export("acme", dataset_id="flights", format="csv")
    assert acme["reader"].wait("acme", task["task_id"])["status"] == "COMPLETED"
    path = f"/v1/projects/acme/exports/{task['task_id']}"
    reader = acme["reader"]
    first = _get(reader, path)  # built by the route, kept
    tag = first.headers["etag"]

    before = _lane_answers(server)
    lane_200, route_200 = _get(reader, path), _get(reader, f"{path}?wait=0")
    lane_304, route_304 = _get(reader, path, tag), _get(reader, f"{path}?wait=0", tag)
    token = reader.http.headers["authorization"].removeprefix("Bearer ")
    by_header = reader.http.get(path, headers={"Authorization": "", "X-Auth-Token": token})
    after = _lane_answers(server)
    _same_answer(lane_200, route_200)
    _same_answer(lane_304, route_304)
    assert lane_200.content == first.content and lane_304.status_code == 304
    assert by_header.status_code == 200 and by_header.content == first.content
    assert after["cached"] - before["cached"] == 2
    assert after["not_modified"] - before["not_modified"] == 1

    # what the route refuses, the lane never answers: no token, a bad one, another
    # project's, even its admin's
    refused = [
        httpx.get(f"{server.url}{path}", headers={"If-None-Match": tag}),
        server.client("not-a-token").http.get(path),
        other["reader"].http.get(path, headers={"If-None-Match": tag}),
        other["admin"].http.get(path),
    ]
    assert [r.status_code for r in refused] == [401, 401, 404, 404]
    for r in refused:
        assert r.json()["error_code"] and "etag" not in r.headers
        assert task["task_id"] not in r.text or r.json()["error_code"] == "TASK_NOT_FOUND"
    assert _lane_answers(server) == after
