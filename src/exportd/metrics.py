"""What a process counts for Prometheus (`prometheus_client`'s default registry): claims
and their latency, leases lost and reclaimed, rows and bytes committed, commits fenced
out, notification failures; every series labelled by `process` (host:pid) and, where a
worker thread did it, `worker` (its name in the process). No series carries a project,
a task or a dataset: a scrape reveals nothing of any tenant.

The store's figures (tasks by status, partitions queued and running) are read at scrape
time by the API (`exportd.api.metrics`), not kept here: they are the whole service's,
not one process's. A worker process serves these on its own port (`--metrics-port`)."""

from __future__ import annotations

import os
import socket
import threading

from prometheus_client import Counter, Histogram, start_http_server

PROCESS = f"{socket.gethostname()}:{os.getpid()}"

CLAIMS = Counter(
    "exportd_claims",
    "units of work claimed, by kind (partition or coordinator)",
    ["process", "worker", "kind"],
)
CLAIM_SECONDS = Histogram(
    "exportd_claim_seconds",
    "time one claim call took in the store, whether it found work or not",
    ["process", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PARTITIONS_DONE = Counter(
    "exportd_partitions_committed",
    "partition passes committed (fenced by their lease)",
    ["process", "worker"],
)
ROWS = Counter("exportd_rows_written", "rows in committed parts", ["process", "worker"])
BYTES = Counter("exportd_bytes_written", "bytes of committed parts", ["process", "worker"])
FENCED = Counter(
    "exportd_commits_fenced",
    "commits refused because the lease was no longer this worker's (a late worker)",
    ["process", "worker"],
)
LEASES_LOST = Counter(
    "exportd_leases_lost",
    "units of work abandoned by this process because their lease was lost",
    ["process", "worker", "kind"],
)
RECLAIMED = Counter(
    "exportd_leases_reclaimed",
    "expired partition leases the janitor of this process gave back to the queue "
    "(outcome=reclaimed) or failed for good (outcome=failed, after max_lost)",
    ["process", "outcome"],
)
HANDED_BACK = Counter("exportd_leases_handed_back", "leases handed back at a shutdown", ["process"])
NOTIFY_FAILURES = Counter(
    "exportd_notification_failures",
    "failed notification attempts, by channel (webhook or email)",
    ["process", "channel"],
)

_worker = threading.local()


def set_worker(name: str) -> None:
    """Name the calling thread's worker for the series it adds to."""
    _worker.name = name


def worker_name() -> str:
    return getattr(_worker, "name", "-")


def committed(rows: int, nbytes: int) -> None:
    w = worker_name()
    PARTITIONS_DONE.labels(PROCESS, w).inc()
    ROWS.labels(PROCESS, w).inc(rows)
    BYTES.labels(PROCESS, w).inc(nbytes)


def fenced() -> None:
    FENCED.labels(PROCESS, worker_name()).inc()


def lease_lost(kind: str) -> None:
    LEASES_LOST.labels(PROCESS, worker_name(), kind).inc()


def claimed(kind: str, seconds: float, found: bool) -> None:
    CLAIM_SECONDS.labels(PROCESS, kind).observe(seconds)
    if found:
        CLAIMS.labels(PROCESS, worker_name(), kind).inc()


def reaped(reclaimed: int, failed: int) -> None:
    if reclaimed:
        RECLAIMED.labels(PROCESS, "reclaimed").inc(reclaimed)
    if failed:
        RECLAIMED.labels(PROCESS, "failed").inc(failed)


def handed_back(n: int) -> None:
    if n:
        HANDED_BACK.labels(PROCESS).inc(n)


def notification_failed(channel: str) -> None:
    NOTIFY_FAILURES.labels(PROCESS, channel).inc()


def serve(port: int, addr: str) -> int:
    """Serve this process's metrics over HTTP (`/metrics`) on `addr:port`, in a daemon
    thread of prometheus_client's own; returns the port (0 picks a free one)."""
    server, _thread = start_http_server(port, addr=addr)
    return int(server.server_address[1])
