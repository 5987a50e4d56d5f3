"""The `samples` kind: a samples dataset's files -> a tree (a folder per label) or tile
(each file beside its label file) layout, optionally split into train/ and eval/, in a
folder of the storage (DIR) or in a new samples dataset (NEW_DATASET). Planning (the
selection, placed, in one file per partition: `planning`), the copy of one partition
(`copying`) and the end: manifests, the new dataset, the terminal move (`finishing`)."""

from __future__ import annotations

from exportd.execution.heartbeat import Heartbeat
from exportd.execution.kinds import PartitionWork
from exportd.execution.samples.copying import copy_pass
from exportd.execution.samples.finishing import clean_storage, finish
from exportd.execution.samples.planning import plan
from exportd.model import Lease, Partition, Task
from exportd.runtime import Runtime


class SamplesKind:
    def plan(self, rt: Runtime, task: Task, lease: Lease) -> None:
        plan(rt, task, lease)

    def between_passes(self, rt: Runtime, task: Task, lease: Lease) -> None:
        raise AssertionError("a samples export has a single pass")

    def finish(self, rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
        finish(rt, task, lease, hb)

    def partition_work(self, part: Partition) -> PartitionWork:
        return copy_pass

    def clean_storage(self, rt: Runtime, task: Task, *, generated: bool) -> None:
        clean_storage(rt, task, generated=generated)


KIND = SamplesKind()
