"""Stage 10 of an import: the target checked, the file's records counted and split into
partitions at record boundaries (byte ranges; row groups for Parquet)."""

from __future__ import annotations

import dataclasses

from exportd.errors import ExportdError, SourceError
from exportd.execution import kinds
from exportd.execution.imports import streaming
from exportd.execution.imports.files import read_options, source_file
from exportd.formats.readers import ReadError, plan_file
from exportd.model import Lease, PartitionPhase, Stage, Task
from exportd.runtime import Runtime
from exportd.sources.targets import Target
from exportd.store import PlannedPartition


def plan(rt: Runtime, task: Task, lease: Lease) -> None:
    store = rt.store
    spec = task.plan.imports
    assert spec is not None
    if not kinds.start(rt, task, lease):
        return
    try:
        dataset = store.get_dataset(task.project_id, task.dataset_id)
        target = Target.reflect_for(
            rt.targets.get(rt.connections.dataset_url(dataset)), dataset.table or "", task.task_id
        )
        target.ensure_marker()
        with source_file(rt, spec) as path:
            first = streaming.first_range_bytes(rt, target)
            found = plan_file(path, read_options(spec), task.parallelism, first_bytes=first)
    except ReadError as exc:
        store.fail_task(task.task_id, lease.token, "INVALID_FILE", str(exc)[:2000])
        return
    except (SourceError, ExportdError) as exc:
        store.fail_task(task.task_id, lease.token, exc.error_code, exc.error_msg)
        return
    except FileNotFoundError:
        store.fail_task(task.task_id, lease.token, "SOURCE_NOT_FOUND", "the file to import is gone")
        return
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:  # corrupt, not ours
        msg = f"the file cannot be read: {type(exc).__name__}: {str(exc)[:300]}"
        store.fail_task(task.task_id, lease.token, "INVALID_FILE", msg)
        return
    missing = [c for c in spec.mapping.values() if not c.startswith("#") and c not in found.columns]
    if found.columns and missing:
        msg = (
            f"the file has no column {missing[0]!r} (its columns: {', '.join(found.columns)[:500]})"
        )
        store.fail_task(task.task_id, lease.token, "UNKNOWN_FILE_COLUMN", msg)
        return
    store.set_task_stage(
        task.task_id, lease.token, Stage.GETTING_TOTAL,
        total_count=found.records, total_is_estimate=False,
    )  # fmt: skip
    planned = [PlannedPartition(b, PartitionPhase.EXPORT) for b in found.ranges]
    planned_task = dataclasses.replace(task, columns=found.columns)
    stream = streaming.wanted(rt, planned_task, target, len(planned))
    if not store.plan_task(
        task.task_id,
        lease.token,
        planned,
        found.records,
        False,
        found.columns,
        keep_lease=stream,
    ):  # canceled or timed out while planning: the cleanup is due
        store.release_coordinator(task.task_id, lease.token, due=True)
    elif stream:  # the publish begins beside the partitions, under this lease
        streaming.start(rt, planned_task, lease)
