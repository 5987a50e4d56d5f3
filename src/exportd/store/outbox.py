"""The notification outbox, read side: rows written by `events.enqueue_notifications` in
the same transaction as a task's terminal status are claimed by workers under a short
lease and delivered with retries; every attempt is appended to the row's log."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from exportd.model import Notification, NotificationStatus
from exportd.store.base import StoreBase, later, utcnow
from exportd.store.rows import record_from_row
from exportd.store.tables import notifications


def notification_from_row(row: Any) -> Notification:
    return record_from_row(Notification, row)


# the key of the transaction-level advisory lock that serialises notification claims
_CLAIM_LOCK = 0x6E6F7469  # "noti"


class OutboxStore(StoreBase):
    def task_notifications(self, conn: sa.Connection, task_id: str) -> list[Notification]:
        rows = conn.execute(
            sa.select(notifications)
            .where(notifications.c.task_id == task_id)
            .order_by(notifications.c.create_time, notifications.c.channel, notifications.c.target)
        ).all()
        return [notification_from_row(r._mapping) for r in rows]

    def claim_notification(
        self, lease_seconds: float, per_project: int
    ) -> tuple[Notification, str] | None:
        """Claim the notification that is due first among the projects that have fewer
        than `per_project` deliveries in flight; the token fences its attempt. Claims of
        notifications are serialised (an advisory lock on PostgreSQL, `BEGIN IMMEDIATE`
        on SQLite), so the limit holds across all worker processes."""
        now = utcnow()
        n = notifications.c
        due = sa.and_(
            n.status == NotificationStatus.PENDING.value,
            n.next_attempt_at <= now,
            sa.or_(n.lease_expires_at.is_(None), n.lease_expires_at < now),
        )
        with self.read() as conn:  # most of the time nothing is due: no write lock then
            if conn.execute(sa.select(n.notification_id).where(due).limit(1)).first() is None:
                return None
        busy = (
            sa.select(n.project_id)
            .where(n.status == NotificationStatus.PENDING.value, n.lease_expires_at >= now)
            .group_by(n.project_id)
            .having(sa.func.count() >= per_project)
        )
        stmt = (
            sa.select(n.notification_id)
            .where(due, n.project_id.not_in(busy.scalar_subquery()))
            .order_by(n.next_attempt_at)
            .limit(1)
        )
        with self.write() as conn:
            if self.is_postgres:
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CLAIM_LOCK)))
            nid = conn.execute(stmt).scalar()
            if nid is None:
                return None
            token = uuid.uuid4().hex
            conn.execute(
                sa.update(notifications)
                .where(n.notification_id == nid, due)
                .values(lease_token=token, lease_expires_at=later(lease_seconds, now))
            )
            row = conn.execute(sa.select(notifications).where(n.notification_id == nid)).one()
        return notification_from_row(row._mapping), token

    def record_attempt(
        self,
        notification_id: str,
        token: str,
        attempt: dict[str, Any],
        payload: dict[str, Any],
        retry_in: float | None,
    ) -> bool:
        """Append an attempt to the log and decide: DELIVERED, PENDING again after
        `retry_in` seconds, or FAILED for good (when `retry_in` is None and it failed)."""
        now = utcnow()
        delivered = bool(attempt["ok"])
        if delivered:
            status = NotificationStatus.DELIVERED
        else:
            status = (
                NotificationStatus.PENDING if retry_in is not None else NotificationStatus.FAILED
            )
        with self.write() as conn:
            row = conn.execute(
                sa.select(notifications.c.attempt_log, notifications.c.payload).where(
                    notifications.c.notification_id == notification_id,
                    notifications.c.lease_token == token,
                )
            ).first()
            if row is None:
                return False
            conn.execute(
                sa.update(notifications)
                .where(notifications.c.notification_id == notification_id)
                .values(
                    status=status.value,
                    attempts=notifications.c.attempts + 1,
                    attempt_log=[*(row.attempt_log or []), attempt],
                    payload=row.payload or payload,
                    last_error=None if delivered else attempt.get("error"),
                    next_attempt_at=later(retry_in or 0.0, now)
                    if status is NotificationStatus.PENDING
                    else None,
                    delivered_time=now if delivered else None,
                    lease_token=None,
                    lease_expires_at=None,
                    update_time=now,
                )
            )
            if status is NotificationStatus.PENDING:
                self._notify(conn)
        return True
