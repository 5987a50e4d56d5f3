"""The janitor: reclaims expired leases, times tasks out, deletes expired files and aborts
abandoned multipart uploads; run by the workers every few seconds."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from exportd import metrics
from exportd.execution.sweeper import Sweeper
from exportd.runtime import Runtime
from exportd.store import utcnow

log = logging.getLogger(__name__)


class Janitor:
    """Reclaims expired leases, times tasks out, deletes expired files and, now and
    then, sweeps the storage for orphans (`exportd.execution.sweeper`); run by the workers every
    few seconds."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._next = 0.0
        self._next_sweep = 0.0
        self._lock = threading.Lock()
        self.sweeper = Sweeper(rt)

    def maybe_run(self) -> None:
        now = time.monotonic()
        if now < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            self._next = now + self.rt.settings.janitor_seconds
            s = self.rt.settings
            done = self.rt.store.reap(s.max_lost, grace=s.lease_seconds)
            metrics.reaped(done.get("reclaimed", 0), done.get("lease_failed", 0))
            done["files_expired"] = self.expire_files()
            done["tasks_retired"] = self.retire_tasks()
            if now >= self._next_sweep:  # lists the whole storage: now and then
                self._next_sweep = now + self.rt.settings.sweep_seconds
                done.update(self.sweeper.sweep())
            if any(done.values()):
                log.info("janitor: %s", done)
        finally:
            self._lock.release()

    def retire_tasks(self) -> int:
        """Retention (`retention_days`): delete finished tasks that ended long ago."""
        days = self.rt.settings.retention_days
        if days is None:
            return 0
        cutoff = utcnow() - timedelta(days=days)
        return len(self.rt.store.delete_finished_before(cutoff, self.rt.settings.retention_batch))

    def expire_files(self) -> int:
        """Delete the files whose `expires_in` has passed, then mark them DELETED (in this
        order: a crash in between leaves them to be deleted again, never orphaned)."""
        expired = self.rt.store.expired_files(self.rt.settings.expiry_batch)
        for task_id, keys in expired:
            for key in keys:
                self.rt.storage.delete(key)
            self.rt.store.mark_files_deleted(task_id)
        return len(expired)
