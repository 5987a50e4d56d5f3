"""The store's capacity (issue 17), not a test: `python -m bench.store_capacity`.

1. Claims: how many partition claims (each followed by its fenced commit of an empty
   part, as a worker does) one PostgreSQL store sustains, with 100,000 queued partitions
   (100 RUNNING tasks x 1,000) and 1 to 32 simulated workers (processes x threads, each
   with its own connection pool, all through `exportd.store.Store`); and heartbeats
   (lease renewals, which every running partition makes each `lease_seconds / 4`)
   and progress saves (about one a second per running partition) per second with 16
   leases held.
2. History: the same claims, a task listing (of the project that holds the history,
   first page of 50 and the count), the metrics' grouped counts, with 100,000
   finished tasks (1,000,000 finished partitions) in the tables; then the retention's
   deletes per second (`Store.delete_finished_before`).

It creates a throwaway database `exportd_bench_capacity_<pid>` on
`EXPORTD_BENCH_PG` (default: the local test cluster) and drops it at the end. Figures go
to stdout as JSON and a table; the claimers share the machine with the store, so on a
small machine the figure is a floor (the CPU use of both is printed beside it)."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa

from exportd.model import FileStatus, Stage, Task, TaskStatus
from exportd.model.plan import DatasetKind, ExportPlan, OutputSpec
from exportd.store import PlannedPartition, Store, TaskQuery

ADMIN = os.environ.get("EXPORTD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(name: str) -> str:
    return ADMIN.rsplit("/", 1)[0] + "/" + name


def plan() -> ExportPlan:
    return ExportPlan(
        dataset_id="ds", dataset_kind=DatasetKind.SQL, source_columns=("id",),
        output=OutputSpec(format="csv", prefix="exports/p/t/"), fingerprint="bench",
    )  # fmt: skip


def new_task(project: str) -> Task:
    now = datetime.now(UTC)
    return Task(
        task_id=uuid.uuid4().hex, project_id=project, dataset_id="ds", status=TaskStatus.PENDING,
        stage=Stage.NOT_STARTED, file_status=FileStatus.PREPARING,
        request={}, plan=plan(), format="csv", file_name="x.csv", columns=["id"],
        parallelism=1000, allow_partial=False, max_error_rate=1.0, timeout_seconds=None,
        expires_in=3600, create_time=now, update_time=now,
    )  # fmt: skip


def queue(store: Store, tasks: int, per_task: int, projects: int) -> None:
    """`tasks` RUNNING tasks with `per_task` PENDING partitions each, as the coordinator
    plans them."""
    for i in range(tasks):
        task, _ = store.insert_task(new_task(f"p{i % projects}"))
        claim = store.claim_coordinator("bench-coordinator", 3600)
        assert claim is not None
        _, lease = claim
        assert store.start_task(task.task_id, lease.token, None)
        planned = [PlannedPartition({"lo": j, "hi": j + 1}) for j in range(per_task)]
        assert store.plan_task(task.task_id, lease.token, planned, per_task, True, ["id"])


def claimer(
    url: str, threads: int, seconds: float, out: Any, ready: Any, mode: str = "claims"
) -> None:
    """One process of simulated workers: claim, commit an empty part, again (every
    process starts claiming at the same moment, once all have started). In mode
    `beats`, each claims one partition and then only renews its lease (heartbeats),
    again; in mode `saves`, it only records its progress (`record_progress`, what a
    running partition does about once a second between heartbeats), again."""
    store = Store(url)
    ready.wait()
    counts = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    stop = time.monotonic() + seconds

    def work(k: int) -> None:
        owner = f"bench:{os.getpid()}:w{k}"
        if mode in ("beats", "saves"):
            held = store.claim_partition(owner, 60)
            assert held is not None
            task, part, lease = held
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                if mode == "beats":
                    store.heartbeat(task.task_id, part.index, lease.token, 60, counts[k], 0)
                else:
                    store.record_progress(task.task_id, part.index, lease.token, counts[k], 0)
                latencies[k].append(time.perf_counter() - t0)
                counts[k] += 1
            return
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            claim = store.claim_partition(owner, 60)
            latencies[k].append(time.perf_counter() - t0)
            if claim is None:
                return
            task, part, lease = claim
            store.commit_partition(task.task_id, part.index, lease.token, "k", 0, 0, "0" * 64)
            counts[k] += 1

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    store.close()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    out.put((sum(counts), [x for lat in latencies for x in lat], cpu.ru_utime + cpu.ru_stime))


def postgres_cpu_seconds() -> float:
    """CPU seconds used so far by the PostgreSQL server processes, those that ended
    included (their time is the postmaster's children's), from /proc: the whole
    cluster's, other users' of it included."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm.startswith("postgres") or comm.startswith("postmaster"):
            fields = stat.rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # own + reaped backends' time
    return total / tick


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """CPU seconds of this database's own PostgreSQL backends (not the cluster's other
    users'), sampled every `every` s from /proc while a run goes on (the server is local;
    a backend's time after its last sample is missed: a floor)."""

    def __init__(self, url: str, every: float = 0.2) -> None:
        self.url, self.every, self.stop = url, every, threading.Event()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.old: set[int] = set()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                ).fetchall()
                for (pid,) in pids:
                    cpu = proc_cpu(pid)
                    if cpu >= 0:
                        self.first.setdefault(pid, cpu)
                        self.last[pid] = cpu
                if self.stop.wait(self.every):
                    return

    def __enter__(self) -> BackendCpu:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def seconds(self) -> float:
        """New backends from 0 (they start with the run), older ones from their first
        sample."""
        return sum(self.last[p] - (self.first[p] if p in self.old else 0.0) for p in self.last)


