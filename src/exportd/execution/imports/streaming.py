"""An import's publish streamed while its partitions run: where every partition stages
its rows as files for a PostgreSQL target (`staged`), the publish COPY of each file need
not wait for the last partition. The coordinator that planned the task keeps its lease
(`plan_task(keep_lease=True)`) and, in a thread of its own beside the process's worker,
begins the publish transaction (the marker row; for `replace` the old rows deleted) and
COPYs each partition's file into it as soon as that partition and every one before it
have committed, without the rows of keys an earlier line already had (the duplicates of
the partitions so far: a later line never makes an earlier one a duplicate, so each
file's share is final when it is sent). Once every partition has, it runs the import's
finish with the transaction: the decision (`import_outcome`) over the whole file, the
commit only while its lease holds, the report, the terminal move, all as without a stream.

Nothing is published before that commit: cancel, timeout, a failed partition, a row the
target refuses, a lost lease or a killed process roll the transaction back (a killed
process's connection is rolled back by PostgreSQL), and the stream hands the lease back
as due, so that the task's next coordinator ends it as it would have without a stream
(a refused row: through the staging tables). The PostgreSQL backend parses and inserts
the rows on its own core while the workers check the next partitions."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import orjson

from exportd.execution import coordinator
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.imports import staged
from exportd.model import Lease, PartitionStatus, Task, TaskStatus
from exportd.runtime import Runtime
from exportd.sources.targets import CopyRejected, PublishTx, Target

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # how often the stream looks for the next committed partition


@dataclass
class Stream:
    """What a streamed publish has sent so far: the files of the partitions in
    `found.results`, without the duplicate lines `found.found` of those partitions."""

    tx: PublishTx
    names: list[str]
    found: staged.PrefixDuplicates

    @property
    def copied(self) -> int:
        return len(self.found.results)


class GiveUp(Exception):
    """The stream stops: the task's next coordinator ends it without one."""


def first_range_bytes(rt: Runtime, target: Target) -> int | None:
    """The size the file's first ranges grow from (`plan_file`'s `first_bytes`) when its
    publish may be streamed: the first COPY starts once an eighth of partition_bytes is
    loaded, not a whole range. None: even ranges."""
    return rt.settings.import_partition_bytes // 8 if _may_stream(rt, target) else None


def _may_stream(rt: Runtime, target: Target) -> bool:
    return rt.settings.import_stream_publish and target.engine.dialect.name == "postgresql"


def wanted(rt: Runtime, task: Task, target: Target, parts: int) -> bool:
    """Whether the planned import's publish is streamed (`task`: with the file's columns):
    turned on, a PostgreSQL target, more than one partition, and rows staged as files
    (the fast path, files not refused)."""
    from exportd.execution.imports.loading import Checker, fast_path_refused

    spec = task.plan.imports
    if spec is None or parts < 2 or not _may_stream(rt, target):
        return False
    try:
        checker = Checker.of(task, target)
    except Exception:  # the partitions will say what is wrong
        return False
    if fast_path_refused(rt.settings.fast_paths, spec, target, checker) is not None:
        return False
    return staged.files_refused(rt.settings.import_staged_files, target, spec) is None


@dataclass
class _Running:
    rt: Runtime
    thread: threading.Thread
    stop: threading.Event


_running: dict[str, _Running] = {}  # task id -> the stream of this process
_lock = threading.Lock()


def start(rt: Runtime, task: Task, lease: Lease) -> None:
    """The stream's thread, under the coordinator's lease (which `plan` kept); `task`
    with the file's columns."""
    stop = threading.Event()

    def run() -> None:
        try:
            coordinator.run(rt, task, lease, lambda hb: _stream(rt, task, lease, hb, stop))
        finally:
            with _lock:
                _running.pop(task.task_id, None)

    thread = threading.Thread(target=run, name=f"exportd-publish-{task.task_id[:8]}", daemon=True)
    with _lock:
        _running[task.task_id] = _Running(rt, thread, stop)
    thread.start()


def stop_all(rt: Runtime, timeout: float) -> int:
    """A shutdown: every stream of `rt` gives up at its next look (within a file's COPY),
    its transaction rolled back and its lease handed back as due, so that another
    process's coordinator goes on at once; waits up to `timeout` s. How many there were."""
    with _lock:
        mine = [r for r in _running.values() if r.rt is rt]
    for r in mine:
        r.stop.set()
    deadline = time.monotonic() + timeout
    for r in mine:
        r.thread.join(max(0.0, deadline - time.monotonic()))
    return len(mine)


def _stream(rt: Runtime, task: Task, lease: Lease, hb: Heartbeat, stop: threading.Event) -> None:
    from exportd.execution.imports import publishing

    store = rt.store
    spec = task.plan.imports
    assert spec is not None
    target = publishing.target_of(rt, task)
    tx = target.open_publish(task.task_id, spec.mode)
    if tx is None:  # published already (a coordinator before this one)
        store.release_coordinator(task.task_id, lease.token, due=True)
        return
    try:
        stream = Stream(
            tx, publishing.loaded_columns(task, target),
            staged.PrefixDuplicates(rt.storage, spec.key),
        )  # fmt: skip
        while True:
            hb.check()
            if stop.is_set():
                raise GiveUp("the process is shutting down")
            status, parts = store.partitions_of(task.task_id)  # (by index)
            if status is not TaskStatus.RUNNING:
                raise GiveUp(f"the task is {status.value}")
            stopped = [p for p in parts if p.status in (PartitionStatus.FAILED, PartitionStatus.CANCELED)]  # fmt: skip
            if stopped:
                raise GiveUp(f"partition {stopped[0].index} is {stopped[0].status.value}")
            while (
                stream.copied < len(parts) and parts[stream.copied].status is PartitionStatus.DONE
            ):
                _send(rt, target, stream, parts[stream.copied].part_key or "")
                hb.check()
            if stream.copied == len(parts):
                break
            time.sleep(POLL_SECONDS)
        log.info("import %s: %d files COPYed while the partitions ran", task.task_id, stream.copied)
        publishing.finish(rt, store.get_task(task.project_id, task.task_id), lease, hb, stream)
    except (GiveUp, CopyRejected) as exc:
        log.info("import %s: publish not streamed further (%s)", task.task_id, exc)
        tx.rollback()  # before the lease goes: the next coordinator's publish needs the marker
        store.release_coordinator(task.task_id, lease.token, due=True)
    finally:
        tx.rollback()  # anything not committed (nothing once committed)


def _send(rt: Runtime, target: Target, stream: Stream, part_key: str) -> None:
    """The next partition's file into the transaction, less the lines whose key an
    earlier line had."""
    with rt.storage.open_read(part_key) as f:
        result = orjson.loads(f.read())
    if not result.get("data"):
        raise GiveUp(f"partition {result.get('index')} staged its rows in a table")
    staged.check_sizes(rt.storage, result)
    dups = stream.found.add(result)
    target.copy_csv(
        stream.tx.conn, stream.names, staged.feed(rt.storage, result, stream.names, dups)
    )
