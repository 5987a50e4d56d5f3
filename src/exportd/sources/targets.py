"""Writing into a table: the target of an import (a `sql` dataset an administrator
marked writable). Its real columns are read by reflection and every value is checked
against them (`TargetColumn.convert`); valid rows load into per-partition staging tables
beside the target (or are staged as files and COPYed in by `publish_files`, see
`execution/imports/staged.py`), and the coordinator publishes them in ONE transaction
of the target database that also records the import in `exportd_imports`: a second
publish of the same task (a coordinator that lost its lease, one that was killed after
the commit) finds the record and does nothing, so each valid row lands exactly once."""

from __future__ import annotations

import functools
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from exportd.errors import BadRequest
from exportd.model.plan import ImportMode
from exportd.sources.policy import SourcePolicy
from exportd.store import normalize_url

MARKER_TABLE = "exportd_imports"
STAGE_PREFIX = "exportd_stage_"
LINE_COLUMN = "exportd_line"

INT_RANGES = {
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
}
TRUE = frozenset({"true", "t", "1", "yes", "y"})
FALSE = frozenset({"false", "f", "0", "no", "n"})
_INT = re.compile(r"[+-]?\d+")


class TargetEngines:
    """Writable engines of import targets, one per URL, checked by the source policy
    (the same rules as sources: no store, no file outside the source directories)."""

    def __init__(self, policy: SourcePolicy | None = None) -> None:
        self._engines: dict[str, sa.Engine] = {}
        self._lock = threading.Lock()
        self.policy = policy

    def get(self, url: str) -> sa.Engine:
        if self.policy is not None:
            self.policy.check_url(url)
        with self._lock:
            if url not in self._engines:
                self._engines[url] = self._create(url)
            return self._engines[url]

    def _create(self, url: str) -> sa.Engine:
        u = normalize_url(url)
        if u.startswith("sqlite"):
            args: dict[str, Any] = {"timeout": 60, "check_same_thread": False}
        else:
            args = {"connect_timeout": 10}
        engine = sa.create_engine(u, connect_args=args, hide_parameters=True, pool_pre_ping=True)
        if self.policy is not None:
            self.policy.guard(engine)
        return engine

    def dispose(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()


@dataclass(frozen=True)
class ValueRules:
    """How text values read: null markers, date and time formats, zone, decimal mark."""

    null_values: frozenset[str] = frozenset({""})
    date_format: str | None = None
    datetime_format: str | None = None
    timezone: str = "UTC"
    decimal_separator: str = "."


@dataclass(frozen=True)
class TargetColumn:
    """A column of the target as the database declares it."""

    name: str
    kind: str  # int | float | decimal | bool | date | datetime | time | str | json | other
    type_name: str
    nullable: bool
    has_default: bool
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    timezone: bool = False
    single: bool = False  # a single-precision float (PostgreSQL REAL, MySQL FLOAT)

    def convert(self, value: Any, rules: ValueRules) -> Any:
        """The value as the column takes it; ValueError with the reason otherwise."""
        if isinstance(value, str) and value in rules.null_values:
            value = None
        if value is None:
            if not self.nullable:
                raise ValueError("a value is required (the column is NOT NULL)")
            return None
        return _CONVERTERS.get(self.kind, _as_is)(self, value, rules)


def converter(col: TargetColumn, rules: ValueRules) -> Callable[[Any], Any]:
    """`col.convert` with `rules`, as one function made once per column: text (what CSV
    gives) takes a short path for the common kinds; the rest goes through `convert`."""
    nulls, slow = rules.null_values, col.convert
    required = not col.nullable

    def null() -> None:
        if required:
            raise ValueError("a value is required (the column is NOT NULL)")

    if col.kind == "int":
        lo, hi = INT_RANGES.get(col.type_name, INT_RANGES["BIGINT"])

        def as_int(v: Any) -> Any:
            if type(v) is not str:
                return slow(v, rules)
            if v in nulls:
                return null()
            try:
                n = int(v)
            except ValueError:
                raise ValueError(f"not an integer: {_show(v)}") from None
            if not lo <= n <= hi or "_" in v:
                return slow(v, rules)
            return n

        return as_int
    if col.kind == "float" and rules.decimal_separator == ".":
        single = col.single

        def as_float(v: Any) -> Any:
            if type(v) is not str:
                return slow(v, rules)
            if v in nulls:
                return null()
            try:
                f = float(v) if "_" not in v else slow(v, rules)
            except ValueError:
                raise ValueError(f"not a number: {_show(v)}") from None
            return _single(col, f) if single else f

        return as_float
    if col.kind == "datetime" and rules.datetime_format is None:
        zone = ZoneInfo(rules.timezone)
        utc = ZoneInfo("UTC")
        aware = col.timezone

        def as_datetime(v: Any) -> Any:
            if type(v) is not str:
                return slow(v, rules)
            if v in nulls:
                return null()
            try:
                dt = datetime.fromisoformat(v)
            except ValueError:
                return slow(v, rules)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=zone)
            return dt if aware else dt.astimezone(utc).replace(tzinfo=None)

        return as_datetime
    if col.kind == "str" and col.length is None:

        def as_str(v: Any) -> Any:
            if type(v) is not str:
                return slow(v, rules)
            if v in nulls:
                return null()
            return v

        return as_str
    return lambda v: slow(v, rules)