def measure_claims(
    url: str, procs: int, threads: int, seconds: float, mode: str = "claims"
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    backends = BackendCpu(url)
    with psycopg.connect(url) as conn:
        backends.old = {
            pid for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
        }  # fmt: skip
    backends.__enter__()
    pg0, wall0 = postgres_cpu_seconds(), time.monotonic()
    ready = ctx.Barrier(procs)
    ps = [
        ctx.Process(target=claimer, args=(url, threads, seconds, out, ready, mode))
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    results = [out.get() for _ in ps]
    backends.__exit__()
    for p in ps:
        p.join()
    wall = time.monotonic() - wall0
    claims = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    return {
        "claimers": procs * threads,
        "processes": procs,
        "claims": claims,
        "claims_per_s": round(claims / seconds, 1),
        "claim_p50_ms": round(1000 * lat[len(lat) // 2], 2) if lat else None,
        "claim_p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 2) if lat else None,
        "claimers_cpu_s": round(sum(r[2] for r in results), 1),
        "backends_cpu_s": round(backends.seconds, 1),  # this database's backends
        "postgres_cpu_s": round(postgres_cpu_seconds() - pg0, 1),  # the whole cluster's
        "wall_s": round(wall, 1),
    }


def add_history(url: str, n: int) -> None:
    """`n` finished tasks (ended 30 to 60 days ago, files deleted) of 10 partitions each,
    copied in bulk from one real task row in SQL (as years of use would leave them)."""
    store = Store(url)
    task, _ = store.insert_task(new_task("hist"))
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'"
                " ORDER BY ordinal_position"
            )
        ]
        over = {
            "task_id": "md5(g::text)",
            "status": "'COMPLETED'",
            "file_status": "'DELETED'",
            "coordinator_due": "false",
            "end_time": "now() - (30 + g %% 30) * interval '1 day'",
            "create_time": "now() - (31 + g %% 30) * interval '1 day'",
            "idempotency_key": "NULL",
        }
        select = ", ".join(over.get(c, c) for c in cols)
        conn.execute(
            f"INSERT INTO tasks ({', '.join(cols)}) SELECT {select} "
            f"FROM tasks, generate_series(1, {n}) g WHERE task_id = %s",
            (task.task_id,),
        )
        conn.execute(
            "INSERT INTO partitions (task_id, idx, status, stage, bounds, phase, "
            "finished_count, bytes_written, attempts, lost_count, end_time, update_time) "
            "SELECT md5(g::text), i, 'DONE', 90, '{}', 'EXPORT', 100, 1000, 1, 0, now(), now() "
            f"FROM generate_series(1, {n}) g, generate_series(0, 9) i"
        )
        conn.execute(f"DELETE FROM tasks WHERE task_id = '{task.task_id}'")
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE partitions")


def timed(fn: Any, repeat: int = 20) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round(1000 * (time.perf_counter() - t0) / repeat, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--per-task", type=int, default=1000)
    ap.add_argument("--projects", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--history", type=int, default=100_000)
    ap.add_argument("--claimers", default="1x1,1x4,2x4,4x4,4x8", help="processes x threads")
    args = ap.parse_args()

    name = f"exportd_bench_capacity_{os.getpid()}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(name)
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "queued": args.tasks * args.per_task}
    try:
        store = Store(url)
        for p in range(args.projects):
            store.create_project(f"p{p}")
        store.create_project("hist")
        t0 = time.monotonic()
        queue(store, args.tasks, args.per_task, args.projects)
        figures["queue_build_s"] = round(time.monotonic() - t0, 1)
        # right after a big plan, before autovacuum has analyzed the new rows, the
        # planner knows nothing of them: the claim's fair-order query is slow until then
        figures["claims_before_analyze"] = measure_claims(url, 1, 1, args.seconds / 2)
        print(json.dumps(figures["claims_before_analyze"]), flush=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        runs = []
        for spec in args.claimers.split(","):
            procs, threads = (int(x) for x in spec.split("x"))
            runs.append(measure_claims(url, procs, threads, args.seconds))
            print(json.dumps(runs[-1]), flush=True)
        figures["claims"] = runs
        figures["heartbeats"] = measure_claims(url, 4, 4, args.seconds, mode="beats")
        print(json.dumps(figures["heartbeats"]), flush=True)
        figures["progress_saves"] = measure_claims(url, 4, 4, args.seconds, mode="saves")
        print(json.dumps(figures["progress_saves"]), flush=True)

        t0 = time.monotonic()
        add_history(url, args.history)
        figures["history_build_s"] = round(time.monotonic() - t0, 1)
        figures["history_tasks"] = args.history
        figures["with_history"] = {
            "claims": measure_claims(url, 4, 4, args.seconds),
            "status_counts_ms": timed(store.status_counts),
            "list_tasks_ms": timed(lambda: store.list_tasks("hist", TaskQuery(limit=50))),
            "time_out_late_ms": timed(store.time_out_late),
        }
        print(json.dumps(figures["with_history"]), flush=True)
        cutoff = datetime.now(UTC) - timedelta(days=1)
        t0 = time.monotonic()
        deleted = len(store.delete_finished_before(cutoff, 5000))
        took = time.monotonic() - t0
        figures["retention"] = {
            "deleted": deleted,
            "deleted_per_s": round(deleted / took, 1),
            "status_counts_ms_after": timed(store.status_counts),
        }
        with store.read() as conn:
            figures["retention"]["tasks_left"] = conn.execute(
                sa.text("SELECT count(*) FROM tasks")
            ).scalar()
        store.close()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(figures, indent=1))
    print()
    print(
        "| claimers | processes | claims/s | claim p50 ms | p99 ms | claimers CPU s "
        "| backends CPU s | backend CPU ms per claim |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in figures["claims"]:
        print(
            f"| {r['claimers']} | {r['processes']} | {r['claims_per_s']} | {r['claim_p50_ms']} "
            f"| {r['claim_p99_ms']} | {r['claimers_cpu_s']} | {r['backends_cpu_s']} "
            f"| {round(1000 * r['backends_cpu_s'] / max(r['claims'], 1), 1)} |"
        )


if __name__ == "__main__":
    main()
