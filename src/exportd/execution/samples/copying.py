"""One partition of a samples export: each planned sample's file copied to its targets
by the storage (a kernel copy on a local disk, an upload or a server-side copy on S3),
its label file written beside it (tile), and an index of what was written (paths,
sizes, sha256) or why a sample failed, committed fenced by the lease.

Targets are fixed by the plan, so an attempt run again (after a kill, a lost lease)
writes the very same files over the first attempt's: each sample ends up in the
result exactly once. A sample whose file is missing or unreadable is a failed item of
the index, not a failed partition."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from exportd.execution.heartbeat import Heartbeat
from exportd.execution.partition import PartitionRun, discard, part_folder
from exportd.execution.samples.planning import read_selection, spec_of
from exportd.model import Task
from exportd.runtime import Runtime
from exportd.sources.samples import S3_SOURCE, Placement, label_file_body, s3_source
from exportd.storage import Copied, SourceUnreadable, Storage
from exportd.storage.keys import output_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where a samples export writes: a storage and the folder inside it."""

    storage: Storage
    prefix: str


def target_of(rt: Runtime, task: Task) -> Target:
    """DIR: the task's folder of the storage; NEW_DATASET: the new dataset's folder."""
    spec = spec_of(task)
    if spec.export_dest == "NEW_DATASET":
        from exportd.storage.local import LocalStorage

        assert spec.new_dataset_path is not None
        storage = LocalStorage(Path(spec.new_dataset_path), rt.settings.outage_budget_seconds)
        return Target(storage, "")
    return Target(rt.storage, output_prefix(task))


