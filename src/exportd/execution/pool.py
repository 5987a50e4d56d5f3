"""Workers: claim -> heartbeat -> run -> fenced commit, for partitions and coordinator work.

`WorkerPool` runs N worker threads in a process: inside `exportd serve` (embedded) or as
`exportd worker` processes on any host that shares the store and the storage."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from exportd.delivery.notify import NotificationPool
from exportd.errors import (
    StoreUnavailable,
)
from exportd.execution import coordinator
from exportd.execution.janitor import Janitor
from exportd.execution.partition import run_partition
from exportd.fastpaths.jsonl_csv import warm_up
from exportd.memory import release_memory
from exportd.runtime import Runtime

log = logging.getLogger(__name__)


class Worker:
    """One worker: does coordinator work first (it unblocks whole tasks), then partitions
    (claimed fairly across projects by the store)."""

    def __init__(self, rt: Runtime, name: str, janitor: Janitor) -> None:
        self.rt = rt
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.janitor = janitor

    def step(self) -> bool:
        """Do one unit of work if any is available; False when there was none."""
        store, lease_s = self.rt.store, self.rt.settings.lease_seconds
        self.janitor.maybe_run()
        claim = store.claim_coordinator(self.owner, lease_s)
        if claim is not None:
            coordinator.run(self.rt, *claim)
            release_memory()
            return True
        pclaim = store.claim_partition(self.owner, lease_s)
        if pclaim is not None:
            run_partition(self.rt, *pclaim)
            release_memory()
            return True
        return False

    def run(self, stop: threading.Event) -> None:
        """Work until stopped. Every store call of this thread (claims, commits, the
        coordinator's and the janitor's) rides out a store outage for up to
        `outage_budget_seconds`."""
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


class WorkerPool:
    """`count` export workers and, when there are any, the notification threads of the
    process (a process without workers does no background work at all)."""

    def __init__(self, rt: Runtime, count: int) -> None:
        self.rt = rt
        self.stop_event = threading.Event()
        self.notifications = NotificationPool(rt, rt.settings.notify_workers if count else 0)
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
        if self.threads:  # what pyarrow loads on its first compute call, while idle
            threading.Thread(target=warm_up, name="exportd-warm-up", daemon=True).start()
        for t in self.threads:
            t.start()
        self.notifications.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers and the notification threads, each finishing the unit of work
        in hand, all within `timeout` seconds."""
        self.stop_event.set()
        self.notifications.stop_event.set()
        self.rt.store.waker.notify_local()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.notifications.stop(deadline)
