"""The model: lifecycles as enums (`status`), the records the store hands out (`records`),
the allowed moves and pure decisions (`lifecycle`), what callers send (`requests`) and
the typed plan a task follows (`plan`). It imports nothing else of exportd."""

from __future__ import annotations

from exportd.model.plan import DatasetKind, DocumentMode, ExportPlan, TaskKind
from exportd.model.records import Dataset, FileRecord, Lease, Notification, Partition, Task
from exportd.model.status import (
    ACTIVE_STATUSES,
    STAGE_TEXTS,
    TERMINAL_STATUSES,
    Channel,
    FileStatus,
    NotificationStatus,
    PartitionPhase,
    PartitionStatus,
    Role,
    Stage,
    TaskStatus,
)

__all__ = [
    "ACTIVE_STATUSES",
    "STAGE_TEXTS",
    "TERMINAL_STATUSES",
    "Channel",
    "Dataset",
    "DatasetKind",
    "DocumentMode",
    "ExportPlan",
    "FileRecord",
    "FileStatus",
    "Lease",
    "Notification",
    "NotificationStatus",
    "Partition",
    "PartitionPhase",
    "PartitionStatus",
    "Role",
    "Stage",
    "Task",
    "TaskKind",
    "TaskStatus",
]
