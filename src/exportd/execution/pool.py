"""Workers: claim -> heartbeat -> run -> fenced commit, for partitions and coordinator work.

`WorkerPool` runs N worker threads in a process: inside `exportd serve` (embedded) or as
`exportd worker` processes on any host that shares the store and the storage."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

from exportd import metrics
from exportd.delivery.notify import NotificationPool
from exportd.errors import (
    StoreUnavailable,
)
from exportd.execution import coordinator
from exportd.execution.imports import streaming
from exportd.execution.janitor import Janitor
from exportd.execution.partition import run_partition
from exportd.execution.shutdown import Shutdown
from exportd.fastpaths.jsonl_csv import warm_up
from exportd.memory import release_memory
from exportd.runtime import Runtime

log = logging.getLogger(__name__)


class Worker:
    """One worker: does coordinator work first (it unblocks whole tasks), then partitions
    (claimed fairly across projects by the store)."""

    def __init__(
        self, rt: Runtime, name: str, janitor: Janitor, shutdown: Shutdown | None = None
    ) -> None:
        self.rt = rt
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.name = name
        self.janitor = janitor
        self.shutdown = shutdown or Shutdown()  # a pool's, or a lone worker's own

    def step(self) -> bool:
        """Do one unit of work if any is available; False when there was none. Each unit
        runs holding its lease's hand-back, for a shutdown whose grace runs out."""
        store, lease_s = self.rt.store, self.rt.settings.lease_seconds
        self.janitor.maybe_run()
        started = time.monotonic()
        claim = store.claim_coordinator(self.owner, lease_s)
        metrics.claimed("coordinator", time.monotonic() - started, claim is not None)
        if claim is not None:
            task, lease = claim
            with self.shutdown.holding(
                lambda: store.release_coordinator(task.task_id, lease.token, due=True)
            ):
                coordinator.run(self.rt, task, lease)
            release_memory()
            return True
        started = time.monotonic()
        pclaim = store.claim_partition(self.owner, lease_s)
        metrics.claimed("partition", time.monotonic() - started, pclaim is not None)
        if pclaim is not None:
            ptask, part, p_lease = pclaim
            with self.shutdown.holding(
                lambda: store.release_partition(ptask.task_id, part.index, p_lease.token)
            ):
                run_partition(self.rt, ptask, part, p_lease)
            release_memory()
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        """Work until stopped. Every store call of this thread (claims, commits, the
        coordinator's and the janitor's) rides out a store outage for up to
        `outage_budget_seconds`."""
        metrics.set_worker(self.name)
        with self.rt.store.riding_out(self.rt.settings.outage_budget_seconds):
            while not stop.is_set():
                try:
                    if not self.step():
                        self.rt.store.waker.wait(self.rt.settings.poll_seconds)
                except StoreUnavailable:
                    log.warning("worker %s: the store stayed unreachable", self.owner)
                    stop.wait(1.0)
                except Exception:  # a worker never dies of one bad unit of work
                    log.exception("worker %s: step failed", self.owner)
                    stop.wait(1.0)


DEADLINE_IDLE_SECONDS = 5.0


def keep_deadlines(rt: Runtime, stop: threading.Event) -> None:
    """Time out late tasks at their deadline whatever the workers are doing (they may all
    be inside long partitions: a partition of a timed-out task stops at its next
    heartbeat). The thread sleeps until the earliest deadline of an active task, or until
    new work wakes it (a newly planned task may have an earlier one), at most
    DEADLINE_IDLE_SECONDS; errors (a store outage) wait a second."""
    while not stop.is_set():
        try:
            rt.store.time_out_late()
            due = rt.store.next_deadline()
        except Exception as exc:
            log.warning("deadline sweep failed: %s", type(exc).__name__)
            stop.wait(1.0)
            continue
        wait = DEADLINE_IDLE_SECONDS
        if due is not None:
            wait = min(wait, max((due - datetime.now(UTC)).total_seconds() + 0.005, 0.01))
        rt.store.waker.wait(wait)


class WorkerPool:
    """`count` export workers and, when there are any, the notification threads of the
    process (a process without workers does no background work at all)."""

    def __init__(self, rt: Runtime, count: int) -> None:
        self.rt = rt
        self.shutdown = Shutdown()
        self.stop_event = self.shutdown.draining
        self.notifications = NotificationPool(rt, rt.settings.notify_workers if count else 0)
        janitor = Janitor(rt)
        self.threads = [
            threading.Thread(
                target=Worker(rt, f"w{i}", janitor, self.shutdown).run,
                args=(self.stop_event,),
                name=f"exportd-worker-{i}",
                daemon=True,
            )
            for i in range(count)
        ]

    def start(self) -> None:
        if self.threads:  # what pyarrow loads on its first compute call, while idle
            threading.Thread(target=warm_up, name="exportd-warm-up", daemon=True).start()
            threading.Thread(
                target=keep_deadlines, args=(self.rt, self.stop_event),
                name="exportd-deadlines", daemon=True,
            ).start()  # fmt: skip
        for t in self.threads:
            t.start()
        self.notifications.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming at once; let the units of work in hand finish and commit within
        `grace` seconds (default: `shutdown_grace_seconds`), then hand their leases back to
        the store (PENDING again at once, no attempt counted) and return: the threads
        still busy are daemons, and whatever they do after is fenced out."""
        grace = self.rt.settings.shutdown_grace_seconds if grace is None else grace
        self.stop_event.set()
        self.notifications.stop_event.set()
        self.rt.store.waker.notify_local()
        deadline = time.monotonic() + grace
        streaming.stop_all(self.rt, grace)  # an import's publish hands its lease back now
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = sum(t.is_alive() for t in self.threads)
        if busy:
            handed = self.shutdown.abandon()
            metrics.handed_back(handed)
            log.warning("shutdown grace over: %d unit(s) of work handed back", handed)
            for t in self.threads:  # a unit that notices its lost lease unwinds quickly
                t.join(max(0.0, min(1.0, deadline + 1.0 - time.monotonic())))
        self.notifications.stop(max(deadline, time.monotonic() + 0.5))
