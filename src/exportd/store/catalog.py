"""Projects, tokens, connection profiles and datasets: the catalog an administrator
manages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from exportd.errors import Conflict, NotFound
from exportd.model import Dataset, Role
from exportd.store.base import StoreBase, utcnow
from exportd.store.rows import as_utc, record_from_row
from exportd.store.tables import connections, datasets, projects, tokens


@dataclass(frozen=True)
class ConnectionRow:
    """A connection profile as stored: its URL is for the source engines only."""

    name: str
    url: str
    projects: list[str]
    create_time: Any
    update_time: Any


@dataclass(frozen=True)
class TokenInfo:
    """What a project token grants, and which token it is (never the token itself)."""

    project_id: str
    role: Role
    token_id: str
    name: str | None
    create_time: datetime | None = None
    expires_time: datetime | None = None
    last_used_time: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.expires_time is not None and self.expires_time <= now


# a token's last use is written when the stored one is older than this (one write a minute
# at most per token, however busy it is)
LAST_USED_GRANULARITY = timedelta(minutes=1)


class CatalogStore(StoreBase):
    def create_project(
        self,
        project_id: str,
        settings: dict[str, Any] | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        with self.write() as conn:
            exists = conn.execute(
                sa.select(projects.c.project_id).where(projects.c.project_id == project_id)
            ).first()
            if exists:
                raise Conflict(f"project {project_id!r} already exists", "PROJECT_EXISTS")
            conn.execute(
                projects.insert().values(
                    project_id=project_id,
                    settings=settings or {},
                    create_time=utcnow(),
                    webhook_secret=webhook_secret,
                )
            )

    def project_exists(self, project_id: str) -> bool:
        with self.read_one() as conn:
            row = conn.execute(
                sa.select(projects.c.project_id).where(projects.c.project_id == project_id)
            ).first()
            return row is not None

    def project_settings(self, project_id: str) -> dict[str, Any]:
        with self.read() as conn:
            row = conn.execute(
                sa.select(projects.c.settings).where(projects.c.project_id == project_id)
            ).first()
        if row is None:
            raise NotFound(f"project {project_id!r} not found", "PROJECT_NOT_FOUND")
        return dict(row.settings or {})

    def set_project_settings(self, project_id: str, settings: dict[str, Any]) -> None:
        self._update_project(project_id, settings=settings)

    def set_webhook_secret(self, project_id: str, secret: str) -> None:
        self._update_project(project_id, webhook_secret=secret)

    def webhook_secret(self, project_id: str) -> str | None:
        with self.read() as conn:
            secret: str | None = conn.execute(
                sa.select(projects.c.webhook_secret).where(projects.c.project_id == project_id)
            ).scalar()
        return secret

    def _update_project(self, project_id: str, **values: Any) -> None:
        with self.write() as conn:
            n = conn.execute(
                sa.update(projects).where(projects.c.project_id == project_id).values(**values)
            ).rowcount
        if n != 1:
            raise NotFound(f"project {project_id!r} not found", "PROJECT_NOT_FOUND")

    def list_projects(self) -> list[str]:
        with self.read() as conn:
            return list(
                conn.execute(sa.select(projects.c.project_id).order_by(projects.c.project_id))
                .scalars()
                .all()
            )

    def add_token(
        self,
        token_hash: str,
        token_id: str,
        project_id: str,
        role: Role,
        name: str | None,
        expires_time: datetime | None = None,
    ) -> TokenInfo:
        now = utcnow()
        with self.write() as conn:
            conn.execute(
                tokens.insert().values(
                    token_hash=token_hash,
                    token_id=token_id,
                    project_id=project_id,
                    role=role.value,
                    name=name,
                    create_time=now,
                    expires_time=expires_time,
                )
            )
        return TokenInfo(project_id, role, token_id, name, now, expires_time)

    def find_token(self, token_hash: str) -> TokenInfo | None:
        with self.read_one() as conn:
            row = conn.execute(
                sa.select(*_TOKEN_COLUMNS).where(tokens.c.token_hash == token_hash)
            ).first()
        return None if row is None else _token(row._mapping)

    def touch_token(self, token_id: str, last_used: datetime | None, now: datetime) -> None:
        """Record that the token was just accepted, unless that was recorded less than
        a minute ago (the guard is in the UPDATE too: concurrent requests write once)."""
        if last_used is not None and now - last_used < LAST_USED_GRANULARITY:
            return
        stale = now - LAST_USED_GRANULARITY
        with self.write() as conn:
            conn.execute(
                sa.update(tokens)
                .where(
                    tokens.c.token_id == token_id,
                    sa.or_(tokens.c.last_used_time.is_(None), tokens.c.last_used_time < stale),
                )
                .values(last_used_time=now)
            )

    def list_tokens(self, project_id: str) -> list[TokenInfo]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(*_TOKEN_COLUMNS)
                .where(tokens.c.project_id == project_id)
                .order_by(tokens.c.create_time, tokens.c.token_id)
            ).all()
        return [_token(r._mapping) for r in rows]

    def revoke_token(self, project_id: str, token_id: str) -> None:
        """Forget the token: it is refused from now on. Another project's is not found."""
        with self.write() as conn:
            n = conn.execute(
                tokens.delete().where(
                    tokens.c.project_id == project_id, tokens.c.token_id == token_id
                )
            ).rowcount
        if n == 0:
            raise NotFound(f"token {token_id!r} not found", "TOKEN_NOT_FOUND")

    def put_connection(self, name: str, url: str, projects: list[str], replace: bool) -> bool:
        """Create a connection profile (or replace it when `replace`); True if it is new."""
        now = utcnow()
        with self.write() as conn:
            exists = conn.execute(
                sa.select(connections.c.name).where(connections.c.name == name)
            ).first()
            if exists and not replace:
                raise Conflict(f"connection {name!r} already exists", "CONNECTION_EXISTS")
            if exists:
                conn.execute(
                    sa.update(connections)
                    .where(connections.c.name == name)
                    .values(url=url, projects=projects, update_time=now)
                )
                return False
            conn.execute(
                connections.insert().values(
                    name=name, url=url, projects=projects, create_time=now, update_time=now
                )
            )
            return True

    def get_connection(self, name: str) -> ConnectionRow | None:
        with self.read() as conn:
            row = conn.execute(sa.select(connections).where(connections.c.name == name)).first()
        return _connection(row._mapping) if row else None

    def list_connections(self) -> list[ConnectionRow]:
        with self.read() as conn:
            rows = conn.execute(sa.select(connections).order_by(connections.c.name)).all()
        return [_connection(r._mapping) for r in rows]

    def delete_connection(self, name: str) -> bool:
        with self.write() as conn:
            n = conn.execute(connections.delete().where(connections.c.name == name)).rowcount
        return bool(n)

    def add_dataset(self, ds: Dataset) -> None:
        with self.write() as conn:
            clash = conn.execute(
                sa.select(datasets.c.dataset_id).where(
                    datasets.c.project_id == ds.project_id, datasets.c.name == ds.name
                )
            ).first()
            if clash:
                raise Conflict(f"dataset {ds.name!r} already exists", "DATASET_EXISTS")
            conn.execute(
                datasets.insert().values(
                    dataset_id=ds.dataset_id,
                    project_id=ds.project_id,
                    name=ds.name,
                    kind=ds.kind,
                    url=ds.url,
                    table_name=ds.table,
                    query=ds.query,
                    key=ds.key,
                    fields=ds.fields,
                    options=ds.options,
                    create_time=ds.create_time,
                )
            )

    def get_dataset(self, project_id: str, dataset_id: str) -> Dataset:
        with self.read() as conn:
            row = conn.execute(
                sa.select(datasets).where(
                    datasets.c.project_id == project_id,
                    sa.or_(datasets.c.dataset_id == dataset_id, datasets.c.name == dataset_id),
                )
            ).first()
        if row is None:
            raise NotFound(f"dataset {dataset_id!r} not found", "DATASET_NOT_FOUND")
        return _dataset(row._mapping)

    def list_datasets(self, project_id: str) -> list[Dataset]:
        with self.read() as conn:
            rows = conn.execute(
                sa.select(datasets)
                .where(datasets.c.project_id == project_id)
                .order_by(datasets.c.name)
            ).all()
        return [_dataset(r._mapping) for r in rows]

    def delete_dataset(self, project_id: str, dataset_id: str) -> None:
        with self.write() as conn:
            n = conn.execute(
                datasets.delete().where(
                    datasets.c.project_id == project_id, datasets.c.dataset_id == dataset_id
                )
            ).rowcount
        if n == 0:
            raise NotFound(f"dataset {dataset_id!r} not found", "DATASET_NOT_FOUND")


_TOKEN_COLUMNS = (
    tokens.c.project_id,
    tokens.c.role,
    tokens.c.token_id,
    tokens.c.name,
    tokens.c.create_time,
    tokens.c.expires_time,
    tokens.c.last_used_time,
)


def _token(row: Any) -> TokenInfo:
    return TokenInfo(
        row["project_id"],
        Role(row["role"]),
        row["token_id"],
        row["name"],
        as_utc(row["create_time"]),
        as_utc(row["expires_time"]),
        as_utc(row["last_used_time"]),
    )


def _connection(row: Any) -> ConnectionRow:
    return ConnectionRow(
        name=row["name"],
        url=row["url"],
        projects=list(row["projects"]),
        create_time=as_utc(row["create_time"]),
        update_time=as_utc(row["update_time"]),
    )


def _dataset(row: Any) -> Dataset:
    return record_from_row(Dataset, row, {"table": "table_name"})
