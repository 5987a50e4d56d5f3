"""The outcome of a task counted in items (rows): model.lifecycle.item_outcome."""

from __future__ import annotations

import pytest

from exportd.model import TaskStatus
from exportd.model.lifecycle import finish_outcome, item_outcome

ALL_DONE = finish_outcome(4, 0, 0, True, 1.0)


def test_no_failed_row_keeps_the_partitions_outcome() -> None:
    assert item_outcome(ALL_DONE, 100, 0, 0, True, 0.1) == ALL_DONE


@pytest.mark.parametrize(
    ("allow", "max_rate", "status", "code"),
    [
        (True, 0.1, TaskStatus.COMPLETED_WITH_ERRORS, "PARTIAL_FAILURE"),
        (True, 0.0, TaskStatus.FAILED, "ROWS_FAILED"),  # 3 of 300,000 > 0 %
        (False, 1.0, TaskStatus.FAILED, "ROWS_FAILED"),
    ],
)
def test_failed_rows_in_committed_partitions(
    allow: bool, max_rate: float, status: TaskStatus, code: str
) -> None:
    out = item_outcome(ALL_DONE, 299_997, 0, 3, allow, max_rate)
    assert (out.status, out.error_code) == (status, code)
    assert out.success_rate == pytest.approx(100 * 299_997 / 300_000)
    assert "3 of 300000 rows failed" in (out.error_msg or "")


def test_a_failed_partition_counts_its_rows_in_the_rate() -> None:
    parts = finish_outcome(3, 1, 0, True, 1.0)
    out = item_outcome(parts, 3000, 1000, 0, True, 1.0)
    assert out.status is TaskStatus.COMPLETED_WITH_ERRORS
    assert out.success_rate == pytest.approx(75.0)
    failed = finish_outcome(3, 1, 0, False, 1.0)
    assert item_outcome(failed, 3000, 1000, 5, True, 1.0).status is TaskStatus.FAILED
