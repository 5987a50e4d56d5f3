"""Helpers for the API tests: a small source, and a project with tokens of every role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import Api, LiveServer, build_sqlite_source

SMALL_ROWS = 2000


def small_sqlite_source(directory: Path, rows: int = SMALL_ROWS) -> str:
    path = directory / "flights.db"
    build_sqlite_source(path, rows)
    return f"sqlite:///{path}"


@dataclass
class Project:
    """A project with a dataset and an API client per role."""

    project_id: str
    dataset: dict[str, Any]
    tokens: dict[str, str]  # role -> token
    token_ids: dict[str, str]
    api: dict[str, Api]  # role -> client; "root" is the administrator

    def __getitem__(self, role: str) -> Api:
        return self.api[role]


def make_project(server: LiveServer, project_id: str, source: str, **dataset: Any) -> Project:
    root = server.client()
    r = root.http.post("/v1/projects", json={"project_id": project_id})
    assert r.status_code == 201, r.text
    tokens, ids, clients = {}, {}, {"root": root}
    for role in ("reader", "writer", "admin"):
        r = root.http.post(
            f"/v1/projects/{project_id}/tokens", json={"role": role, "name": f"{role}-bot"}
        )
        assert r.status_code == 201, r.text
        tokens[role], ids[role] = r.json()["token"], r.json()["token_id"]
        clients[role] = server.client(tokens[role])
    connection = f"src-{project_id}"  # the server administrator's profile, granted to it
    r = root.http.post(
        "/v1/connections", json={"name": connection, "url": source, "projects": [project_id]}
    )
    assert r.status_code == 201, r.text
    body = {"name": "flights", "connection": connection, "table": "flights", "key": "id"}
    ds = root.dataset(project_id, **{**body, **dataset})
    return Project(project_id, ds, tokens, ids, clients)
