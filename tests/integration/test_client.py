"""The Python client (`from exportd import Client, AsyncClient`) against a live server:
typed results, `wait()` following the task's events and falling back to polling, retries
on a refused connection (a server started late) and on 5xx, never on 4xx, and errors as
exceptions with status, error_code and error_msg."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from exportd import AsyncClient, Client, RequestRefused, ServerUnreachable, Task
from exportd.cli.client import ApiError, BadRequest, Forbidden, NotFound, Unauthorized
from tests.netfault import FaultyProxy
from tests.support import LiveServer

ADMIN = "exa_client-test-admin-token"


class Counting(httpx.BaseTransport):
    """The real transport, counting requests; the first `fail` answers are a 503 (a
    proxy in front of a struggling server, as the client sees it)."""

    def __init__(self, fail: int = 0) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[str] = []
        self.fail = fail

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        if self.fail > 0:
            self.fail -= 1
            return httpx.Response(503, json={"error_code": "BUSY", "error_msg": "try later"})
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _setup(server: LiveServer, source: str, project: str = "acme") -> str:
    """A project with the flights dataset; returns a writer token."""
    with Client(server.url, ADMIN) as root:
        root.create_project(project)
        root.add_dataset(project, name="flights", url=source, table="flights", key="id")
        token = root.create_token(project, "writer", name="client-test").token
    assert token is not None
    return token


@pytest.fixture
def server(live_server: Any) -> LiveServer:
    s: LiveServer = live_server(workers=2, admin_token=ADMIN, debug_pause_before_commit=0.5)
    return s


def test_sync_client_follows_the_task_live(
    server: LiveServer, sqlite_source: str, tmp_path: Path
) -> None:
    token = _setup(server, sqlite_source)
    seen: list[Task] = []
    with Client(server.url, token) as c:
        task = c.create_export(
            "acme", "flights", fields=["id", ("carrier", "airline")], parallelism=3
        )
        assert isinstance(task, Task) and task.status == "PENDING"
        final = c.wait("acme", task.task_id, on_update=seen.append, timeout=120)
        assert final.status == "COMPLETED" and final.is_terminal and final.event is None
        assert {t.event for t in seen} >= {"status"}  # the updates came over the event stream
        assert all(t.event in ("status", "stage", "progress") for t in seen)
        assert seen[-1].status == "COMPLETED"
        [f] = final.data_files
        saved = c.download("acme", task.task_id, tmp_path)
        manifest = c.manifest("acme", task.task_id)
        assert saved == tmp_path / f.name
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == f.sha256
        assert manifest["files"][0]["sha256"] == f.sha256
        assert saved.read_text().splitlines()[0] == "id,airline"
        page = c.list_exports("acme")
        assert page.count == 1 and page.tasks[0].task_id == task.task_id
        c.delete("acme", task.task_id)
        with pytest.raises(NotFound):
            c.get_export("acme", task.task_id)


def test_async_client_follows_the_task_live(
    server: LiveServer, sqlite_source: str, tmp_path: Path
) -> None:
    token = _setup(server, sqlite_source)

    async def main() -> tuple[Task, list[Task], Path, dict[str, Any]]:
        seen: list[Task] = []

        async def record(t: Task) -> None:
            seen.append(t)

        async with AsyncClient(server.url, token) as c:
            task = await c.create_export("acme", "flights", format="jsonl", parallelism=2)
            final = await c.wait("acme", task.task_id, on_update=record, timeout=120)
            saved = await c.download("acme", task.task_id, tmp_path)
            return final, seen, saved, await c.manifest("acme", task.task_id)

    final, seen, saved, manifest = anyio.run(main)
    assert final.status == "COMPLETED" and seen and seen[0].event == "status"
    assert all(t.event is not None for t in seen)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == manifest["files"][0]["sha256"]
    assert len(saved.read_bytes().splitlines()) == final.finished_count > 0


def test_wait_falls_back_to_polling_when_the_stream_breaks(
    server: LiveServer, sqlite_source: str
) -> None:
    """The connection is cut under the event stream: `wait` polls (retrying the refused
    connections until the way is back) and still returns the finished task."""
    token = _setup(server, sqlite_source)
    proxy = FaultyProxy("127.0.0.1", server.port)
    seen: list[Task] = []

    def update(t: Task) -> None:
        seen.append(t)
        if len(seen) == 1:  # the first event: break the stream for a moment
            threading.Thread(target=proxy.down, args=(1.0,), daemon=True).start()

    try:
        with Client(f"http://{proxy.address}", token) as c:
            task = c.create_export("acme", "flights", parallelism=4)
            final = c.wait("acme", task.task_id, on_update=update, timeout=120)
    finally:
        proxy.close()
    assert final.status == "COMPLETED"
    assert seen[0].event == "status"
    assert seen[-1].event is None and seen[-1].status == "COMPLETED"  # polled after the cut
    assert proxy.refused > 0 or proxy.connections > 2


def test_retries_a_refused_connection_until_the_server_starts(
    tmp_path: Path, sqlite_source: str
) -> None:
    late = LiveServer(tmp_path / "late", workers=0, admin_token=ADMIN)
    outcome: dict[str, Any] = {}

    def call() -> None:
        with Client(late.url, ADMIN, retry_seconds=60) as c:
            outcome["made"] = c.create_project("late")

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the client is retrying a refused connection meanwhile
    late.start()
    try:
        caller.join(timeout=90)
        assert outcome["made"]["project_id"] == "late"

        async def also_async() -> list[str]:
            async with AsyncClient(late.url, ADMIN) as c:
                return [d.name for d in await c.list_datasets("late")]

        assert anyio.run(also_async) == []
    finally:
        late.stop()


def test_gives_up_on_an_unreachable_server(tmp_path: Path) -> None:
    from tests.support import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, ADMIN, retry_seconds=1.0) as c, pytest.raises(ServerUnreachable) as exc:
        c.list_datasets("x")
    assert exc.value.url == url

    async def call() -> None:
        async with AsyncClient(url, ADMIN, retry_seconds=1.0) as c:
            await c.list_datasets("x")

    with pytest.raises(ServerUnreachable):
        anyio.run(call)


def test_5xx_retried_4xx_not(server: LiveServer, sqlite_source: str) -> None:
    _setup(server, sqlite_source)
    flaky = Counting(fail=2)
    with Client(server.url, ADMIN, transport=flaky) as c:
        assert [d.name for d in c.list_datasets("acme")] == ["flights"]
    assert flaky.sent == ["GET /v1/projects/acme/datasets"] * 3  # two 503s, then the answer

    # a POST without an Idempotency-Key is not repeated after a 5xx: it may have been done
    flaky = Counting(fail=1)
    with Client(server.url, ADMIN, transport=flaky) as c, pytest.raises(ApiError) as exc:
        c.create_project("once")
    assert exc.value.status == 503 and len(flaky.sent) == 1

    counting = Counting()
    with Client(server.url, ADMIN, transport=counting) as c, pytest.raises(NotFound):
        c.get_export("acme", "0" * 32)
    assert len(counting.sent) == 1  # a 4xx is final


def test_errors_are_exceptions_with_code_and_message(
    server: LiveServer, sqlite_source: str
) -> None:
    token = _setup(server, sqlite_source)
    with Client(server.url, ADMIN) as root:
        reader = root.create_token("acme", "reader").token
    with Client(server.url, token) as c:
        with pytest.raises(BadRequest) as bad:
            c.create_export("acme", "flights", fields=["nope"])
        assert bad.value.status == 400 and bad.value.error_code == "INVALID_FIELD"
        assert "nope" in bad.value.error_msg
        with pytest.raises(NotFound) as missing:
            c.get_export("other", "0" * 32)
        assert missing.value.error_code == "PROJECT_NOT_FOUND"
    with Client(server.url, reader) as c, pytest.raises(Forbidden) as forbidden:
        c.create_export("acme", "flights")
    assert forbidden.value.status == 403 and forbidden.value.error_code == "FORBIDDEN"
    with Client(server.url, "ext_wrong") as c, pytest.raises(Unauthorized) as wrong:
        c.list_datasets("acme")
    assert isinstance(wrong.value, RequestRefused) and isinstance(wrong.value, ApiError)
    assert wrong.value.error_code == "UNAUTHORIZED"
