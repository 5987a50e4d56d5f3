"""Stage 10 of a samples export: the dataset's samples read once, the selection made
and placed (every target path decided, collisions resolved, the split drawn), and
written as one file per partition under the task's parts: the partitions copy exactly
what was planned, whatever happens to the dataset meanwhile."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from exportd.errors import ExportdError, SourceError
from exportd.execution import kinds
from exportd.model import Lease, PartitionPhase, Stage, Task
from exportd.model.lifecycle import RETRY_CAP_SECONDS
from exportd.model.samples import SamplesSpec
from exportd.retrying import backoff
from exportd.runtime import Runtime
from exportd.sources.samples import Placement, load, place, select
from exportd.storage.keys import parts_prefix
from exportd.store import PlannedPartition

MIN_PER_PARTITION = 64  # fewer samples than this are not worth another partition


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off while a selection is built or read: its
    objects (a Sample, a placement and their dicts per sample, 100,000 of them) hold no
    cycles and are freed by their reference counts, but each collection would walk all
    of them again: about half the planning's CPU time. Process-wide and short (a
    second or two for 100,000 samples); nested or concurrent uses leave it as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def spec_of(task: Task) -> SamplesSpec:
    spec = task.plan.samples
    assert spec is not None, "a samples task without its samples plan"
    return spec


def plan(rt: Runtime, task: Task, lease: Lease) -> None:
    store = rt.store
    if not kinds.start(rt, task, lease):
        return
    try:
        dataset = store.get_dataset(task.project_id, task.dataset_id)
        with gc_paused():
            sset = load(dataset)
            placed = place(select(sset.samples, spec_of(task)), sset, spec_of(task))
            del sset
        store.set_task_stage(
            task.task_id, lease.token, Stage.GETTING_TOTAL,
            total_count=len(placed), total_is_estimate=False,
        )  # fmt: skip
        with gc_paused():
            bounds = write_selection(rt, task, placed)
    except (SourceError, ExportdError) as exc:
        retry = isinstance(exc, SourceError) and not exc.transient
        if lease.attempt < rt.settings.max_attempts and retry:
            delay = backoff(lease.attempt, rt.settings.retry_base_seconds, RETRY_CAP_SECONDS)
            store.release_coordinator(task.task_id, lease.token, due=True, retry_after=delay)
        else:
            store.fail_task(task.task_id, lease.token, exc.error_code, exc.error_msg)
        return
    planned = [PlannedPartition(b, PartitionPhase.EXPORT) for b in bounds]
    if not store.plan_task(task.task_id, lease.token, planned, len(placed), False, []):
        store.release_coordinator(task.task_id, lease.token, due=True)


def selection_key(task: Task, index: int) -> str:
    return f"{parts_prefix(task)}selection/{index:05d}.jsonl"


def write_selection(rt: Runtime, task: Task, placed: list[Placement]) -> list[dict[str, object]]:
    """Contiguous runs of the placed samples (in id order), one file each; the bounds
    name the file, where its run starts and how many samples it holds."""
    n = len(placed)
    parts = max(1, min(task.parallelism, math.ceil(n / MIN_PER_PARTITION)))
    step = max(1, math.ceil(n / parts))
    bounds: list[dict[str, object]] = []
    for index, start in enumerate(range(0, max(n, 1), step)):
        run = placed[start : start + step]
        key = selection_key(task, index)
        with rt.storage.open_write(key, durable=False) as out:
            for p in run:
                out.write(orjson.dumps(p.to_json()) + b"\n")
        bounds.append({"selection": key, "start": start, "count": len(run)})
    return bounds


def read_selection(rt: Runtime, key: str) -> list[Placement]:
    with gc_paused(), rt.storage.open_read(key) as fh:
        return [Placement.from_json(orjson.loads(line)) for line in fh if line.strip()]
