"""Pure parts of the live-progress stream and of the input guard."""

from __future__ import annotations

from typing import Any

import orjson

from exportd.api.guard import url_holds_nul
from exportd.api.sse import change_kind, format_event, snapshot
from exportd.model import Partition, PartitionStatus, Stage, TaskStatus
from tests.records import make_task


def _snap(**over: Any) -> dict[str, Any]:
    return snapshot(make_task(**over))


def test_change_kinds() -> None:
    base = _snap(status=TaskStatus.RUNNING, stage=Stage.GETTING_TOTAL)
    assert change_kind(None, base) == "status"
    assert change_kind(base, base) is None
    assert (
        change_kind(base, _snap(status=TaskStatus.CANCELING, stage=Stage.GETTING_TOTAL)) == "status"
    )
    assert change_kind(base, _snap(status=TaskStatus.RUNNING, stage=Stage.EXPORTING)) == "stage"
    moved = _snap(status=TaskStatus.RUNNING, stage=Stage.GETTING_TOTAL, finished_count=5)
    assert change_kind(base, moved) == "progress"
    part = Partition("t", 0, PartitionStatus.PENDING, Stage.NOT_STARTED, {})
    with_part = _snap(status=TaskStatus.RUNNING, stage=Stage.EXPORTING, partitions=[part])
    claimed = Partition("t", 0, PartitionStatus.RUNNING, Stage.EXPORTING, {})
    after = _snap(status=TaskStatus.RUNNING, stage=Stage.EXPORTING, partitions=[claimed])
    assert change_kind(with_part, after) == "stage"
    only_time = dict(base, update_time="later")
    assert change_kind(base, only_time) is None


def test_snapshot_carries_both_stage_shapes() -> None:
    snap = _snap(status=TaskStatus.RUNNING, stage=Stage.EXPORTING)
    assert snap["current_state"] == {"status_id": 60, "status": "Exporting..."}
    assert snap["currentState"] == {"statusId": 60, "status": "Exporting..."}


def test_format_event() -> None:
    raw = format_event("progress", {"a": "x\ny"}, 7)
    assert raw.startswith(b"id: 7\nevent: progress\ndata: ") and raw.endswith(b"\n\n")
    data = raw.split(b"data: ", 1)[1].rstrip(b"\n")
    assert b"\n" not in data and orjson.loads(data) == {"a": "x\ny"}


def test_nul_detection() -> None:
    assert url_holds_nul({"path": "/v1/a\x00b", "query_string": b""})
    assert url_holds_nul({"path": "/v1", "query_string": b"file_name=a%00b"})
    assert not url_holds_nul({"path": "/v1", "query_string": b"file_name=a%2500b"})
