"""What only imports write: the rejected rows a finishing coordinator found, fenced by
its lease token."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exportd.store.base import StoreBase, utcnow
from exportd.store.tables import tasks


class ImportStore(StoreBase):
    def set_failed_items(self, task_id: str, token: str, items: list[dict[str, Any]]) -> bool:
        """An import's rejected rows (the first ones, in file order), written by the
        coordinator that holds the task's lease (False: it no longer does)."""
        with self.write() as conn:
            n = conn.execute(
                sa.update(tasks)
                .where(tasks.c.task_id == task_id, tasks.c.coord_token == token)
                .values(failed_items=items, update_time=utcnow(), version=tasks.c.version + 1)
            ).rowcount
        return n == 1
