"""The dashboard in a real browser: Playwright drives Debian's Chromium (a browser build of
Playwright's own cannot be downloaded here) against exportd served over a socket, with
workers, on a PostgreSQL source slow enough that progress is visible.

With EXPORTD_DASHBOARD_SCREENSHOT=path, the test also saves a screenshot of a running
export there (how docs/dashboard.png is made)."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)",
)

# nap(id, every) sleeps 20 ms for one row in `every` (tests/support.py): 40,000 rows with a
# nap every 50 rows take some 16 s of sleep over the partitions, long enough to watch
WATCHED = "SELECT f.*, nap(f.id, 50) AS pad FROM flights f WHERE f.id <= 40000"
# and this one runs for minutes unless canceled
ENDLESS = "SELECT f.*, nap(f.id, 5) AS pad FROM flights f"
WAIT_MS = 120_000


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def progress(page: Any) -> float:
    return float(page.get_attribute("#task-progress", "aria-valuenow"))


def wait_status(page: Any, status: str) -> None:
    page.wait_for_selector(f'#task-status [data-status="{status}"]', timeout=WAIT_MS)


def wait_rows(page: Any, task_ids: list[str]) -> None:
    """Until the list shows exactly these tasks, in this order."""
    page.wait_for_function(
        "want => [...document.querySelectorAll('#tasks tbody tr[data-task-id]')]"
        ".map(r => r.dataset.taskId).join() === want",
        arg=",".join(task_ids),
        timeout=WAIT_MS,
    )


def test_dashboard_watches_cancels_and_downloads(
    pg_source: str, live_server: Any, browser: Any, tmp_path: Path
) -> None:
    server = live_server(workers=4, batch_size=1000)
    root = server.client()
    token = root.project("dash")
    other = root.project("elsewhere")  # a token of another project
    for name, query in (("watched", WATCHED), ("endless", ENDLESS)):
        root.dataset("dash", name=name, url=pg_source, query=query, key="id")

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if urlsplit(route.request.url).netloc == urlsplit(server.url).netloc:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)
    page = context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))

    # sign in: a wrong token and another project's token show the API's own errors
    page.goto(server.url + "/")
    page.fill("#signin-project", "dash")
    page.fill("#signin-token", "not-a-token")
    page.click("form button[type=submit]")
    page.wait_for_selector(".signin .alert:has-text('UNAUTHORIZED: invalid token')")
    page.fill("#signin-token", other)
    page.click("form button[type=submit]")
    page.wait_for_selector(".signin .alert:has-text('PROJECT_NOT_FOUND')")
    page.fill("#signin-token", token)
    page.click("form button[type=submit]")
    page.wait_for_selector("#start-form")
    assert page.evaluate("sessionStorage.getItem('exportd.session')").count(token) == 1

    # start an export from the page and watch its progress bar grow
    page.wait_for_selector("#start-dataset option:has-text('watched')", state="attached")
    page.select_option("#start-dataset", label="watched")
    page.select_option("#start-format", "csv")
    page.fill("#start-file", "watched.csv")
    page.fill("#start-parallelism", "4")
    page.click("#start-export")
    page.wait_for_url(re.compile(r"#/tasks/"))
    watched = page.url.split("#/tasks/")[1]
    page.wait_for_function(
        "() => { const v = +document.querySelector('#task-progress').getAttribute('aria-valuenow');"
        " return v > 0 && v < 100 }",
        timeout=WAIT_MS,
    )
    first = progress(page)
    page.wait_for_function(
        f"() => +document.querySelector('#task-progress').getAttribute('aria-valuenow') > {first}",
        timeout=WAIT_MS,
    )
    assert progress(page) > first
    page.wait_for_selector('li.stage[data-stage="60"].current, li.stage[data-stage="60"].done')
    assert page.locator("#task-partitions .partition").count() == 4
    assert page.locator("#task-partitions .partition:has-text('attempt 1')").count() == 4
    page.wait_for_selector("#stat-rate:has-text('rows/s')", timeout=WAIT_MS)
    if shot := os.environ.get("EXPORTD_DASHBOARD_SCREENSHOT"):
        page.locator("#toasts").evaluate("box => box.replaceChildren()")  # a tidy picture
        page.screenshot(path=shot, full_page=True)

    wait_status(page, "COMPLETED")
    page.wait_for_selector('li.stage[data-stage="90"].done')
    assert page.locator("#task-stats #stat-rows").inner_text() == "40,000 of 40,000"

    # the page's download link gives the file the manifest describes
    link = page.locator('#task-files tr[data-file="watched.csv"] a')
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "watched.csv"
    download.value.save_as(saved)
    user = server.client(token)
    manifest = user.http.get(f"/v1/projects/dash/exports/{watched}/manifest").json()
    [described] = [f for f in manifest["files"] if f["name"] == "watched.csv"]
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == described["sha256"]
    with saved.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 40_001 and rows[-1][0] == "40000"  # the header and every row
    page.click(".manifest-box summary")
    page.wait_for_selector(f"#task-manifest:has-text('{described['sha256']}')")

    # a second export, started elsewhere, found in the list and canceled from the page
    endless = user.export("dash", dataset_id="endless", format="jsonl", file_name="endless.jsonl")
    page.click("a.back")
    page.select_option("#filter-status", "RUNNING")
    page.click(f'#tasks tr[data-task-id="{endless["task_id"]}"] a.task-link', timeout=WAIT_MS)
    wait_status(page, "RUNNING")
    page.click("#task-cancel")
    wait_status(page, "CANCELED")
    page.wait_for_selector("li.stage.stopped")
    assert user.task("dash", endless["task_id"])["status"] == "CANCELED"

    # filters: by status and by file name
    page.click("a.back")
    page.select_option("#filter-status", "CANCELED")
    wait_rows(page, [endless["task_id"]])
    page.select_option("#filter-status", "")
    page.fill("#filter-file", "watch")
    wait_rows(page, [watched])
    page.fill("#filter-file", "")
    wait_rows(page, [endless["task_id"], watched])  # newest first

    # delete asks once more, then the task is gone
    page.goto(f"{server.url}/#/tasks/{endless['task_id']}")
    wait_status(page, "CANCELED")
    page.click("#task-delete")
    page.click("#task-delete.confirm")
    page.wait_for_selector("#tasks")
    assert user.http.get(f"/v1/projects/dash/exports/{endless['task_id']}").status_code == 404

    # the API documentation renders from the app's own assets
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path:has-text('/v1/projects/{project_id}/exports')")
    page.goto(server.url + "/redoc")
    page.wait_for_selector("h2:has-text('Create Export')", timeout=WAIT_MS)

    assert elsewhere == []  # nothing was fetched from anywhere but exportd
    assert page_errors == []
