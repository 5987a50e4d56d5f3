"""Alembic environment: migrations run on a connection handed over by exportd, or on the URL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from exportd.store.tables import metadata

config = context.config
target_metadata = metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """On the connection exportd hands over, or on the configured URL (alembic CLI)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)


run_migrations_online()
