"""The end of a samples export: the partitions' indexes read in order, the outcome by
items (samples), the version manifest (JSON Lines or CSV) and `manifest.json` (every
file with its sha256, the split, the failed samples), a NEW_DATASET registered, and the
terminal move."""

from __future__ import annotations

import shutil
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from exportd.errors import Conflict, NotFound
from exportd.execution.cleanup import clean_up_now
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.samples.copying import (
    Target,
    csv_rows,
    forget_targets,
    read_index,
    target_of,
)
from exportd.execution.samples.planning import read_selection, spec_of
from exportd.model import (
    Dataset,
    DatasetKind,
    FileRecord,
    FileStatus,
    Lease,
    PartitionStatus,
    Stage,
    Task,
    TaskStatus,
)
from exportd.model.lifecycle import Outcome
from exportd.runtime import Runtime
from exportd.sources.samples import MANIFEST_NAME, Placement
from exportd.storage import Piece, Storage, is_temporary
from exportd.storage.keys import output_prefix
from exportd.store import utcnow

T = TaskStatus
CHUNK = 1 << 20


@dataclass
class Tally:
    """What the partitions did, in plan order: counts, and the pieces the outputs are
    composed of (each committed partition's fragments, by key; a failed partition's
    samples rendered here, the only per-sample work of the end)."""

    done: int = 0
    failed: int = 0
    canceled: int = 0
    train: int = 0
    written: int = 0
    files: list[str] = field(default_factory=list)  # fragments of manifest file entries
    version: list[str] = field(default_factory=list)
    dataset: list[str] = field(default_factory=list)
    failed_items: list[Piece] = field(default_factory=list)
    stray: list[Placement] = field(default_factory=list)  # a failed partition's samples

    @property
    def total(self) -> int:
        return self.done + self.failed + self.canceled


def item_outcome(
    done: int, failed: int, canceled: int, allow_partial: bool, max_rate: float
) -> Outcome:
    """The terminal status by items: every sample exported -> COMPLETED; some failed
    (their files missing or unreadable, or in a partition that failed) -> COMPLETED_WITH_ERRORS
    when partial success is allowed and the failed share is within the maximum."""
    total = done + failed + canceled
    rate = 100.0 * done / total if total else 100.0
    if failed == 0 and canceled == 0:
        return Outcome(T.COMPLETED, None, None, rate)
    share = (failed + canceled) / total
    if allow_partial and done > 0 and share <= max_rate:
        msg = f"{failed} of {total} samples failed; success rate {rate:.1f}%"
        return Outcome(T.COMPLETED_WITH_ERRORS, "PARTIAL_FAILURE", msg, rate)
    why = "is more than allowed" if allow_partial else "and allow_partial is false"
    msg = f"{failed} of {total} samples failed ({100 * share:.1f}%) {why}"
    return Outcome(T.FAILED, "SAMPLES_FAILED", msg, rate)


def tally(rt: Runtime, task: Task) -> Tally:
    out = Tally()
    for p in sorted(task.partitions, key=lambda p: p.index):
        if p.status is PartitionStatus.DONE and p.part_key:
            s = read_index(rt.storage, p.part_key)
            out.done += s["done"]
            out.failed += s["failed"]
            out.train += s["train"]
            out.written += s["written"]
            if s["entries"]:
                out.files.append(s["files"])
            if s["done"]:
                out.version.append(s["version"])
                out.dataset.append(s["dataset"])
            if s["failed"]:
                out.failed_items.append(s["failed_items"])
        elif p.status is PartitionStatus.CANCELED:
            out.canceled += int(p.bounds["count"])
        else:
            placed = read_selection(rt, p.bounds["selection"])
            code, msg = p.error_code or "PARTITION_FAILED", p.error_msg or ""
            out.failed += len(placed)
            if placed:
                out.failed_items.append(
                    b",\n    ".join(
                        b"    " * (i == 0)
                        + orjson.dumps({"id": pl.id, "error_code": code, "error_msg": msg[:500]})
                        for i, pl in enumerate(placed)
                    )
                )
            if p.attempts:
                out.stray += placed
    return out


