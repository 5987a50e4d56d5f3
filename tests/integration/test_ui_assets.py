"""The pages a browser opens, over a real socket: the dashboard, Swagger UI and ReDoc
reference only assets the app serves itself (no CDN, so they work without internet), and
every one of them is there; the package data ships every dashboard file."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "src" / "exportd" / "api" / "dashboard"
# the URL-looking things a page or a script may reference
MODULE_IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", re.M)
XML_NAMESPACE = re.compile(r'xmlns(:\w+)?="[^"]*"')
SWAGGER_SPEC = re.compile(r"""url:\s*'([^']+)'""")


class References(HTMLParser):
    """Every src/href/spec-url of a page: the assets a browser fetches to show it (links
    to other pages, `<a href>`, are not followed)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            return
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value and not value.startswith("#"):
                self.urls.append(value)


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls + SWAGGER_SPEC.findall(html)


def fetch_all(http: httpx.Client, page: str) -> dict[str, httpx.Response]:
    """The page and everything it references, transitively through ES module imports;
    fails on any reference outside the app's own origin."""
    origin = urlsplit(str(http.base_url))
    seen: dict[str, httpx.Response] = {}
    todo = [page]
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), (
            f"{url} is not served by the app itself"
        )
        r = http.get(url)
        assert r.status_code == 200, (url, r.status_code)
        assert r.content, url
        if "/static/" in url:  # checked again on each load: never a previous version's
            assert r.headers["cache-control"] == "no-cache", url
            etag = {"If-None-Match": r.headers["etag"]}
            assert http.get(url, headers=etag).status_code == 304, url
        seen[url] = r
        kind = r.headers["content-type"]
        if kind.startswith("text/html"):
            todo += [urljoin(url, ref) for ref in references(r.text)]
        elif "javascript" in kind and url.startswith(f"{http.base_url}dashboard/"):
            todo += [urljoin(url, ref) for ref in MODULE_IMPORT.findall(r.text)]
    return seen


def test_swagger_ui_and_redoc_come_from_the_app(live_server: Any) -> None:
    server = live_server(workers=0)
    http = httpx.Client(base_url=server.url + "/")
    for page, needs in [
        ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "openapi.json"]),
        ("/redoc", ["redoc.standalone.js", "openapi.json"]),
    ]:
        got = fetch_all(http, server.url + page)
        names = [urlsplit(u).path.rsplit("/", 1)[-1] for u in got]
        for name in needs:
            assert name in names, (page, names)
        html = got[server.url + page]
        assert "://" not in html.text  # no absolute URL at all: nothing from a CDN
        policy = html.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
        scripts = [r for u, r in got.items() if u.endswith(".js")]
        assert all(len(r.content) > 100_000 for r in scripts)  # the real bundles
        assert all("javascript" in r.headers["content-type"] for r in scripts)
    spec = http.get("/openapi.json").json()
    assert "/" not in spec["paths"] and "/docs" not in spec["paths"]  # pages are not the API


def test_dashboard_and_its_modules_come_from_the_app(live_server: Any) -> None:
    server = live_server(workers=0)
    http = httpx.Client(base_url=server.url + "/")
    for page in ("/", "/dashboard"):
        got = fetch_all(http, server.url + page)
        paths = {urlsplit(u).path for u in got}
        modules = {f"/dashboard/static/{p.name}" for p in DASHBOARD.glob("static/*.js")}
        assert modules <= paths, modules - paths  # every module is reached from the page
        assert "/dashboard/static/app.css" in paths
        for url, r in got.items():
            text = XML_NAMESPACE.sub("", r.text)  # a namespace name is never fetched
            assert "http://" not in text and "https://" not in text, url
            if url.endswith(".js"):
                assert "javascript" in r.headers["content-type"]  # module scripts need it
        policy = got[server.url + page].headers["content-security-policy"]
        assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
        assert "connect-src 'self'" in policy
    # the page needs no token; the API it calls does
    assert http.get("/v1/projects/acme/exports").status_code == 401
    # the asset directory serves its files only
    for probe in (
        "/dashboard/static/../ui.py",
        "/dashboard/static/%2e%2e/ui.py",
        "/dashboard/static/",
        "/dashboard/static/index.html",
    ):
        assert http.get(probe).status_code == 404, probe


def test_the_package_data_ships_every_dashboard_file() -> None:
    """An installed wheel has the dashboard: each of its files matches a package-data
    pattern of pyproject.toml (a new asset in a subfolder would not, until added)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["exportd"]
    package = ROOT / "src" / "exportd"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}  # setuptools' globs
    files = {p for p in DASHBOARD.rglob("*") if p.is_file()}
    assert DASHBOARD / "index.html" in files and DASHBOARD / "static" / "app.js" in files
    assert files <= shipped, sorted(str(p.relative_to(package)) for p in files - shipped)
