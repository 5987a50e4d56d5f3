"""A method a path does not serve is a 405 whose `Allow` header lists every method the path
serves (as the OpenAPI document lists them), on every path of the app."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.support import LiveServer

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def test_every_405_lists_every_method_of_its_path(live_server: Any) -> None:
    server: LiveServer = live_server(workers=0)
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    tried = 0
    with httpx.Client(base_url=server.url) as http:
        for template, operations in paths.items():
            served = sorted(m.upper() for m in operations)
            url = re.sub(r"\{[^}]+\}", "x1", template)
            for method in METHODS:
                if method in served:
                    continue
                r = http.request(method, url)
                assert r.status_code == 405, (method, url, r.text)
                assert r.json()["error_code"] == "METHOD_NOT_ALLOWED"
                allow = [m.strip() for m in r.headers["allow"].split(",")]
                assert sorted(allow) == served, (method, url, allow)
                tried += 1
    assert tried > 50


def test_a_task_path_allows_get_and_delete(live_server: Any) -> None:
    server: LiveServer = live_server(workers=0)
    r = httpx.put(f"{server.url}/v1/projects/p/exports/t1")
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET"
    r = httpx.patch(f"{server.url}/v1/projects/p/exports")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