def _as_int(col: TargetColumn, v: Any, _r: ValueRules) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str, float)):
        raise ValueError(f"not an integer: {_show(v)}")
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError(f"not an integer: {_show(v)}")
        n = int(v)
    elif isinstance(v, str):
        if not _INT.fullmatch(v.strip()):
            raise ValueError(f"not an integer: {_show(v)}")
        n = int(v)
    else:
        n = v
    lo, hi = INT_RANGES.get(col.type_name, INT_RANGES["BIGINT"])
    if not lo <= n <= hi:
        raise ValueError(f"{n} is out of range for {col.type_name}")
    return n


def _as_float(col: TargetColumn, v: Any, r: ValueRules) -> float:
    if isinstance(v, bool):
        raise ValueError(f"not a number: {_show(v)}")
    try:
        f = float(v.replace(r.decimal_separator, ".") if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {_show(v)}") from None
    return _single(col, f) if col.single else f


def _single(col: TargetColumn, f: float) -> float:
    """A REAL column: a finite value that rounds to no single-precision float is out of
    its range (PostgreSQL would refuse the whole load)."""
    try:
        struct.pack("<f", f)
    except OverflowError:
        raise ValueError(f"{f!r} is out of range for {col.type_name}") from None
    return f


def _as_decimal(col: TargetColumn, v: Any, r: ValueRules) -> Decimal:
    if isinstance(v, bool):
        raise ValueError(f"not a decimal number: {_show(v)}")
    try:
        text = v.replace(r.decimal_separator, ".") if isinstance(v, str) else str(v)
        d = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise ValueError(f"not a decimal number: {_show(v)}") from None
    if not d.is_finite():
        raise ValueError(f"not a finite number: {_show(v)}")
    if col.precision is not None:
        scale = col.scale or 0
        d = d.quantize(Decimal(1).scaleb(-scale))
        digits = len(d.as_tuple().digits) - max(-int(d.as_tuple().exponent), 0)
        if max(digits, 0) > col.precision - scale:
            raise ValueError(f"{v} does not fit NUMERIC({col.precision},{scale})")
    return d


def _as_bool(_c: TargetColumn, v: Any, _r: ValueRules) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"not a boolean: {_show(v)}")


def _as_date(_c: TargetColumn, v: Any, r: ValueRules) -> date:
    if isinstance(v, datetime):
        return v.date()
    if isinstance(v, date):
        return v
    try:
        text = str(v).strip()
        if r.date_format:
            return datetime.strptime(text, r.date_format).date()
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date{_fmt(r.date_format)}: {_show(v)}") from None


def _as_datetime(col: TargetColumn, v: Any, r: ValueRules) -> datetime:
    if isinstance(v, datetime):
        dt = v
    else:
        try:
            text = str(v).strip()
            if r.datetime_format:
                dt = datetime.strptime(text, r.datetime_format)
            else:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a timestamp{_fmt(r.datetime_format)}: {_show(v)}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(r.timezone))
    if not col.timezone:  # a naive column holds UTC wall time
        return dt.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    return dt


def _as_time(_c: TargetColumn, v: Any, _r: ValueRules) -> time:
    if isinstance(v, time):
        return v
    try:
        return time.fromisoformat(str(v).strip())
    except ValueError:
        raise ValueError(f"not a time: {_show(v)}") from None


