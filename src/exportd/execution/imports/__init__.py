"""The `import` kind: a file -> a table. Planning (`planning`: the file's split at record
boundaries, stage 10), the partitions' work (`loading`: parse, check every row against
the target's columns, stage the valid ones as files (`staged`) or in the partition's
staging table, stage 60) and the end (`publishing`: duplicates across the file, the
publish of every partition's rows in one target transaction (70), the error report and
manifest (80))."""

from __future__ import annotations

from exportd.execution.heartbeat import Heartbeat
from exportd.execution.imports.loading import load_partition
from exportd.execution.imports.planning import plan
from exportd.execution.imports.publishing import clean_up, finish
from exportd.execution.kinds import PartitionWork
from exportd.model import Lease, Partition, Task
from exportd.runtime import Runtime


class ImportKind:
    def plan(self, rt: Runtime, task: Task, lease: Lease) -> None:
        plan(rt, task, lease)

    def between_passes(self, rt: Runtime, task: Task, lease: Lease) -> None:
        rt.store.release_coordinator(task.task_id, lease.token, due=False)  # no header pass

    def finish(self, rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
        finish(rt, task, lease, hb)

    def partition_work(self, part: Partition) -> PartitionWork:
        return load_partition

    def clean_up(self, rt: Runtime, task: Task) -> None:
        clean_up(rt, task)


KIND = ImportKind()
