"""The `export` kind: a dataset -> files. Planning (`planning`), the partitions' header
and export passes (`passes`), the header merge between them and the end (`finishing`),
assembly and manifest (`assembly`)."""

from __future__ import annotations

from exportd.execution.export.finishing import between_passes, finish
from exportd.execution.export.passes import export_pass, header_pass
from exportd.execution.export.planning import plan
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.kinds import PartitionWork
from exportd.execution.snapshots import under_snapshot
from exportd.model import Lease, Partition, PartitionPhase, Task
from exportd.runtime import Runtime


class ExportKind:
    def plan(self, rt: Runtime, task: Task, lease: Lease) -> None:
        plan(rt, task, lease)

    def between_passes(self, rt: Runtime, task: Task, lease: Lease) -> None:
        between_passes(rt, task, lease)

    def finish(self, rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
        finish(rt, task, lease, hb)

    def partition_work(self, part: Partition) -> PartitionWork:
        return header_pass if part.phase is PartitionPhase.HEADERS else _EXPORT_PASS


_EXPORT_PASS = under_snapshot(export_pass)  # a lost snapshot: read again under a fresh one
KIND = ExportKind()
