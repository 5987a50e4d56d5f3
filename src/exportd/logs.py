"""The process's log lines: plain text (the default) or one JSON object a line
(`EXPORTD_LOG_FORMAT=json`), and in both the unit of work they were written in: every
line emitted while a worker runs a partition or a coordinator step carries `task_id`
(and `partition`), from context variables set by `exportd.execution`.

The JSON formatter is a small one over the standard `json` module (neither
python-json-logger nor structlog is a dependency): keys `time` (UTC, ISO 8601),
`level`, `logger`, `message`, `process`, `thread`, the unit of work's ids when there is
one, and `exc_info` (the traceback as text) for exceptions."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

TASK_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
PARTITION: contextvars.ContextVar[int | None] = contextvars.ContextVar("partition", default=None)
UNIT: contextvars.ContextVar[str | None] = contextvars.ContextVar("unit", default=None)

FORMATS = ("text", "json")


@contextmanager
def unit_of_work(
    task_id: str, partition: int | None = None, unit: str = "partition"
) -> Iterator[None]:
    """Every log line of the block (in this thread) names the task and the partition."""
    tokens = (TASK_ID.set(task_id), PARTITION.set(partition), UNIT.set(unit))
    try:
        yield
    finally:
        UNIT.reset(tokens[2])
        PARTITION.reset(tokens[1])
        TASK_ID.reset(tokens[0])


class ContextFilter(logging.Filter):
    """Puts the unit of work's ids on each record (`task_id`, `partition`, `unit`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = TASK_ID.get()
        record.partition = PARTITION.get()
        record.unit = UNIT.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line; ids of the unit of work only when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key in ("task_id", "partition", "unit"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with `[task_id/partition]` on the lines of a unit of work."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(where)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        task_id, part = getattr(record, "task_id", None), getattr(record, "partition", None)
        where = "" if task_id is None else f"[{task_id}{'' if part is None else f'/{part}'}] "
        record.where = where
        return super().format(record)


def configure(fmt: str | None = None, level: int = logging.INFO) -> None:
    """Log to stderr in `fmt` (`text` or `json`; default: `EXPORTD_LOG_FORMAT`, else
    text), replacing the root logger's handlers; uvicorn's own loggers go through the
    root too, so that in JSON mode every line of the process is JSON."""
    fmt = (fmt or os.environ.get("EXPORTD_LOG_FORMAT") or "text").strip().lower()
    if fmt not in FORMATS:
        msg = f"unknown log format {fmt!r}: one of {', '.join(FORMATS)}"
        raise ValueError(msg)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


UVICORN_LOG_CONFIG: dict[str, Any] = {  # uvicorn keeps the root's handlers (ours)
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "uvicorn": {"level": "INFO", "propagate": True},
        "uvicorn.error": {"level": "INFO", "propagate": True},
        "uvicorn.access": {"level": "INFO", "propagate": True},
    },
}