class _Guard:
    """Opens a sample's file if it may be read: it resolves (the file opened, looked up
    by its descriptor: no race with a symlink swapped meanwhile) under the dataset's
    source directory, and away from exportd's own data."""

    def __init__(self, rt: Runtime, root: str) -> None:
        self.root = os.path.realpath(root)
        self.policy = rt.policy
        self.own = rt.policy.reaches_own_data(root)

    def open(self, source: str) -> int:
        try:
            fd = os.open(source, os.O_RDONLY)
        except OSError as exc:
            raise SourceUnreadable(f"{os.path.basename(source)}: {exc.strerror}") from None
        try:
            real = _real_path(fd, source)
            if not (real == self.root or real.startswith(self.root + os.sep)):
                why = "the sample's file resolves outside the dataset's source directory"
                raise SourceUnreadable(why, "SOURCE_NOT_ALLOWED")
            if self.own and self.policy.is_own_file(real):
                raise SourceUnreadable(
                    "the sample's file is exportd's own data", "SOURCE_NOT_ALLOWED"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd


def _real_path(fd: int, source: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: resolve the name instead
        return os.path.realpath(source)


def copy_sample(target: Target, p: Placement, fd: int) -> list[dict[str, Any]]:
    """The sample's file (open as `fd`) to each of its targets (the second and later
    from the first, inside the storage), then its label file: what was written."""
    written: list[dict[str, Any]] = []
    first: str | None = None
    for rel in p.targets:
        key = target.prefix + rel
        if first is None:
            copied = target.storage.put_file(key, fd)
            first = key
        else:
            copied = target.storage.copy(first, key)
        written.append({"path": rel, "bytes": copied.bytes, "sha256": copied.sha256})
    if p.label_file is not None:
        body = label_file_body(p.sample)
        with target.storage.open_write(target.prefix + p.label_file, durable=False) as out:
            out.write(body)
        digest = hashlib.sha256(body).hexdigest()
        written.append({"path": p.label_file, "bytes": len(body), "sha256": digest, "label": True})
    return written


def s3(run: PartitionRun) -> Any:
    """The S3 source of the run's dataset (opened once per attempt)."""
    found = getattr(run, "_s3_source", None)
    if found is None:
        found = s3_source(str(run.dataset.options["s3"]))
        run._s3_source = found  # type: ignore[attr-defined]
    return found


def copy_from_s3(target: Target, source: Any, p: Placement) -> list[dict[str, Any]]:
    """A sample in an S3 source: a server-side copy into an S3 storage of the same
    service, else its bytes read and written (hashed on the way)."""
    from botocore.exceptions import ClientError

    from exportd.storage.s3 import S3Storage

    key = p.source[len(S3_SOURCE) :]
    dst = target.prefix + p.targets[0]
    try:
        if isinstance(target.storage, S3Storage) and target.storage.same_service(source):
            copied = target.storage.copy_from(source, key, dst)
        else:
            with source.open_read(key) as fh:
                data = fh.read()
            with target.storage.open_write(dst, durable=False) as out:
                out.write(data)
            copied = Copied(len(data), hashlib.sha256(data).hexdigest())
    except (FileNotFoundError, ClientError) as exc:
        raise SourceUnreadable(f"{key.rsplit('/', 1)[-1]}: {type(exc).__name__}") from None
    rest = Placement(p.sample, "", p.subset, p.targets[1:], p.label_file)
    first = {"path": p.targets[0], "bytes": copied.bytes, "sha256": copied.sha256}
    return [first, *_more(target, dst, rest)]


def _more(target: Target, first: str, p: Placement) -> list[dict[str, Any]]:
    """Copies after the first (inside the target storage) and the label file."""
    written = []
    for rel in p.targets:
        copied = target.storage.copy(first, target.prefix + rel)
        written.append({"path": rel, "bytes": copied.bytes, "sha256": copied.sha256})
    if p.label_file is not None:
        body = label_file_body(p.sample)
        with target.storage.open_write(target.prefix + p.label_file, durable=False) as out:
            out.write(body)
        digest = hashlib.sha256(body).hexdigest()
        written.append({"path": p.label_file, "bytes": len(body), "sha256": digest, "label": True})
    return written


def copy_pass(run: PartitionRun, hb: Heartbeat) -> None:
    """Stage 60: the partition's samples copied, then its index committed."""
    task, part, rt = run.task, run.part, run.rt
    placed = read_selection(rt, part.bounds["selection"])
    target = target_of(rt, task)
    dataset_root = run.dataset.options["root"]
    guard = _Guard(rt, dataset_root) if dataset_root else None  # none: an S3 source
    lines: list[bytes] = []
    done = failed = written = 0
    for p in placed:
        hb.check()
        entry: dict[str, Any] = {"id": p.id, "subset": p.subset}
        try:
            if p.source.startswith(S3_SOURCE):
                entry["files"] = copy_from_s3(target, s3(run), p)
            else:
                assert guard is not None, "a local sample in an S3 source's plan"
                fd = guard.open(p.source)
                try:
                    entry["files"] = copy_sample(target, p, fd)
                finally:
                    os.close(fd)
            done += 1
            written += sum(f["bytes"] for f in entry["files"])
        except SourceUnreadable as exc:
            entry.update(error_code=exc.error_code, error_msg=exc.error_msg[:500])
            failed += 1
        lines.append(orjson.dumps(entry) + b"\n")
        hb.progress(done, written)
        if rt.settings.debug_pause_per_sample:
            time.sleep(rt.settings.debug_pause_per_sample)
    if rt.settings.debug_pause_before_commit:
        time.sleep(rt.settings.debug_pause_before_commit)
    hb.check()
    _commit(run, lines, done, written)


def _commit(run: PartitionRun, lines: list[bytes], done: int, written: int) -> None:
    task, part, lease, rt = run.task, run.part, run.lease, run.rt
    folder = part_folder(task, part, lease)
    key = folder + "index.jsonl"
    committed = False
    try:
        body = b"".join(lines)
        with rt.storage.open_write(key, durable=False) as out:
            out.write(body)
        committed = rt.store.commit_partition(
            task.task_id, part.index, lease.token, key, done, written,
            hashlib.sha256(body).hexdigest(),
        )  # fmt: skip
        if not committed:
            log.warning("%s: lease lost before commit", run.where)
    finally:
        if not committed:
            discard(run, folder)


def read_index(storage: Storage, key: str) -> list[dict[str, Any]]:
    with storage.open_read(key) as fh:
        return [orjson.loads(line) for line in fh if line.strip()]
