"""Outbox rows written in the same transaction as a task's terminal status, so a status
change is never without its notifications, nor the other way round."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from exportd.model import Channel, NotificationStatus, TaskStatus
from exportd.model.plan import ExportPlan
from exportd.store.tables import notifications, tasks


def event_name(status: TaskStatus) -> str:
    return f"export.{status.value.lower()}"


def enqueue_notifications(
    conn: sa.Connection, task_id: str, status: TaskStatus, now: datetime
) -> int:
    """Write the notifications of a task that just reached `status` (terminal): to the
    webhook and the email addresses resolved into its plan at submission."""
    row = conn.execute(
        sa.select(tasks.c.project_id, tasks.c.plan).where(tasks.c.task_id == task_id)
    ).one()
    targets = ExportPlan.from_json(row.plan).notify
    channels = [(Channel.WEBHOOK, targets.webhook_url)] if targets.webhook_url else []
    channels += [(Channel.EMAIL, addr) for addr in targets.emails]
    if channels:
        conn.execute(
            notifications.insert(),
            [_new_row(task_id, row.project_id, ch, target, status, now) for ch, target in channels],
        )
    return len(channels)


def _new_row(
    task_id: str, project_id: str, channel: Channel, target: str, status: TaskStatus, now: datetime
) -> dict[str, Any]:
    return {
        "notification_id": "msg_" + uuid.uuid4().hex,
        "task_id": task_id,
        "project_id": project_id,
        "channel": channel.value,
        "target": target,
        "event": event_name(status),
        "status": NotificationStatus.PENDING.value,
        "attempts": 0,
        "payload": None,
        "attempt_log": [],
        "last_error": None,
        "next_attempt_at": now,
        "lease_token": None,
        "lease_expires_at": None,
        "create_time": now,
        "update_time": now,
        "delivered_time": None,
    }
