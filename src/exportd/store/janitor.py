"""The janitor's queries: expired leases reclaimed (or failed when out of attempts), tasks
past their deadline timed out, coordinators whose lease expired made due again."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from exportd.model import (
    FileStatus,
    PartitionStatus,
    Stage,
    TaskStatus,
)
from exportd.store.base import (
    later,
    utcnow,
)
from exportd.store.partitions import PartitionStore
from exportd.store.tables import files, notifications, partitions, tasks

RETENTION_CHUNK = 100  # tasks deleted per transaction by the retention


class JanitorStore(PartitionStore):
    # ---- the janitor ----------------------------------------------------------------------

    def reap(self, max_lost: int = 5, grace: float = 0.0) -> dict[str, int]:
        """Reclaim leases whose worker is gone; tasks past their deadline end TIMEOUT.
        Returns what was done, by kind.

        An expired lease is first only marked (`lapsed_at`); it is reclaimed when it is
        still expired `grace` seconds (a lease) after a janitor first saw it so: a
        worker that is alive but could not renew while the store was down renews it in
        that time. A reclaimed partition goes back to PENDING with its attempt given
        back (a lost worker is not a failed try) and one more `lost_count`; after
        `max_lost` losses it FAILs. Coordinator leases are marked the same way (taken
        over by `claim_coordinator`)."""
        now = utcnow()
        done = {"reclaimed": 0, "lease_failed": 0, "timed_out": 0}
        with self.write() as conn:
            self._mark_lapsed(conn, now)
            lapsed = sa.and_(
                partitions.c.status == PartitionStatus.RUNNING.value,
                partitions.c.lease_expires_at < now,
                partitions.c.lapsed_at > partitions.c.lease_expires_at,
                partitions.c.lapsed_at <= later(-grace, now),
            )
            expired = conn.execute(
                sa.select(
                    partitions.c.task_id, partitions.c.idx, partitions.c.attempts,
                    partitions.c.lost_count,
                ).where(lapsed)
            ).all()  # fmt: skip
            for task_id, idx, attempts, lost_before in expired:
                lost = lost_before + 1
                if lost <= max_lost:
                    if self._move_partition(
                        conn, task_id, idx, PartitionStatus.PENDING, now, lapsed,
                        stage=Stage.NOT_STARTED.value, lease_token=None, lease_expires_at=None,
                        attempts=max(attempts - 1, 0), lost_count=lost, error_code="LEASE_EXPIRED",
                        error_msg=f"its worker was lost (lease expired); lost {lost} of at "
                        f"most {max_lost} times",
                    ):  # fmt: skip
                        done["reclaimed"] += 1
                elif self._move_partition(
                    conn, task_id, idx, PartitionStatus.FAILED, now, lapsed,
                    lease_token=None, lease_expires_at=None, end_time=now, lost_count=lost,
                    error_code="LEASE_EXPIRED",
                    error_msg=f"gave up: its workers were lost {lost} times (EXPORTD_MAX_LOST)",
                ):  # fmt: skip
                    done["lease_failed"] += 1
                    self._after_partition_stop(conn, task_id, now)
            done["timed_out"] = self._time_out_late(conn, now)
            if any(done.values()):
                self._notify(conn)
        return done

    def _mark_lapsed(self, conn: sa.Connection, now: datetime) -> None:
        """Note when a lease was first seen expired (a mark older than the lease's current
        expiry is stale: the lease was renewed or taken again since)."""
        p, t = partitions.c, tasks.c
        conn.execute(
            sa.update(partitions)
            .where(
                p.status == PartitionStatus.RUNNING.value,
                p.lease_expires_at < now,
                sa.or_(p.lapsed_at.is_(None), p.lapsed_at <= p.lease_expires_at),
            )
            .values(lapsed_at=now)
        )
        conn.execute(
            sa.update(tasks)
            .where(
                t.coordinator_due.is_(True),  # a held coordinator lease is due work
                t.coord_token.is_not(None),
                t.coord_expires_at < now,
                sa.or_(t.coord_lapsed_at.is_(None), t.coord_lapsed_at <= t.coord_expires_at),
            )
            .values(coord_lapsed_at=now)
        )

    def expired_coordinator_tasks(self) -> int:
        with self.read() as conn:
            n = conn.execute(
                sa.select(sa.func.count())
                .select_from(tasks)
                .where(tasks.c.coord_token.is_not(None), tasks.c.coord_expires_at < utcnow())
            ).scalar()
        return int(n or 0)

    # ---- operations: figures at scrape time, retention ------------------------------------

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Tasks by status and the partitions not yet stopped by status (PENDING, RUNNING,
        WAITING), the whole service's (no project), for the metrics: one grouped query
        each, over the status indexes. Stopped partitions are not counted: they are most
        of the table, and their count would cost a pass over its index at every scrape."""
        active = [s.value for s in PartitionStatus if not s.is_terminal]
        with self.read() as conn:
            by_task = conn.execute(
                sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status)
            ).all()
            by_part = conn.execute(
                sa.select(partitions.c.status, sa.func.count())
                .where(partitions.c.status.in_(active))
                .group_by(partitions.c.status)
            ).all()
        return {
            "tasks": {str(s): int(n) for s, n in by_task},
            "partitions": {str(s): int(n) for s, n in by_part},
        }

    def delete_finished_before(self, cutoff: datetime, limit: int) -> list[str]:
        """Retention: delete up to `limit` tasks (with their partitions, files records and
        notifications) that ended before `cutoff`, are terminal, have no files left in
        the storage (not GENERATED) and no cleanup still due; oldest first. Returns their
        ids. A transaction deletes 100 tasks at most (no long lock on the tables)."""
        terminal = [s.value for s in TaskStatus if s.is_terminal]
        finished = sa.and_(
            tasks.c.end_time < cutoff,
            tasks.c.status.in_(terminal),
            tasks.c.file_status != FileStatus.GENERATED.value,
            tasks.c.coordinator_due.is_(False),
        )
        with self.read() as conn:
            ids = list(
                conn.execute(
                    sa.select(tasks.c.task_id)
                    .where(finished)
                    .order_by(tasks.c.end_time)
                    .limit(limit)
                ).scalars()
            )
        gone: list[str] = []
        for start in range(0, len(ids), RETENTION_CHUNK):
            chunk = ids[start : start + RETENTION_CHUNK]
            with self.write() as conn:
                still = list(
                    conn.execute(
                        sa.select(tasks.c.task_id)
                        .where(tasks.c.task_id.in_(chunk), finished)
                        .with_for_update()
                    ).scalars()
                )  # locked: no move in between (and a terminal task hardly moves)
                if not still:
                    continue
                for child in (notifications, files, partitions):
                    conn.execute(child.delete().where(child.c.task_id.in_(still)))
                conn.execute(tasks.delete().where(tasks.c.task_id.in_(still)))
                gone.extend(still)
        return gone
