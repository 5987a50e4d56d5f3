"""The cheap status path: every status answer carries a weak ETag; a poller that sends it
back gets 304 with no body while nothing the body shows has changed, and the full body
as soon as anything has (a partition's progress, the terminal move, a cancel). Over real
HTTP; the tag never crosses projects."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.api_support import make_project, small_sqlite_source
from tests.integration.test_faults import SLOW_QUERY, setup_project


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
