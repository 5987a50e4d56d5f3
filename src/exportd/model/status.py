"""Every lifecycle of exportd as an enum: task statuses, partition statuses and phases,
file statuses, notification statuses and channels, seed 000's stages, token roles.
Signatures take these members; nothing compares bare strings."""

from __future__ import annotations

import enum
from typing import Any


class TaskStatus(enum.StrEnum):
    """Lifecycle of an export task (docs/architecture.md, "Task lifecycle")."""

    PENDING = "PENDING"  # accepted, waiting for a worker
    RUNNING = "RUNNING"  # being executed; see the stage
    CANCELING = "CANCELING"  # cancel requested; workers stop and clean up
    COMPLETED = "COMPLETED"  # every selected object was exported
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"  # partial success, allowed by the request
    FAILED = "FAILED"  # could not complete; error_code says why
    CANCELED = "CANCELED"  # canceled by a user
    TIMEOUT = "TIMEOUT"  # exceeded its time limit

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.COMPLETED_WITH_ERRORS,
        TaskStatus.FAILED,
        TaskStatus.CANCELED,
        TaskStatus.TIMEOUT,
    }
)


ACTIVE_STATUSES = frozenset(set(TaskStatus) - TERMINAL_STATUSES)


class PartitionStatus(enum.StrEnum):
    """Lifecycle of one partition (a key range processed under a lease)."""

    PENDING = "PENDING"  # waiting to be claimed (first time, or again after a retry/reclaim)
    RUNNING = "RUNNING"  # claimed under a lease
    WAITING = "WAITING"  # header pass committed; waits for the merged header (stages 40, 50)
    DONE = "DONE"  # its part is committed and will be in the result
    FAILED = "FAILED"  # gave up after its attempts; error_code says why
    CANCELED = "CANCELED"  # the task was canceled or timed out before it finished

    @property
    def is_terminal(self) -> bool:
        return self in (PartitionStatus.DONE, PartitionStatus.FAILED, PartitionStatus.CANCELED)


class PartitionPhase(enum.StrEnum):
    """Which pass over its objects a partition is in. Only documents exported to a flat
    format (CSV) need a header pass: their columns are not known from a schema."""

    HEADERS = "HEADERS"  # collect the flattened keys of its documents (stage 20)
    EXPORT = "EXPORT"  # write its objects into a part (stage 60)


class FileStatus(enum.StrEnum):
    """Lifecycle of a task's output files (docs/delivery.md, "Download links and expiry")."""

    PREPARING = "PREPARING"  # not yet written
    GENERATED = "GENERATED"  # complete and downloadable
    DELETED = "DELETED"  # expired or deleted
    FAILED = "FAILED"  # generation or upload failed


class NotificationStatus(enum.StrEnum):
    """Delivery of one notification (a webhook call or an email to one address)."""

    PENDING = "PENDING"  # waiting for its (next) attempt
    DELIVERED = "DELIVERED"  # the receiver accepted it (2xx; SMTP accepted)
    FAILED = "FAILED"  # gave up after its attempts; the export's own status is unaffected


class Channel(enum.StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Stage(enum.IntEnum):
    """`current_state`: the stage of a task or partition, numbers and texts as seed 000."""

    NOT_STARTED = 0
    GETTING_TOTAL = 10
    CREATING_HEADERS = 20
    MERGING_HEADERS = 30
    WAIT_PARALLEL_HEADERS = 40
    WAIT_MASTER_MERGE = 50
    EXPORTING = 60
    COMPLETING_UPLOAD = 70
    WRITING_MANIFEST = 80
    COMPLETED = 90

    @property
    def text(self) -> str:
        return STAGE_TEXTS[self]

    def as_json(self) -> dict[str, Any]:
        return {"status_id": int(self), "status": self.text}


STAGE_TEXTS: dict[Stage, str] = {
    Stage.NOT_STARTED: "Not started yet...",
    Stage.GETTING_TOTAL: "Getting total...",
    Stage.CREATING_HEADERS: "Creating headers for CSV file...",
    Stage.MERGING_HEADERS: "Merging headers for CSV file...",
    Stage.WAIT_PARALLEL_HEADERS: "Wait till parallel tasks create headers for CSV file ...",
    Stage.WAIT_MASTER_MERGE: "Wait till master task merge all headers for CSV file ...",
    Stage.EXPORTING: "Exporting...",
    Stage.COMPLETING_UPLOAD: "Completing upload",
    Stage.WRITING_MANIFEST: "Writing manifest, preparing urls, sending emails...",
    Stage.COMPLETED: "Completed",
}


IMPORT_STAGE_TEXTS: dict[Stage, str] = {
    **STAGE_TEXTS,
    Stage.GETTING_TOTAL: "Counting rows to import...",
    Stage.EXPORTING: "Importing: validating and loading rows...",
    Stage.COMPLETING_UPLOAD: "Publishing the import into the table",
    Stage.WRITING_MANIFEST: "Writing the import's error report and manifest, sending emails...",
    Stage.COMPLETED: "Import completed",
}
"""An import's stages: seed 000's numbers, texts that say what an import does there."""


class Role(enum.StrEnum):
    """What a project token may do."""

    READER = "reader"  # view and download
    WRITER = "writer"  # also create, cancel and delete exports
    ADMIN = "admin"  # also manage datasets and tokens of its project

    def allows(self, needed: Role) -> bool:
        order = [Role.READER, Role.WRITER, Role.ADMIN]
        return order.index(self) >= order.index(needed)
