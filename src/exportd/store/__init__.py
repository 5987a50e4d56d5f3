"""The store: the single source of truth for tasks, partitions, leases, files, the catalog
and the notification outbox (SQLite embedded, PostgreSQL distributed). All SQL of
exportd lives in this package; its callers use `Store` and the query types here.

Every status change is a guarded update (see `exportd.model.lifecycle`), every write by a
worker is fenced by its lease token, and a change commits together with the work it
enables. The parts, by concern: `tasks` (submit, read, list, cancel, delete),
`coordination` (the coordinator's lease and moves), `partitions` (claims, heartbeats,
fenced commits), `janitor` (expired leases and deadlines), `catalog` (projects, tokens,
datasets), `outbox` (notifications)."""

from __future__ import annotations

from exportd.store.base import utcnow
from exportd.store.catalog import CatalogStore, TokenInfo
from exportd.store.coordination import PlannedPartition
from exportd.store.engine import normalize_url
from exportd.store.imports import ImportStore
from exportd.store.janitor import JanitorStore
from exportd.store.partitions import HeartbeatReply
from exportd.store.rows import as_utc
from exportd.store.slots import SQLITE_COPY_PREFIX
from exportd.store.snapshots import SnapshotStore
from exportd.store.tasks import SORT_FIELDS, TaskQuery, sort_order


class Store(JanitorStore, SnapshotStore, CatalogStore, ImportStore):
    """Every operation on the store, by concern in the mixins above."""


__all__ = [
    "SORT_FIELDS",
    "SQLITE_COPY_PREFIX",
    "HeartbeatReply",
    "PlannedPartition",
    "Store",
    "TaskQuery",
    "TokenInfo",
    "as_utc",
    "normalize_url",
    "sort_order",
    "utcnow",
]
