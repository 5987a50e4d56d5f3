"""Assembling an export's committed segments, in partition order, into its output files
(stage 70), and its manifest (80)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from exportd.errors import NotFound
from exportd.execution.heartbeat import Heartbeat
from exportd.formats.splitting import Layout, file_names, pack, read_index
from exportd.model import (
    Dataset,
    FileRecord,
    Partition,
    PartitionStatus,
    Task,
)
from exportd.model.lifecycle import (
    Outcome,
)
from exportd.runtime import Runtime, columns_for
from exportd.storage.keys import output_prefix
from exportd.store import utcnow


@dataclass(frozen=True)
class OutputFile:
    record: FileRecord
    details: dict[str, Any]


def assemble(rt: Runtime, task: Task, done: list[Partition], hb: Heartbeat) -> list[OutputFile]:
    """Stage 70: the committed segments, in partition order, packed into the output files."""
    fmt = rt.format(task)
    try:
        dataset: Dataset | None = rt.store.get_dataset(task.project_id, task.dataset_id)
    except NotFound:
        dataset = None
    columns = columns_for(task, dataset)
    layout = Layout.of(task.plan.output)
    segments = [
        seg
        for p in sorted(done, key=lambda p: p.index)
        if p.part_key
        for seg in read_index(rt.storage, p.part_key)
    ]
    for seg in segments:  # parts are not fsynced: one an OS crash cut short is caught here
        if (size := rt.storage.size(seg.key)) != seg.bytes:
            raise RuntimeError(f"part {seg.key} holds {size} bytes, its index says {seg.bytes}")
    groups = pack(segments, fmt, columns, layout)
    names = file_names(task.file_name, fmt.extension, len(groups))
    files = []
    for name, group in zip(names, groups, strict=True):
        key = output_prefix(task) + name
        written = fmt.assemble(rt.storage, key, group, columns)
        hb.check()
        rows = sum(s.rows for s in group)
        record = FileRecord(
            task.task_id, name, key, rows, written.bytes, written.sha256, fmt.media_type
        )
        files.append(OutputFile(record, written.details))
    return files


def manifest_body(
    task: Task,
    outcome: Outcome,
    files: list[OutputFile],
    by: dict[PartitionStatus, list[Any]],
    failed_rows: int,
    expires_at: str,
) -> bytes:
    body = {
        "task_id": task.task_id,
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "status": outcome.status.value,
        "format": task.format,
        "columns": task.columns,
        "created_at": task.create_time.isoformat(),
        "completed_at": utcnow().isoformat(),
        "expires_at": expires_at,
        "total_rows": sum(f.record.rows for f in files),
        "failed_rows": failed_rows,
        "success_rate": round(outcome.success_rate, 2),
        "failed_items": failed_item_list(p for ps in by.values() for p in ps),
        "compression": task.plan.output.compression or "none",
        "files": [
            {
                "name": f.record.name,
                "rows": f.record.rows,
                "bytes": f.record.bytes,
                "sha256": f.record.sha256,
                "media_type": f.record.media_type,
                **f.details,
            }
            for f in files
        ],
        "partitions": [
            {
                "index": p.index,
                "status": p.status.value,
                "rows": p.finished_count if p.status is PartitionStatus.DONE else 0,
                "attempts": p.attempts,
                "error_code": p.error_code if p.status is not PartitionStatus.DONE else None,
                "error_msg": p.error_msg if p.status is not PartitionStatus.DONE else None,
            }
            for p in sorted((p for ps in by.values() for p in ps), key=lambda p: p.index)
        ],
        "request": task.request,
        # the guarantee delivered and the snapshot's identity (docs/consistency.md)
        "consistency": task.consistency,
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


FAILED_ITEMS_LISTED = 1000  # items listed in a manifest or a status (their count is whole)


def failed_item_list(parts: Iterable[Partition]) -> list[dict[str, Any]]:
    """The rows that failed inside committed partitions, by partition then key order:
    partition, key and the database's message (at most FAILED_ITEMS_LISTED)."""
    items = [
        {
            "partition": p.index,
            "key": i.get("key"),
            "error_code": "ROW_FAILED",
            "error_msg": i.get("error_msg"),
        }
        for p in sorted(parts, key=lambda p: p.index)
        if p.status is PartitionStatus.DONE
        for i in p.failed_items or []
    ]
    return items[:FAILED_ITEMS_LISTED]