def _as_str(col: TargetColumn, v: Any, _r: ValueRules) -> str:
    text = v if isinstance(v, str) else _text_of(v)
    if col.length is not None and len(text) > col.length:
        raise ValueError(f"{len(text)} characters, the column takes at most {col.length}")
    return text


def _text_of(v: Any) -> str:
    if isinstance(v, (dict, list)):
        import json

        return json.dumps(v)
    return str(v)


def _as_json(_c: TargetColumn, v: Any, _r: ValueRules) -> Any:
    """A JSON column takes any JSON value; text is parsed (to be stored as it means)."""
    if isinstance(v, str):
        import json

        try:
            return json.loads(v)
        except ValueError:
            raise ValueError(f"not JSON: {_show(v)}") from None
    return v


def _json_text(v: Any) -> Any:
    import json

    return None if v is None else json.dumps(v)


def _as_is(_c: TargetColumn, v: Any, _r: ValueRules) -> Any:
    return v


_CONVERTERS: dict[str, Callable[[TargetColumn, Any, ValueRules], Any]] = {
    "int": _as_int,
    "float": _as_float,
    "decimal": _as_decimal,
    "bool": _as_bool,
    "date": _as_date,
    "datetime": _as_datetime,
    "time": _as_time,
    "str": _as_str,
    "json": _as_json,
}


def _fmt(f: str | None) -> str:
    return f" ({f})" if f else ""


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(t: sa.types.TypeEngine[Any]) -> str:
    checks: list[tuple[type, str]] = [
        (sa.Boolean, "bool"),
        (sa.Integer, "int"),
        (sa.Float, "float"),
        (sa.Numeric, "decimal"),
        (sa.DateTime, "datetime"),
        (sa.Date, "date"),
        (sa.Time, "time"),
        (sa.JSON, "json"),
        (sa.String, "str"),
    ]
    for cls, kind in checks:
        if isinstance(t, cls):
            return kind
    return "other"


def _column(c: dict[str, Any], dialect: sa.Dialect) -> TargetColumn:
    t = c["type"]
    kind = _kind(t)
    if kind == "float" and isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        kind = "decimal"
    if kind == "float" and getattr(t, "asdecimal", False) and getattr(t, "scale", None):
        kind = "decimal"
    name = (
        "BIGINT"
        if isinstance(t, sa.BigInteger)
        else "SMALLINT"
        if isinstance(t, sa.SmallInteger)
        else "INTEGER"
    )
    autoinc = c.get("autoincrement") is True or (c.get("default") or "").startswith("nextval")
    return TargetColumn(
        name=c["name"],
        kind=kind,
        type_name=name if kind == "int" else str(t.compile(dialect=dialect)),
        nullable=bool(c.get("nullable", True)),
        has_default=c.get("default") is not None or autoinc or bool(c.get("identity")),
        length=getattr(t, "length", None) if kind == "str" else None,
        precision=getattr(t, "precision", None) if kind == "decimal" else None,
        scale=getattr(t, "scale", None) if kind == "decimal" else None,
        timezone=bool(getattr(t, "timezone", False)) if kind == "datetime" else False,
        single=kind == "float" and _single_precision(t, dialect),
    )


