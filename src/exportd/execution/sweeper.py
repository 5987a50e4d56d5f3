"""The sweeper: finds what the storage holds that no task needs any more, and removes it.

Every task cleans up after itself as durable work (the coordinator's cleanup, due from
the task's terminal commit until the storage confirms it). The sweeper is the net below:
it lists the whole storage now and then, reads the task id off each key, asks the store
what those tasks are, and removes

- parts (`parts/{task}/...`) of tasks that are terminal, or unknown to the store and
  older than the grace period (a task deleted, or a crash between its records and files);
- the files of a task's output folder (`.../{task}/{name}`, and a samples export's
  tree below it) when the task is terminal
  and its files are not GENERATED (FAILED, CANCELED, TIMEOUT, expired), or when the store
  does not know the task and they are older than the grace period;
- temporary files (`.name.<hex>.tmp`, a write a crash cut short) older than the grace
  period, whatever their task;
- open multipart uploads of those same tasks, and any upload older than
  `abort_uploads_after`.

- the consistent copies of SQLite sources in this host's snapshot directory that no task
  reads any more (`sweep_copies`).

It never touches a live task's parts or a GENERATED task's files (only their temporary
files past the grace period), nor any key it cannot read a task id from."""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from exportd.model import FileStatus
from exportd.runtime import Runtime
from exportd.sources.sql import COPY_SUFFIX, copy_owner
from exportd.storage import is_temporary
from exportd.store import SQLITE_COPY_PREFIX

log = logging.getLogger(__name__)

TASK_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Found:
    """A key of the storage, the task it belongs to, and whether it is a part."""

    key: str
    task_id: str
    is_part: bool


def owner(key: str) -> Found | None:
    """Whose key this is: `parts/{task}/...` or `.../{task}/{file}`, or a samples export's
    `.../{task}/{label}/{file}` and `.../{task}/{train|eval}/{label}/{file}`; None for
    any other."""
    segments = key.split("/")
    if len(segments) >= 3 and segments[0] == "parts" and TASK_ID.match(segments[1]):
        return Found(key, segments[1], True)
    if segments[0] == "parts":
        return None
    for depth in (2, 3, 4):  # the nearest task folder above the file
        if len(segments) >= depth and TASK_ID.match(segments[-depth]):
            return Found(key, segments[-depth], False)
    return None


class Sweeper:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def sweep(self) -> dict[str, int]:
        """One pass over the storage; returns how many objects and uploads went."""
        storage, grace = self.rt.storage, self.rt.settings.sweep_grace_seconds
        now = datetime.now(UTC)
        old = now - timedelta(seconds=grace)
        objects = [(o.key, o.modified) for o in storage.scan("")]
        uploads = list(storage.uploads(""))
        found = {o.key: o for key, _ in objects if (o := owner(key)) is not None}
        found.update({u.key: o for u in uploads if (o := owner(u.key)) is not None})
        states = self.rt.store.task_states({f.task_id for f in found.values()})

        def orphan(key: str, modified: datetime) -> bool:
            if is_temporary(key) and modified < old:
                return True
            f = found.get(key)
            if f is None:
                return False
            state = states.get(f.task_id)
            if state is None:  # a task the store does not know: deleted, or not ours
                return modified < old
            status, file_status = state
            if not status.is_terminal:
                return False
            return f.is_part or file_status is not FileStatus.GENERATED

        doomed = [key for key, modified in objects if orphan(key, modified)]
        for key in doomed:
            storage.delete(key)
        stale = now - timedelta(seconds=self.rt.settings.abort_uploads_after)
        aborted = [u for u in uploads if orphan(u.key, u.initiated) or u.initiated <= stale]
        for up in aborted:
            storage.abort_upload(up)
        kinds = Counter("parts" if key.startswith("parts/") else "outputs" for key in doomed)
        return {
            "parts_swept": kinds["parts"],
            "outputs_swept": kinds["outputs"],
            "uploads_aborted": len(aborted),
            "copies_swept": self.sweep_copies(old),
        }

    def sweep_copies(self, old: datetime) -> int:
        """The SQLite copies (docs/consistency.md) in this host's snapshot directory
        that no task reads any more: of a terminal task, of a task the store does not
        know, or not the task's current snapshot (an earlier planning's, a copy half
        written by a crash), the last two only past the grace period."""
        directory = self.rt.settings.snapshot_path
        if not directory.is_dir():
            return 0
        files = []
        for path in directory.iterdir():
            task_id = copy_owner(path.name)
            if task_id is not None:
                with contextlib.suppress(FileNotFoundError):
                    files.append((path, task_id, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        states = self.rt.store.copy_states({task_id for _, task_id, _ in files})
        gone = 0
        for path, task_id, modified in files:
            state = states.get(task_id)
            snapshot = SQLITE_COPY_PREFIX + path.name.removesuffix(COPY_SUFFIX)
            current = state is not None and state[1] == snapshot
            if (state is not None and state[0].is_terminal) or (not current and modified < old):
                path.unlink(missing_ok=True)
                gone += 1
        return gone
