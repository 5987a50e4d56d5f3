"""The notification outbox, read side: rows written by `events.enqueue_notifications` in
the same transaction as a task's terminal status are claimed by workers under a short
lease and delivered with retries; every attempt is appended to the row's log."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from exportd.domain import Notification, NotificationStatus
from exportd.store.base import StoreBase, later, utcnow
from exportd.store.rows import record_from_row
from exportd.store.tables import notifications


def notification_from_row(row: Any) -> Notification:
    return record_from_row(Notification, row)


class OutboxStore(StoreBase):
    def task_notifications(self, conn: sa.Connection, task_id: str) -> list[Notification]:
        rows = conn.execute(
            sa.select(notifications)
            .where(notifications.c.task_id == task_id)
            .order_by(notifications.c.create_time, notifications.c.channel, notifications.c.target)
        ).all()
        return [notification_from_row(r._mapping) for r in rows]

    def claim_notification(self, lease_seconds: float) -> tuple[Notification, str] | None:
        """Claim the notification that is due first; the token fences its attempt."""
        now = utcnow()
        due = sa.and_(
            notifications.c.status == NotificationStatus.PENDING.value,
            notifications.c.next_attempt_at <= now,
            sa.or_(
                notifications.c.lease_expires_at.is_(None),
                notifications.c.lease_expires_at < now,
            ),
        )
        stmt = (
            sa.select(notifications.c.notification_id)
            .where(due)
            .order_by(notifications.c.next_attempt_at)
            .limit(1)
        )
        with self.read() as conn:  # most of the time nothing is due: no write lock then
            if conn.execute(stmt).first() is None:
                return None
        with self.write() as conn:
            nid = conn.execute(self._skip_locked(stmt)).scalar()
            if nid is None:
                return None
            token = uuid.uuid4().hex
            conn.execute(
                sa.update(notifications)
                .where(notifications.c.notification_id == nid, due)
                .values(lease_token=token, lease_expires_at=later(lease_seconds, now))
            )
            row = conn.execute(
                sa.select(notifications).where(notifications.c.notification_id == nid)
            ).one()
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
