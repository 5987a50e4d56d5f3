"""Engine creation and migrations for the store (SQLite embedded, PostgreSQL distributed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL and PyMySQL for MySQL/MariaDB unless a driver is named."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://") or url.startswith("mariadb://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def create_store_engine(url: str) -> sa.Engine:
    """The store's engine. Statement parameters are never logged nor put into error
    texts (`hide_parameters`): they carry dataset URLs with passwords."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        sa_url = sa.make_url(url)
        if sa_url.database:
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
            hide_parameters=True,
            pool_size=10,  # as for PostgreSQL: the API's threads reuse connections
            max_overflow=20,
        )
        _sqlite_pragmas(engine)
        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        hide_parameters=True,
        connect_args=_PG_CONNECT if url.startswith("postgresql") else {},
    )


# a store that does not answer must fail a try quickly (it is then tried again on the
# caller's budget) rather than hang: a bounded connect, and keepalives that notice a
# connection whose server went away without closing it
_PG_CONNECT = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _sqlite_pragmas(engine: sa.Engine) -> None:
    """WAL, a busy timeout, and `BEGIN IMMEDIATE` for write transactions so that claims
    by several processes serialize instead of failing on lock upgrades."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event emit BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("sqlite_single_read", False):
            return  # one SELECT: atomic by itself, no BEGIN / COMMIT round trips
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Bring the store's schema to the newest revision (run at every start)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:  # outside any transaction, where SQLite honours it (see below)
            _foreign_keys(conn, on=False)
        try:
            with conn.begin():
                if not sqlite:
                    # several processes may start at once: one migrates, the others wait
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        finally:
            if sqlite:
                _foreign_keys(conn, on=True)


def _foreign_keys(conn: sa.Connection, on: bool) -> None:
    """SQLite changes a table's constraints by copying it into a new table and dropping
    the old one; with foreign keys enforced, that DROP would cascade-delete every child
    row (a task's partitions, files and notifications). So migrations run without."""
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    dbapi.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
