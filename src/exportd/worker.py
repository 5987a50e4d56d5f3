"""Workers: claim -> heartbeat -> run -> fenced commit, for partitions and coordinator work.

`WorkerPool` runs N worker threads in a process: inside `exportd serve` (embedded) or as
`exportd worker` processes on any host that shares the store and the storage."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from typing import Any, BinaryIO

from exportd import coordinator
from exportd.domain import Lease, Partition, Task, TaskStatus
from exportd.errors import Canceled, LeaseLost, NotFound, SourceError
from exportd.heartbeat import Heartbeat
from exportd.notify import Notifier
from exportd.runtime import Runtime, selection_for
from exportd.transitions import retry_decision

log = logging.getLogger(__name__)


class HashingWriter:
    """A binary sink that counts and hashes what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0
        self._sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        b = bytes(data) if not isinstance(data, bytes) else data
        self._sha.update(b)
        self.count += len(b)
        self._raw.write(b)
        return len(b)

    def flush(self) -> None:
        self._raw.flush()

    # enough of the io protocol for io.TextIOWrapper
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def part_key(task: Task, part: Partition, lease: Lease, extension: str) -> str:
    return f"parts/{task.task_id}/{part.index:05d}-a{lease.attempt}-{lease.token[:12]}{extension}"


def run_partition(rt: Runtime, task: Task, part: Partition, lease: Lease) -> None:
    """Export one partition into its own part, then commit it, fenced by the lease token."""
    s = rt.settings
    store = rt.store
    try:
        dataset = store.get_dataset(task.project_id, task.dataset_id)
        source = rt.source(dataset)
        fmt = rt.format(task)
        sel = selection_for(task, dataset)
    except NotFound as exc:
        store.fail_partition(
            task.task_id, part.index, lease.token, exc.error_code, exc.error_msg, None
        )
        return
    key = part_key(task, part, lease, fmt.extension)

    def beat(rows: int, written: int) -> TaskStatus | None:
        reply = store.heartbeat(
            task.task_id, part.index, lease.token, s.lease_seconds, rows, written
        )
        return None if reply is None else reply.task_status

    committed = False
    try:
        with Heartbeat(beat, s.heartbeat_interval, TaskStatus.RUNNING) as hb:
            with rt.storage.open_write(key) as raw:
                out = HashingWriter(raw)
                writer = fmt.part_writer(out, task.columns)  # type: ignore[arg-type]
                rows = 0
                for batch in source.read(sel, part.bounds, s.batch_size):
                    hb.check()
                    writer.write(batch)
                    rows += len(batch)
                    hb.progress(rows, out.count)
                writer.close()
            if s.debug_pause_before_commit:
                time.sleep(s.debug_pause_before_commit)
            hb.check()
            committed = store.commit_partition(
                task.task_id, part.index, lease.token, key, rows, out.count, out.hexdigest()
            )
            if not committed:
                log.warning("partition %s/%d: lease lost before commit", task.task_id, part.index)
    except LeaseLost:
        log.warning("partition %s/%d: lease lost; attempt abandoned", task.task_id, part.index)
    except Canceled:
        store.cancel_partition(task.task_id, part.index, lease.token)
    except Exception as exc:  # every failure ends in a decision: retry or fail for good
        code = getattr(exc, "error_code", "PARTITION_ERROR")
        msg = exc.error_msg if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"
        decision = retry_decision(lease.attempt, s.max_attempts, s.retry_base_seconds)
        log.warning(
            "partition %s/%d attempt %d failed: %s", task.task_id, part.index, lease.attempt, msg
        )
        store.fail_partition(
            task.task_id, part.index, lease.token, code, msg[:2000],
            decision.delay_seconds if decision.retry else None,
        )  # fmt: skip
    finally:
        if not committed:
            rt.storage.delete(key)


class Worker:
    """One worker: does coordinator work first (it unblocks whole tasks), then partitions."""

    def __init__(self, rt: Runtime, name: str, janitor: Janitor) -> None:
        self.rt = rt
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.janitor = janitor
        self.notifier = Notifier(rt)

    def step(self) -> bool:
        """Do one unit of work if any is available; False when there was none."""
        store, lease_s = self.rt.store, self.rt.settings.lease_seconds
        self.janitor.maybe_run()
        claim = store.claim_coordinator(self.owner, lease_s)
        if claim is not None:
            coordinator.run(self.rt, *claim)
            return True
        if self.notifier.deliver_next():  # quick, and people are waiting for it
            return True
        pclaim = store.claim_partition(self.owner, lease_s)
        if pclaim is not None:
            run_partition(self.rt, *pclaim)
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.step():
                    self.rt.store.waker.wait(self.rt.settings.poll_seconds)
            except Exception:  # a worker never dies of one bad unit of work or a store blip
                log.exception("worker %s: step failed", self.owner)
                stop.wait(1.0)


class Janitor:
    """Reclaims expired leases, times tasks out, deletes expired files and aborts
    abandoned multipart uploads; run by the workers every few seconds."""

    UPLOADS_EVERY = 300.0  # listing the open uploads is an S3 request: now and then

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._next = 0.0
        self._next_uploads = 0.0
        self._lock = threading.Lock()

    def maybe_run(self) -> None:
        now = time.monotonic()
        if now < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            self._next = now + self.rt.settings.janitor_seconds
            done = self.rt.store.reap(self.rt.settings.max_attempts)
            done["files_expired"] = self.expire_files()
            if now >= self._next_uploads:
                self._next_uploads = now + self.UPLOADS_EVERY
                done["uploads_aborted"] = self.rt.storage.abort_uploads(
                    older_than=self.rt.settings.abort_uploads_after
                )
            if any(done.values()):
                log.info("janitor: %s", done)
        finally:
            self._lock.release()

    def expire_files(self) -> int:
        """Delete the files whose `expires_in` has passed, then mark them DELETED (in this
        order: a crash in between leaves them to be deleted again, never orphaned)."""
        expired = self.rt.store.expired_files(self.rt.settings.expiry_batch)
        for task_id, keys in expired:
            for key in keys:
                self.rt.storage.delete(key)
            self.rt.store.mark_files_deleted(task_id)
        return len(expired)


class WorkerPool:
    def __init__(self, rt: Runtime, count: int) -> None:
        self.rt = rt
        self.stop_event = threading.Event()
        janitor = Janitor(rt)
        self.threads = [
            threading.Thread(
                target=Worker(rt, f"w{i}", janitor).run,
                args=(self.stop_event,),
                name=f"exportd-worker-{i}",
                daemon=True,
            )
            for i in range(count)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.rt.store.waker.notify_local()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
