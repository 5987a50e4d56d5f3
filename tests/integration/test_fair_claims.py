"""Work is shared fairly across projects, on SQLite and PostgreSQL: one project's long
queue of partitions does not starve another's single export, and one project's slow
webhooks cannot take every notification slot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from exportd.model.plan import NotifyTargets
from exportd.store import PlannedPartition, Store
from exportd.store.base import utcnow
from exportd.store.enqueue import enqueue_notifications
from tests.records import make_plan, make_task


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    for p in ("a", "b", "c"):
        s.create_project(p)
    yield s
    s.close()


def planned(store: Store, project: str, parts: int) -> str:
    """A RUNNING task of `project` with `parts` partitions open to workers."""
    now = utcnow()
    task, _ = store.insert_task(
        make_task(task_id=uuid.uuid4().hex, project_id=project, create_time=now, update_time=now)
    )
    claim = store.claim_coordinator("coordinator", 30)
    assert claim is not None and claim[0].task_id == task.task_id
    token = claim[1].token
    assert store.start_task(task.task_id, token, None)
    plan = [PlannedPartition({"i": i}) for i in range(parts)]
    assert store.plan_task(task.task_id, token, plan, None, True, ["a"])
    return task.task_id


def run_one(store: Store) -> tuple[str, int] | None:
    """What one worker does: claim a partition and commit it. (project, index) claimed."""
    claim = store.claim_partition("the-only-worker", 30)
    if claim is None:
        return None
    task, part, lease = claim
    assert store.commit_partition(task.task_id, part.index, lease.token, "k", 1, 1, "0" * 64)
    return task.project_id, part.index


def drain(store: Store) -> list[tuple[str, int]]:
    order = []
    while (step := run_one(store)) is not None:
        order.append(step)
    return order


def test_a_single_export_is_not_starved_by_a_long_queue(store: Store) -> None:
    """A's 20 partitions are queued first and A has been served already; B's single
    partition is the next claim of the one worker, not the 21st."""
    planned(store, "a", 20)
    assert [run_one(store) for _ in range(3)] == [("a", 0), ("a", 1), ("a", 2)]
    planned(store, "b", 1)
    order = drain(store)
    assert order[0] == ("b", 0)
    assert [i for p, i in order if p == "a"] == list(range(3, 20))  # A's own order kept


def test_projects_take_turns(store: Store) -> None:
    """Three projects with queues of different lengths, planned before any claim: the
    worker goes round them until the shorter queues are done."""
    planned(store, "a", 6)
    planned(store, "b", 3)
    planned(store, "c", 1)
    projects = [p for p, _ in drain(store)]
    assert projects == ["a", "b", "c", "a", "b", "a", "b", "a", "a", "a"]


def test_a_project_with_running_partitions_waits_for_one_without(store: Store) -> None:
    """Claims without commits (several workers): after A's first claim, B's partition goes
    before A's second, although A's task is older."""
    a = planned(store, "a", 5)
    b = planned(store, "b", 2)
    claims = [store.claim_partition(f"w{i}", 30) for i in range(4)]
    assert [(c[0].task_id, c[1].index) for c in claims if c] == [(a, 0), (b, 0), (a, 1), (b, 1)]


def test_at_most_n_deliveries_of_a_project_in_flight(store_url: str) -> None:
    """Two store instances (as two worker processes would have) claim notifications: one
    project never has more than the limit under lease, another's is claimed meanwhile."""
    one, two = Store(store_url), Store(store_url, run_migrations=False)
    try:
        for p in ("a", "b"):
            one.create_project(p)
        now = utcnow()
        ids = []
        for project, count in (("a", 5), ("b", 1)):
            for _ in range(count):
                hook = NotifyTargets(webhook_url="https://hooks.example.com/x")
                task = make_task(
                    task_id=uuid.uuid4().hex, project_id=project, create_time=now,
                    update_time=now, plan=make_plan(notify=hook),
                )  # fmt: skip
                one.insert_task(task)
                ids.append((task.task_id, task.status))
        with one.write() as conn:  # the outbox rows a terminal status writes
            for tid, status in ids:
                enqueue_notifications(conn, tid, status, now)
        claimed = [s.claim_notification(60, 2) for s in (one, two, one, two, one)]
        got = [c[0].project_id for c in claimed if c is not None]
        assert sorted(got) == ["a", "a", "b"]  # A's third, fourth, fifth wait for a slot
    finally:
        two.close()
        one.close()


def test_concurrent_claims_stay_exclusive(store: Store) -> None:
    """Eight claimers at once over three projects' partitions (SKIP LOCKED on PostgreSQL,
    `BEGIN IMMEDIATE` on SQLite): every partition is claimed exactly once."""
    tasks = {planned(store, "a", 12): 12, planned(store, "b", 3): 3, planned(store, "c", 1): 1}

    def claim_all(name: str) -> list[tuple[str, int]]:
        got = []
        while (claim := store.claim_partition(name, 30)) is not None:
            got.append((claim[0].task_id, claim[1].index))
        return got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim_all, [f"w{i}" for i in range(8)]))
    claimed = [c for r in results for c in r]
    assert len(claimed) == len(set(claimed)) == 16
    assert set(claimed) == {(t, i) for t, n in tasks.items() for i in range(n)}


def test_one_worker_process_serves_a_single_export_before_a_long_queue(
    store_url: str, sqlite_source: str, live_server: Any
) -> None:
    """End to end: A's export of 12 partitions and B's of one wait for a worker; one
    `exportd worker` with one thread starts; B's partition is claimed second (after A's
    first), not after A's queue is drained: by the partitions' start times."""
    server = live_server(store_url=store_url, workers=0)
    admin = server.client()
    for p in ("a", "b"):
        assert admin.http.post("/v1/projects", json={"project_id": p}).status_code == 201
        admin.dataset(p, name="flights", url=sqlite_source, table="flights", key="id")
    a = admin.export("a", dataset_id="flights", filter={"id": {"lte": 12_000}}, parallelism=12)
    b = admin.export("b", dataset_id="flights", filter={"id": {"lte": 1_000}}, parallelism=1)
    server.start_worker(concurrency=1)
    done_a = admin.wait("a", a["task_id"])
    done_b = admin.wait("b", b["task_id"])
    assert done_a["status"] == done_b["status"] == "COMPLETED"
    assert done_a["finished_count"] == 12_000 and len(done_a["partitions"]) == 12
    starts = sorted(
        [(p["start_time"], "a", p["index"]) for p in done_a["partitions"]]
        + [(p["start_time"], "b", p["index"]) for p in done_b["partitions"]]
    )
    assert [(who, i) for _, who, i in starts[:3]] == [("a", 0), ("b", 0), ("a", 1)]
