"""One partition of a samples export: each planned sample's file copied to its targets
by the storage (on a local disk in place, read once and hashed from the same bytes; an
upload or a server-side copy on S3), its label file written beside it (tile), in
batches; then the target file system synced once, and the partition's fragments of the
manifest and version file (paths, sizes, sha256; why a sample failed) with a small
index of them committed, fenced by the lease.

Targets are fixed by the plan, so an attempt run again (after a kill, a lost lease)
writes the very same files whole over the first attempt's: each sample ends up in the
result exactly once. A sample whose file is missing or unreadable is a failed item (in
the manifest, and in the partition's row for the status), not a failed partition."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from exportd import metrics
from exportd.execution.heartbeat import Heartbeat
from exportd.execution.partition import PartitionRun, discard, part_folder
from exportd.execution.samples.planning import read_selection, spec_of
from exportd.model import Task
from exportd.runtime import Runtime
from exportd.sources.samples import S3_SOURCE, TRAIN, Placement, label_file_body, s3_source
from exportd.storage import Copied, SourceUnreadable, Storage
from exportd.storage.keys import output_prefix
from exportd.storage.local import LocalStorage

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


BATCH = 256  # samples copied between two checks of the lease, ridden out as one
FAILED_LISTED = 1000  # failed samples of a partition named in its row (all in the manifest)


@dataclass
class Fragments:
    """What a partition renders for the end of its task, sample by sample in plan
    order, so that the coordinator only concatenates (`compose`): the manifest's file
    entries (`files`), the version file's lines (`version`: JSON Lines, or CSV rows
    without the header), the new dataset's manifest lines (`dataset`, NEW_DATASET with
    CSV only: else the version lines are those), the failed samples (`failed`)."""

    files: BinaryIO
    version: BinaryIO
    dataset: BinaryIO | None
    failed: BinaryIO
    csv_: bool
    done: int = 0
    errors: int = 0
    train: int = 0
    written: int = 0
    entries: int = 0  # file entries rendered (a separator before each but the first)
    failures: int = 0
    listed: list[dict[str, Any]] = field(default_factory=list)  # the first failed samples

    def add(self, p: Placement, files: list[dict[str, Any]]) -> None:
        self.done += 1
        self.train += p.subset == TRAIN
        out = bytearray()
        for f in files:
            self.written += f["bytes"]
            entry = {
                "name": f["path"], "bytes": f["bytes"], "sha256": f["sha256"],
                "sample_id": p.id, "subset": p.subset,
            }  # fmt: skip
            if f.get("label"):
                entry["label_file"] = True
            out += (b",\n    " if self.entries else b"    ") + orjson.dumps(entry)
            self.entries += 1
        self.files.write(out)
        line = orjson.dumps(exported_sample(p)) + b"\n"
        self.version.write(csv_rows([p]) if self.csv_ else line)
        if self.dataset is not None:
            self.dataset.write(line)

    def fail(self, entry: dict[str, Any]) -> None:
        if len(self.listed) < FAILED_LISTED:  # the status's failed_items: key, code, message
            code, msg = entry["error_code"], entry["error_msg"]
            self.listed.append({"key": entry["id"], "error_code": code, "error_msg": msg})
        self.errors += 1
        sep = b",\n    " if self.failures else b"    "
        self.failed.write(sep + orjson.dumps(entry))
        self.failures += 1


def exported_sample(p: Placement) -> dict[str, Any]:
    """The sample as exported, its source now its (first) file in the export."""
    return {**p.sample, "source": p.targets[0]}


CSV_COLUMNS = (
    "id",
    "file",
    "subset",
    "labels",
    "label_types",
    "state",
    "labeler",
    "hard",
    "sample_time",
    "metadata",
)


def csv_rows(placed: list[Placement], header: bool = False) -> bytes:
    """The version file's CSV rows of exported samples (and its header)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CSV_COLUMNS)
    for pl in placed:
        s = pl.sample
        labels = s.get("labels") or []
        w.writerow(
            [
                pl.id,
                pl.targets[0],
                pl.subset,
                ";".join(lb["name"] for lb in labels),
                ";".join(str(lb.get("type", 0)) for lb in labels),
                s.get("state") or "",
                s.get("labeler") or "",
                int(bool(s.get("hard"))),
                s.get("sample_time") or "",
                orjson.dumps(s["metadata"]).decode() if s.get("metadata") else "",
            ]
        )
    return buf.getvalue().encode()


def _unreadable(exc: SourceUnreadable, p: Placement) -> dict[str, Any]:
    return {
        "id": p.id, "subset": p.subset,
        "error_code": exc.error_code, "error_msg": exc.error_msg[:500],
    }  # fmt: skip


def forget_targets(target: Target, p: Placement) -> None:
    """A sample that failed: whatever an earlier attempt wrote of it is removed (the
    folder holds the files of the exported samples only)."""
    for rel in [*p.targets, *([p.label_file] if p.label_file else [])]:
        target.storage.delete(target.prefix + rel)


