"""Where a task's objects live in storage: parts under `parts/{task}/`, outputs under the
project's root (`exports/{project}` unless the administrator set another), optionally
below a destination prefix the caller chose, then the task id. Prefixes are checked
segment by segment so that nothing a caller sends can climb out of its project's root."""

from __future__ import annotations

import re

from exportd.errors import BadRequest
from exportd.model import Task
from exportd.model.names import MAX_SEGMENTS, PREFIX_PATTERN

_PREFIX = re.compile(PREFIX_PATTERN)


def check_prefix(value: str, code: str = "INVALID_DESTINATION") -> str:
    """A relative prefix `a/b/c` of plain segments (letters, digits, `._=-`, not starting
    with a dot): no `..`, no absolute path, no empty segment, no backslash. 400 otherwise."""
    if not _PREFIX.fullmatch(value):
        raise BadRequest(
            f"a storage prefix is 1-{MAX_SEGMENTS} '/'-separated segments of letters, digits "
            "and ._=- (each starting with a letter or digit; no '..', no leading '/')",
            code,
        )
    return value


def check_project_root(project_id: str, value: str) -> str:
    """The administrator's root for a project: a valid prefix that stays clear of the
    parts area and of the other projects' default roots."""
    check_prefix(value, "INVALID_STORAGE_PREFIX")
    first, *rest = value.split("/")
    if first == "parts" or (first == "exports" and rest[:1] != [project_id]):
        raise BadRequest(
            "storage_prefix may not be under parts/ nor under another project's exports/",
            "INVALID_STORAGE_PREFIX",
        )
    return value


def project_root(project_id: str, project_settings: dict[str, object]) -> str:
    root = project_settings.get("storage_prefix")
    return root if isinstance(root, str) and root else f"exports/{project_id}"


def output_prefix_for(root: str, destination: str | None, task_id: str) -> str:
    return "/".join(p for p in (root, destination, task_id) if p) + "/"


def output_prefix(task: Task) -> str:
    """The folder of a task's outputs (fixed when it was submitted)."""
    return task.plan.output.prefix


def parts_prefix(task: Task) -> str:
    return f"parts/{task.task_id}/"
