"""Task kinds: what a task does, behind one small interface chosen by the task's kind.

The lease engine is the same for every kind: claims, heartbeats, fenced commits, retries
and outages (`pool`, `partition`, `coordinator`), cleanup (`cleanup`), the janitor. A
kind plans its task into partitions, does one partition's work, does what must happen
between two passes over the partitions, and finishes the task. `export` is the first
kind (`execution/export/`); the next kinds plug in beside it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from exportd.execution.heartbeat import Heartbeat
from exportd.model import Lease, Partition, Task, TaskKind, TaskStatus
from exportd.runtime import Runtime
from exportd.store import utcnow

if TYPE_CHECKING:
    from exportd.execution.partition import PartitionRun

PartitionWork = Callable[["PartitionRun", Heartbeat], None]


class KindRunner(Protocol):
    def plan(self, rt: Runtime, task: Task, lease: Lease) -> None:
        """Stage 10: start the task and insert its partitions (the coordinator's lease)."""

    def between_passes(self, rt: Runtime, task: Task, lease: Lease) -> None:
        """Every partition of a first pass is in (e.g. the header merge, stage 30)."""

    def finish(self, rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
        """Every partition is DONE, FAILED or CANCELED: the result and the terminal move."""

    def partition_work(self, part: Partition) -> PartitionWork:
        """What one attempt at this partition does (and commits, fenced)."""


_RUNNERS: dict[TaskKind, str] = {TaskKind.EXPORT: "exportd.execution.export:KIND"}
_RUNNERS[TaskKind.SAMPLES] = "exportd.execution.samples:KIND"
_RUNNERS[TaskKind.IMPORT] = "exportd.execution.imports:KIND"


def start(rt: Runtime, task: Task, lease: Lease) -> bool:
    """A PENDING task moves to RUNNING with its deadline (timeout_seconds from now), as
    the first step of every kind's plan; False (the coordinator's lease given back) when
    the move was refused. A task already running (a plan retried) just goes on."""
    if task.status is not TaskStatus.PENDING:
        return True
    seconds = task.timeout_seconds
    deadline = utcnow() + timedelta(seconds=seconds) if seconds else None
    if rt.store.start_task(task.task_id, lease.token, deadline):
        return True
    rt.store.release_coordinator(task.task_id, lease.token, due=False)
    return False


def runner(kind: TaskKind) -> KindRunner:
    """The plug-in of a kind (imported when first asked, so that kinds do not import
    each other nor the engine's modules import every kind)."""
    module, attr = _RUNNERS[kind].split(":")
    found: KindRunner = getattr(importlib.import_module(module), attr)
    return found