Result = tuple[Placement, list[dict[str, Any]] | dict[str, Any]]  # its files, or its failure


def _local_batch(target: Target, guard: _Guard, batch: list[Placement]) -> list[Result]:
    """A batch of samples of this host's disk copied: each its files, or its failure."""
    out: list[Result] = []
    for p in batch:
        try:
            fd = guard.open(p.source)
            try:
                out.append((p, copy_sample(target, p, fd)))
            finally:
                os.close(fd)
        except SourceUnreadable as exc:
            forget_targets(target, p)
            out.append((p, _unreadable(exc, p)))
    return out


def _batch(
    run: PartitionRun, target: Target, guard: _Guard | None, batch: list[Placement]
) -> list[Result]:
    """One batch, sample by sample (an S3 source or target: each call rides out its own
    outages)."""
    out: list[Result] = []
    for p in batch:
        try:
            if p.source.startswith(S3_SOURCE):
                out.append((p, copy_from_s3(target, s3(run), p)))
            else:
                assert guard is not None, "a local sample in an S3 source's plan"
                out.append(_local_batch(target, guard, [p])[0])
        except SourceUnreadable as exc:
            forget_targets(target, p)
            out.append((p, _unreadable(exc, p)))
    return out


def copy_pass(run: PartitionRun, hb: Heartbeat) -> None:
    """Stage 60: the partition's samples copied, batch by batch (on a local disk a
    batch that meets an outage of the storage is ridden out and copied again whole: its
    targets are fixed, so nothing is copied twice), then the target's file system
    synced once, then its fragments and index committed."""
    task, part, rt = run.task, run.part, run.rt
    placed = read_selection(rt, part.bounds["selection"])
    target = target_of(rt, task)
    dataset_root = run.dataset.options["root"]
    guard = _Guard(rt, dataset_root) if dataset_root else None  # none: an S3 source
    spec = spec_of(task)
    folder = part_folder(task, part, lease=run.lease)
    committed = False
    try:
        with ExitStack() as files:

            def part_file(name: str) -> BinaryIO:
                return files.enter_context(rt.storage.open_write(folder + name))

            csv_ = spec.version_format == "CSV"
            new = spec.export_dest == "NEW_DATASET"
            frags = Fragments(
                part_file("files.part"), part_file("version.part"),
                part_file("dataset.part") if new and csv_ else None,
                part_file("failed.part"), csv_,
            )  # fmt: skip
            pause = rt.settings.debug_pause_per_sample
            step = 1 if pause else BATCH
            for start in range(0, len(placed), step):
                hb.check()
                batch = placed[start : start + step]
                if isinstance(target.storage, LocalStorage) and guard is not None:
                    results = target.storage.redo_on_outage(
                        partial(_local_batch, target, guard, batch), "copying samples"
                    )
                else:
                    results = _batch(run, target, guard, batch)
                for p, res in results:
                    if isinstance(res, list):
                        frags.add(p, res)
                    else:
                        frags.fail(res)
                hb.progress(frags.done, frags.written)
                if pause:
                    time.sleep(pause)
        if isinstance(target.storage, LocalStorage):
            target.storage.sync()  # the copies durable before the commit says they exist
        if rt.settings.debug_pause_before_commit:
            time.sleep(rt.settings.debug_pause_before_commit)
        hb.check()
        committed = _commit(run, folder, frags)
    finally:
        if not committed:
            discard(run, folder)


def _commit(run: PartitionRun, folder: str, frags: Fragments) -> bool:
    task, part, lease, rt = run.task, run.part, run.lease, run.rt
    key = folder + "index.json"
    summary = {
        "done": frags.done, "failed": frags.errors, "train": frags.train,
        "written": frags.written, "entries": frags.entries,
        "files": folder + "files.part", "version": folder + "version.part",
        "dataset": folder + ("dataset.part" if frags.dataset is not None else "version.part"),
        "failed_items": folder + "failed.part",
    }  # fmt: skip
    body = orjson.dumps(summary)
    with rt.storage.open_write(key) as out:
        out.write(body)
    committed = rt.store.commit_partition(
        task.task_id, part.index, lease.token, key, frags.done, frags.written,
        hashlib.sha256(body).hexdigest(),
        failed_items=frags.listed or None, failed_count=frags.errors,
    )  # fmt: skip
    if committed:
        metrics.committed(frags.done, frags.written)
    else:
        metrics.fenced()
        log.warning("%s: lease lost before commit", run.where)
    return committed


def read_index(storage: Storage, key: str) -> dict[str, Any]:
    """A committed partition's summary: its counts and the keys of its fragments."""
    with storage.open_read(key) as fh:
        found: dict[str, Any] = orjson.loads(fh.read())
        return found