def _single_precision(t: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> bool:
    """PostgreSQL REAL (FLOAT(1..24)) and MySQL/MariaDB FLOAT hold 4-byte floats; SQLite's
    REAL is a double."""
    if dialect.name == "postgresql":
        name = str(t.compile(dialect=dialect)).upper()
        return name in ("REAL", "FLOAT4") or bool(re.fullmatch(r"FLOAT\((1?[0-9]|2[0-4])\)", name))
    if dialect.name in ("mysql", "mariadb"):
        return type(t).__name__.upper() == "FLOAT"
    return False


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


class CopyRejected(Exception):
    """The target refused a COPY of staged rows; the publish was rolled back."""


@dataclass
class PublishTx:
    """A publish transaction in progress (`Target.open_publish`): rows go in through
    `conn`; `commit` records the count in the marker row and commits only while
    `still_mine()`; `rollback` (safe to call again) leaves the target as it was."""

    target: Target
    task_id: str
    conn: sa.Connection
    tx: sa.RootTransaction
    done: bool = False

    def commit(self, rows: int, still_mine: Callable[[], bool]) -> bool:
        """False: the lease was lost (rolled back)."""
        try:
            self.conn.execute(
                sa.text(
                    f"UPDATE {self.target.qualified(MARKER_TABLE)} SET row_count = :n "
                    "WHERE task_id = :t"
                ),
                {"t": self.task_id, "n": rows},
            )
            self.target.before_commit()
            if not still_mine():
                self.rollback()
                return False
            self.tx.commit()
        except BaseException:
            self.rollback()
            raise
        self.done = True
        self.conn.close()
        return True

    def rollback(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.tx.rollback()
        finally:
            self.conn.close()


@functools.lru_cache(maxsize=32)
def _reflected(engine: sa.Engine, table: str, task_id: str) -> Target:
    return Target.reflect(engine, table)  # (an error is not kept: the next call tries again)


@dataclass
class Target:
    """A target table: its columns, its key, and the statements that load into it."""

    engine: sa.Engine
    table_name: str
    schema: str | None
    columns: list[TargetColumn]
    primary_key: list[str]
    sa_types: dict[str, Any]
    unique: list[tuple[str, ...]] = field(default_factory=list)  # PK and UNIQUE sets

    def unique_key(self, preferred: str | None) -> tuple[str, ...]:
        """The key rows must not repeat: `preferred` (the dataset's key) when the table
        declares it unique, else the primary key (else none)."""
        if preferred and (preferred,) in self.unique:
            return (preferred,)
        return tuple(self.primary_key)

    @classmethod
    def reflect(cls, engine: sa.Engine, table: str) -> Target:
        schema, name = _split(table)
        try:
            insp = sa.inspect(engine)
            cols = insp.get_columns(name, schema=schema)
            pk = insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
            uniques = [
                tuple(u["column_names"]) for u in insp.get_unique_constraints(name, schema=schema)
            ]
        except sa_exc.NoSuchTableError:
            raise BadRequest(
                f"the target table {table!r} does not exist", "INVALID_TARGET"
            ) from None
        if not cols:
            raise BadRequest(f"the target table {table!r} does not exist", "INVALID_TARGET")
        return cls(
            engine, name, schema,
            [_column(dict(c), engine.dialect) for c in cols], list(pk),
            {c["name"]: c["type"] for c in cols}, [tuple(pk), *uniques] if pk else uniques,
        )  # fmt: skip

    @classmethod
    def reflect_for(cls, engine: sa.Engine, table: str, task_id: str) -> Target:
        """The table as one task sees it: reflected once per task in a process (a few
        catalog queries, 10-90 ms, on every partition, the plan and the publish otherwise;
        a task's partitions must check against one table anyway)."""
        return _reflected(engine, table, task_id)

    def column(self, name: str) -> TargetColumn | None:
        return next((c for c in self.columns if c.name == name), None)

    # ---- SQL text ------------------------------------------------------------------------

    def q(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote(name)

    def qualified(self, name: str | None = None) -> str:
        table = self.q(name or self.table_name)
        return f"{self.q(self.schema)}.{table}" if self.schema else table

    # ---- staging -------------------------------------------------------------------------

    def stage_name(self, task_id: str, index: int, token: str) -> str:
        return f"{STAGE_PREFIX}{task_id[:12]}_{index}_{token[:8]}".lower()

    def create_stage(self, name: str, columns: Sequence[str]) -> None:
        """A staging table with the target's types for `columns` (nullable: the rows were
        checked already) and the line each row came from."""
        md = sa.MetaData(schema=self.schema)
        cols = [sa.Column(c, self.sa_types[c], nullable=True) for c in columns]
        table = sa.Table(name, md, *cols, sa.Column(LINE_COLUMN, sa.BigInteger, nullable=False))
        with self.engine.begin() as conn:
            table.drop(conn, checkfirst=True)
            table.create(conn)

    def stage_table(self, name: str, columns: Sequence[str]) -> sa.Table:
        md = sa.MetaData(schema=self.schema)
        cols = [sa.Column(c, self.sa_types[c]) for c in columns]
        return sa.Table(name, md, *cols, sa.Column(LINE_COLUMN, sa.BigInteger))

    def load(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg":
            self._copy(table, rows)
            return
        with self.engine.begin() as conn:
            conn.execute(table.insert(), rows)

    def _copy(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL: the rows by COPY (many times faster than INSERTs)."""
        names = [c.name for c in table.columns]
        cols = ", ".join(self.q(n) for n in names)
        as_json = {n for n in names if (c := self.column(n)) is not None and c.kind == "json"}
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            with (
                raw.cursor() as cur,
                cur.copy(f"COPY {self.qualified(table.name)} ({cols}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row([_json_text(row.get(n)) if n in as_json else row.get(n)
                                    for n in names])  # fmt: skip

    @contextmanager
    def csv_copier(self, stage: str, columns: Sequence[str]) -> Iterator[Callable[[bytes], None]]:
        """PostgreSQL: a function that COPYs rows already in PostgreSQL's CSV (the fast
        path's, `columnar`) into `stage`, every call in one transaction committed when
        the block ends (one commit per partition, not one per batch)."""
        with self.engine.begin() as conn:

            def send(payload: bytes) -> None:
                if not payload:
                    return

                def chunks(write: Callable[[Any], None]) -> None:  # (memoryviews)
                    view = memoryview(payload)
                    for i in range(0, len(view), 1 << 20):
                        write(view[i : i + (1 << 20)])

                self._copy_csv(conn, self.qualified(stage), columns, chunks)

            yield send

    def index_stage(self, name: str, key: Sequence[str]) -> None:
        """The index `duplicates` probes (PostgreSQL numbers the rows instead: none)."""
        if not key or self.engine.dialect.name == "postgresql":
            return
        cols = ", ".join(self.q(k) for k in [*key, LINE_COLUMN])
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(f"CREATE INDEX {self.q(name + '_k')} ON {self.qualified(name)} ({cols})")
            )

    def stages_of(self, task_id: str) -> list[str]:
        prefix = f"{STAGE_PREFIX}{task_id[:12]}_".lower()
        names = sa.inspect(self.engine).get_table_names(schema=self.schema)
        return sorted(n for n in names if n.lower().startswith(prefix))

    def drop_stages(self, names: Iterable[str]) -> None:
        with self.engine.begin() as conn:
            for n in names:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {self.qualified(n)}"))

    # ---- checks across staging tables ----------------------------------------------------

    def duplicates(
        self, stages: Sequence[str], key: Sequence[str], mode: ImportMode
    ) -> list[tuple[int, str]]:
        """(line, reason) of the rows that repeat the key of an earlier row of the file,
        or (append) of a row already in the table."""
        if not key or not stages:
            return []
        same = " AND ".join(f"o.{self.q(k)} = s.{self.q(k)}" for k in key)
        line = self.q(LINE_COLUMN)
        found: dict[int, str] = {}
        numbered = self.engine.dialect.name == "postgresql"
        with self.engine.connect() as conn:
            if numbered:  # one sort of every staging table's keys, not a probe per pair
                # (in memory where it fits: the default 4 MB spills millions of keys)
                conn.execute(sa.text("SET LOCAL work_mem = '128MB'"))
                keys = ", ".join(self.q(k) for k in key)
                known = " AND ".join(f"{self.q(k)} IS NOT NULL" for k in key)
                union = " UNION ALL ".join(
                    f"SELECT {keys}, {line} FROM {self.qualified(s)} WHERE {known}" for s in stages
                )
                sql = (
                    f"SELECT {line} FROM (SELECT {line}, row_number() OVER (PARTITION BY "
                    f"{keys} ORDER BY {line}) AS n FROM ({union}) u) d WHERE n > 1"
                )
                for (n,) in conn.execute(sa.text(sql)):
                    found[int(n)] = f"duplicate key ({', '.join(key)}) in the file"
            for s in stages:
                for o in [] if numbered else stages:
                    sql = (
                        f"SELECT s.{line} FROM {self.qualified(s)} s WHERE EXISTS (SELECT 1 "
                        f"FROM {self.qualified(o)} o WHERE {same} AND o.{line} < s.{line})"
                    )
                    for (n,) in conn.execute(sa.text(sql)):
                        found.setdefault(int(n), f"duplicate key ({', '.join(key)}) in the file")
                if mode is ImportMode.APPEND:
                    sql = (
                        f"SELECT s.{line} FROM {self.qualified(s)} s WHERE EXISTS (SELECT 1 "
                        f"FROM {self.qualified()} o WHERE {same})"
                    )
                    for (n,) in conn.execute(sa.text(sql)):
                        found.setdefault(int(n), f"key ({', '.join(key)}) already in the table")
        return sorted(found.items())

    def delete_lines(self, stages: Sequence[str], lines: Sequence[int]) -> None:
        if not lines:
            return
        with self.engine.begin() as conn:
            for s in stages:
                t = sa.table(s, sa.column(LINE_COLUMN), schema=self.schema)
                for i in range(0, len(lines), 500):
                    conn.execute(sa.delete(t).where(t.c[LINE_COLUMN].in_(lines[i : i + 500])))

    # ---- the publish ---------------------------------------------------------------------

    def ensure_marker(self) -> None:
        md = sa.MetaData(schema=self.schema)
        marker = sa.Table(
            MARKER_TABLE, md,
            sa.Column("task_id", sa.String(64), primary_key=True),
            sa.Column("row_count", sa.BigInteger, nullable=False),
            sa.Column("published_at", sa.DateTime, nullable=False),
        )  # fmt: skip
        with self.engine.begin() as conn:
            marker.create(conn, checkfirst=True)

    def published(self, task_id: str) -> bool:
        with self.engine.connect() as conn:
            sql = f"SELECT 1 FROM {self.qualified(MARKER_TABLE)} WHERE task_id = :t"
            return conn.execute(sa.text(sql), {"t": task_id}).first() is not None

    def publish(
        self,
        task_id: str,
        stages: Sequence[str],
        columns: Sequence[str],
        mode: ImportMode,
        key: Sequence[str],
        rows: int,
        still_mine: Callable[[], bool],
    ) -> bool:
        """Every staging table into the target in one transaction, recorded in the marker
        table in the same transaction; `still_mine()` (the coordinator's lease) is asked
        just before the commit. False: already published, or the lease was lost (nothing
        changed)."""
        cols = ", ".join(self.q(c) for c in columns)

        def load(conn: sa.Connection) -> None:
            for s in stages:
                conn.execute(sa.text(self._insert_select(s, cols, columns, mode, key)))

        return self._publish_once(task_id, mode, rows, still_mine, load)

    def _publish_once(
        self,
        task_id: str,
        mode: ImportMode,
        rows: int,
        still_mine: Callable[[], bool],
        load: Callable[[sa.Connection], None],
        tx: PublishTx | None = None,
    ) -> bool:
        """One publish transaction (`tx`, one begun earlier, else begun here: the marker
        row, the old rows gone for `replace`), `load(conn)`, and the commit only while
        `still_mine()`. False: already published, or the lease was lost (rolled back);
        an error of `load` rolls back too."""
        tx = tx or self.open_publish(task_id, mode)
        if tx is None:
            return False
        try:
            load(tx.conn)
        except BaseException:
            tx.rollback()
            raise
        return tx.commit(rows, still_mine)

    def open_publish(self, task_id: str, mode: ImportMode) -> PublishTx | None:
        """The publish transaction begun: its marker row (its count set at the commit)
        and, for `replace`, the old rows deleted. None: already published (or another
        publish holds the marker: this waits for it to end first)."""
        conn = self.engine.connect()
        try:
            tx = conn.begin()
            if not self._mark(conn, task_id, 0):
                tx.rollback()
                conn.close()
                return None
            if mode is ImportMode.REPLACE:
                conn.execute(sa.text(f"DELETE FROM {self.qualified()}"))
        except BaseException:
            conn.close()
            raise
        return PublishTx(self, task_id, conn, tx)

    def copy_csv(
        self,
        conn: sa.Connection,
        columns: Sequence[str],
        send: Callable[[Callable[[bytes], None]], None],
    ) -> None:
        """PostgreSQL: one CSV COPY of `columns` into the target in `conn`'s transaction;
        `CopyRejected` when the target refuses a row (a key already in the table, a
        constraint the checks do not know): the transaction is to be rolled back."""
        import psycopg

        try:
            self._copy_csv(conn, self.qualified(), columns, send)
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            raise CopyRejected(str(exc).strip().splitlines()[0][:300]) from exc

    def _copy_csv(
        self,
        conn: sa.Connection,
        table: str,
        columns: Sequence[str],
        send: Callable[[Callable[[bytes], None]], None],
    ) -> None:
        """PostgreSQL: one CSV COPY of `columns` into `table` (qualified) in `conn`."""
        names = ", ".join(self.q(c) for c in columns)
        raw = conn.connection.driver_connection
        assert raw is not None
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT csv)") as copy,
        ):
            send(copy.write)

    def _mark(self, conn: sa.Connection, task_id: str, rows: int) -> bool:
        """The marker row of the publish, in its transaction (False: already there, the
        transaction to be rolled back)."""
        try:
            conn.execute(
                sa.text(
                    f"INSERT INTO {self.qualified(MARKER_TABLE)} (task_id, row_count, "
                    "published_at) VALUES (:t, :n, :at)"
                ),
                {"t": task_id, "n": rows, "at": datetime.now().replace(microsecond=0)},
            )
        except sa_exc.IntegrityError:
            return False
        return True

    def publish_files(
        self,
        task_id: str,
        columns: Sequence[str],
        feeds: Sequence[Callable[[Callable[[bytes], None]], None]],
        mode: ImportMode,
        rows: int,
        still_mine: Callable[[], bool],
        tx: PublishTx | None = None,
    ) -> bool:
        """PostgreSQL: rows staged as files (`execution/imports/staged.py`), each feed
        one COPY in CSV straight into the target, all in one transaction with the marker
        row, as `publish`; `tx`: a publish transaction begun earlier, which already holds
        the feeds before these (`execution/imports/streaming.py`). `CopyRejected`
        (everything rolled back): the target refused a row."""

        def load(conn: sa.Connection) -> None:
            for send in feeds:
                self.copy_csv(conn, columns, send)

        return self._publish_once(task_id, mode, rows, still_mine, load, tx)

    def stage_from_csv(
        self, name: str, columns: Sequence[str], send: Callable[[Callable[[bytes], None]], None]
    ) -> None:
        """PostgreSQL: a staging table (as `create_stage`) filled by one CSV COPY of
        `columns` and the line column, made in one transaction (it exists only whole)."""
        md = sa.MetaData(schema=self.schema)
        cols = [sa.Column(c, self.sa_types[c], nullable=True) for c in columns]
        table = sa.Table(name, md, *cols, sa.Column(LINE_COLUMN, sa.BigInteger, nullable=False))
        with self.engine.begin() as conn:
            table.drop(conn, checkfirst=True)
            table.create(conn)
            self._copy_csv(conn, self.qualified(name), [*columns, LINE_COLUMN], send)

    def before_commit(self) -> None:
        """A hook for fault-injection tests (see `debug_pause_in_publish`)."""

    def _insert_select(
        self, stage: str, cols: str, columns: Sequence[str], mode: ImportMode, key: Sequence[str]
    ) -> str:
        base = f"INSERT INTO {self.qualified()} ({cols}) SELECT {cols} FROM {self.qualified(stage)}"
        if mode is not ImportMode.UPSERT:
            return base
        rest = [c for c in columns if c not in key]
        dialect = self.engine.dialect.name
        if dialect in ("mysql", "mariadb"):
            sets = ", ".join(f"{self.q(c)} = VALUES({self.q(c)})" for c in rest or key)
            return f"{base} ON DUPLICATE KEY UPDATE {sets}"
        target = ", ".join(self.q(k) for k in key)
        if not rest:
            return f"{base} WHERE true ON CONFLICT ({target}) DO NOTHING"
        sets = ", ".join(f"{self.q(c)} = excluded.{self.q(c)}" for c in rest)
        return f"{base} WHERE true ON CONFLICT ({target}) DO UPDATE SET {sets}"


def full_mapping(
    target: Target, renames: dict[str, str], ignored: Sequence[str], constants: dict[str, Any],
    file_columns: Sequence[str], header: bool,
) -> dict[str, str]:  # fmt: skip
    """Table column -> file column: the renames, and every other table column from the
    file column of its name (by position without a header). Without known file columns
    (JSON: keys per record) every other table column is read from the key of its name."""
    taken = set(renames.values()) | set(ignored)
    out = dict(renames)
    names = [c.name for c in target.columns if c.name not in renames and c.name not in constants]
    if not file_columns:
        out.update({n: n for n in names if n not in taken})
        return out
    if not header:
        free = [f for f in file_columns if f not in taken]
        out.update(dict(zip(names, free, strict=False)))
        return out
    out.update({n: n for n in names if n in file_columns and n not in taken})
    return out