def finish(rt: Runtime, task: Task, lease: Lease, hb: Heartbeat) -> None:
    store = rt.store
    t = tally(rt, task)
    outcome = item_outcome(t.done, t.failed, t.canceled, task.allow_partial, task.max_error_rate)
    done = t.done
    if outcome.status is T.FAILED:
        if store.finish_task(task.task_id, lease.token, outcome, [], None, done, t.failed, 0):
            clean_up_now(rt, task, lease, generated=False)
        return
    target = target_of(rt, task)
    if any(p.attempts > 1 or p.lost_count for p in task.partitions):
        _sweep_temporaries(target)
    for pl in t.stray:  # a failed partition's samples: what its attempts wrote goes
        forget_targets(target, pl)
    hb.check()
    store.set_task_stage(task.task_id, lease.token, Stage.WRITING_MANIFEST)
    new = None
    if spec_of(task).export_dest == "NEW_DATASET":
        new = _register_new_dataset(rt, task, target, t)
        if new is None:
            name = spec_of(task).new_dataset_name
            store.fail_task(
                task.task_id, lease.token, "DATASET_EXISTS", f"dataset {name!r} already exists"
            )
            return
    expires = utcnow() + timedelta(seconds=task.expires_in)
    records = _write_manifests(rt, task, outcome, t, expires)
    hb.check()
    ok = store.finish_task(
        task.task_id, lease.token, outcome, records, expires, done, t.failed, t.written
    )
    if ok:
        clean_up_now(rt, task, lease, generated=True)
        return
    current = store.get_task(task.project_id, task.task_id)
    if current.file_status is not FileStatus.GENERATED and current.status is not T.RUNNING:
        for r in records:  # canceled or timed out meanwhile: this output is never seen
            rt.storage.delete(r.key)
        if new is not None:
            _forget(rt, new)
    store.release_coordinator(task.task_id, lease.token, due=True)


def _forget(rt: Runtime, ds: Dataset) -> None:
    with suppress(NotFound):
        rt.store.delete_dataset(ds.project_id, ds.dataset_id)


def _sweep_temporaries(target: Target) -> None:
    """A killed attempt's half-written temporary files (`.name.<hex>.tmp`): never part
    of the result."""
    for key in list(target.storage.list(target.prefix)):
        if is_temporary(key):
            target.storage.delete(key)


# ---- manifests ----------------------------------------------------------------------------------


def split_summary(task: Task, t: Tally) -> dict[str, Any] | None:
    spec = spec_of(task)
    if not spec.ratio_sample_usage:
        return None
    return {
        "train_sample_ratio": spec.train_sample_ratio,
        "seed": spec.split_seed,
        "train": t.train,
        "eval": t.done - t.train,
        "folders": ["train/", "eval/"],
    }


def _joined(pieces: list[Piece]) -> list[Piece]:
    """Fragments of a JSON array's items, each line-separated, joined by commas."""
    out: list[Piece] = []
    for i, piece in enumerate(pieces):
        if i:
            out.append(b",\n")
        out.append(piece)
    return out


def _field(name: str, value: Any) -> bytes:
    return b'  "' + name.encode() + b'": ' + orjson.dumps(value)


def manifest_pieces(
    task: Task, outcome: Outcome, t: Tally, expires: datetime, version: FileRecord
) -> list[Piece]:
    """manifest.json as pieces: its fields rendered here, its `files` and `failed`
    arrays the partitions' fragments (composed by the storage, never read into
    this process)."""
    spec = spec_of(task)
    head = {
        "task_id": task.task_id,
        "project_id": task.project_id,
        "dataset_id": task.dataset_id,
        "kind": "samples",
        "status": outcome.status.value,
        "export_type": int(spec.export_type),
        "export_format": int(spec.export_format),
        "layout": "tree" if int(spec.export_format) == 1 else "tile",
        "version_format": spec.version_format,
        "export_dest": spec.export_dest,
        "path": spec.new_dataset_path if spec.export_dest == "NEW_DATASET" else output_prefix(task),
        "new_dataset_name": spec.new_dataset_name,
        "created_at": task.create_time.isoformat(),
        "completed_at": datetime.now(UTC).isoformat(),
        "expires_at": expires.isoformat(),
        "total_samples": t.total,
        "exported_samples": t.done,
        "failed_samples": t.failed,
        "success_rate": round(outcome.success_rate, 2),
        "clear_hard_property": spec.clear_hard_property,
        "split": split_summary(task, t),
        "version_file": {"name": version.name, "bytes": version.bytes, "sha256": version.sha256},
    }
    tail = {
        "partitions": [
            {
                "index": p.index,
                "status": p.status.value,
                "samples": p.bounds.get("count"),
                "attempts": p.attempts,
                "error_code": p.error_code if p.status is not PartitionStatus.DONE else None,
            }
            for p in sorted(task.partitions, key=lambda p: p.index)
        ],
        "request": task.request,
    }
    opening = b"{\n" + b",\n".join(_field(k, v) for k, v in head.items())
    closing = b",\n".join(_field(k, v) for k, v in tail.items()) + b"\n}\n"
    return [
        opening + b',\n  "files": [\n',
        *_joined(list(t.files)),
        b'\n  ],\n  "failed": [\n',
        *_joined(t.failed_items),
        b"\n  ],\n" + closing,
    ]


