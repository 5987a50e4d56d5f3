"""Connection profiles: the databases (and directories of files) a project may read, as
the server administrator decided. A profile is a name, a URL held server-side (never
returned by the API: a database URL, or `file:///dir` for files datasets) and the
projects granted to use it. Profiles come from the settings (`EXPORTD_CONNECTIONS`,
read-only) or from the administrator's API (`/v1/connections`, kept in the store).

A project admin registers a database dataset by naming a profile granted to its
project; a profile it is not granted is answered like one that does not exist. The
dataset keeps the profile's name, not its URL, so a changed password or a revoked grant
applies to existing datasets at their next use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa

from exportd.errors import Conflict, NotFound, SourceError
from exportd.model import Dataset
from exportd.settings import ConnectionSetting
from exportd.sources.policy import SourcePolicy, SourceUnavailable, probe
from exportd.sources.sql import SqlEngines
from exportd.store import Store

ALL_PROJECTS = "*"


@dataclass(frozen=True)
class Connection:
    name: str
    url: str  # secret: for the source engines only
    projects: list[str]
    origin: str  # "settings" or "api"
    create_time: datetime | None = None
    update_time: datetime | None = None

    def grants(self, project_id: str) -> bool:
        return ALL_PROJECTS in self.projects or project_id in self.projects

    @property
    def directory(self) -> Path | None:
        """A files connection (`file:///srv/data/acme`): the directory its files datasets
        read; None for a database."""
        parts = urlsplit(self.url)
        return Path(unquote(parts.path)) if parts.scheme == "file" else None

    @property
    def backend(self) -> str:
        if self.directory is not None:
            return "files"
        try:
            return sa.make_url(self.url).get_backend_name()
        except Exception:  # a settings profile with a bad URL: refused at its first use
            return "unknown"


class Connections:
    """The profiles of one server, from its settings and its store."""

    def __init__(
        self,
        store: Store,
        configured: dict[str, ConnectionSetting],
        policy: SourcePolicy,
        engines: SqlEngines,
    ) -> None:
        self.store = store
        self.policy = policy
        self.engines = engines
        self.configured = {
            name: Connection(name, c.url, list(c.projects), "settings")
            for name, c in configured.items()
        }

    def put(
        self, name: str, url: str, projects: list[str], replace: bool
    ) -> tuple[Connection, bool, bool]:
        """Create a profile (or replace an existing one) after the policy's checks;
        returns (profile, created, reachable). An unreachable database may be registered (it may come up
        later); exportd's own store, or a SQLite file outside the source directories, not."""
        if name in self.configured:
            raise Conflict(
                f"connection {name!r} is defined in the settings (EXPORTD_CONNECTIONS)",
                "CONNECTION_IN_SETTINGS",
            )
        if replace and self.store.get_connection(name) is None:
            raise NotFound(f"connection {name[:100]!r} not found", "CONNECTION_NOT_FOUND")
        directory = Connection(name, url, projects, "api").directory
        if directory is not None:
            self.policy.check_directory(directory)
            reachable = True
        else:
            try:
                probe(self.engines.get(url))
                reachable = True
            except SourceUnavailable:
                reachable = False
        created = self.store.put_connection(name, url, projects, replace)
        found = self.get(name)
        assert found is not None
        return found, created, reachable

    def get(self, name: str) -> Connection | None:
        if name in self.configured:
            return self.configured[name]
        row = self.store.get_connection(name)
        if row is None:
            return None
        return Connection(row.name, row.url, row.projects, "api", row.create_time, row.update_time)

    def all(self) -> list[Connection]:
        stored = [
            Connection(r.name, r.url, r.projects, "api", r.create_time, r.update_time)
            for r in self.store.list_connections()
            if r.name not in self.configured
        ]
        return sorted([*self.configured.values(), *stored], key=lambda c: c.name)

    def delete(self, name: str) -> None:
        if name in self.configured:
            raise Conflict(
                f"connection {name!r} is defined in the settings (EXPORTD_CONNECTIONS)",
                "CONNECTION_IN_SETTINGS",
            )
        if not self.store.delete_connection(name):
            raise NotFound(f"connection {name!r} not found", "CONNECTION_NOT_FOUND")

    def granted(self, project_id: str) -> list[Connection]:
        return [c for c in self.all() if c.grants(project_id)]

    def for_project(self, name: str, project_id: str) -> Connection:
        """The profile a project names: 404 when it does not exist or is not granted to
        the project (the two are not told apart)."""
        found = self.get(name)
        if found is None or not found.grants(project_id):
            raise NotFound(f"connection {name[:100]!r} not found", "CONNECTION_NOT_FOUND")
        return found

    def dataset_url(self, dataset: Dataset) -> str:
        """The URL a dataset reads now: its profile's (still granted), else its own."""
        name = dataset.options.get("connection")
        if not name:
            return dataset.url
        found = self.get(str(name))
        if found is None or not found.grants(dataset.project_id):
            raise SourceError(
                "the dataset's connection was removed or is no longer granted to the project",
                "SOURCE_UNAVAILABLE",
            )
        return found.url