def _put(
    storage: Storage, task: Task, key: str, name: str, pieces: list[Piece], media: str, kind: str
) -> FileRecord:
    made = storage.compose(key, pieces)
    return FileRecord(task.task_id, name, key, 0, made.bytes, made.sha256, media, kind=kind)


def _write_manifests(
    rt: Runtime, task: Task, outcome: Outcome, t: Tally, expires: datetime
) -> list[FileRecord]:
    """The version file (the exported samples, JSON Lines or CSV) and manifest.json, in
    the task's folder of the storage, composed of the partitions' fragments."""
    spec = spec_of(task)
    folder = output_prefix(task)
    csv_ = spec.version_format == "CSV"
    pieces: list[Piece] = [csv_rows([], header=True), *t.version] if csv_ else [*t.version]
    media = "text/csv" if csv_ else "application/x-ndjson"
    version = _put(rt.storage, task, folder + task.file_name, task.file_name, pieces, media, "data")
    version.rows = t.done
    mrec = _put(
        rt.storage, task, folder + "manifest.json", "manifest.json",
        manifest_pieces(task, outcome, t, expires, version), "application/json", "manifest",
    )  # fmt: skip
    return [version, mrec]


def _register_new_dataset(rt: Runtime, task: Task, target: Target, t: Tally) -> Dataset | None:
    """NEW_DATASET: the exported samples' manifest in the new folder, registered as a
    samples dataset (again the same one if this finish runs a second time). None: the
    name was taken meanwhile by another dataset."""
    spec = spec_of(task)
    assert spec.new_dataset_name and spec.new_dataset_path and spec.new_dataset_root
    with target.storage.open_write(MANIFEST_NAME) as out:
        for key in t.dataset:  # the exported samples, as JSON Lines
            with rt.storage.open_read(key) as fh:
                shutil.copyfileobj(fh, out, CHUNK)
    ds = Dataset(
        dataset_id="ds_" + uuid.uuid4().hex[:16],
        project_id=task.project_id,
        name=spec.new_dataset_name,
        kind=DatasetKind.SAMPLES,
        url="",
        table=None,
        query=None,
        key="",
        fields=[{"name": "samples", "type": "samples", "kind": "samples", "count": t.done}],
        options={
            "path": str(Path(spec.new_dataset_path) / MANIFEST_NAME),
            "root": spec.new_dataset_root,
            "layout": "manifest",
            "exported_by": task.task_id,
        },
        create_time=datetime.now(UTC),
    )
    try:
        rt.store.add_dataset(ds)
    except Conflict:
        existing = rt.store.get_dataset(task.project_id, spec.new_dataset_name)
        return existing if existing.options.get("exported_by") == task.task_id else None
    return ds


def clean_storage(rt: Runtime, task: Task, *, generated: bool) -> None:
    """After the generic cleanup: unless the export was GENERATED, its whole folder (the
    tree or tile of files is the task's own), or the new dataset's folder."""
    if generated or task.plan.samples is None:
        return
    target = target_of(rt, task)
    if task.plan.samples.export_dest == "NEW_DATASET":
        target.storage.delete_prefix("")
    else:
        target.storage.delete_prefix(target.prefix)
