"""Pure decisions: allowed moves, retries, the final outcome, filter validation."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from exportd.errors import BadRequest
from exportd.model import TERMINAL_STATUSES, TaskStatus
from exportd.model.lifecycle import TASK_MOVES, finish_outcome, retry_decision
from exportd.sources.filters import compile_filter, validate_filter


def test_no_move_leaves_a_terminal_status() -> None:
    assert all(src not in TERMINAL_STATUSES for src, _ in TASK_MOVES)
    reachable = {dst for _, dst in TASK_MOVES}
    assert reachable >= TERMINAL_STATUSES


def test_retry_backoff_then_give_up() -> None:
    assert [retry_decision(a, 4, 1.0).delay_seconds for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert retry_decision(4, 4, 1.0).retry is False


@pytest.mark.parametrize(
    ("done", "failed", "allow", "rate", "status"),
    [
        (4, 0, False, 1.0, TaskStatus.COMPLETED),
        (3, 1, False, 1.0, TaskStatus.FAILED),
        (3, 1, True, 1.0, TaskStatus.COMPLETED_WITH_ERRORS),
        (3, 1, True, 0.2, TaskStatus.FAILED),  # 25% failed > 20% allowed
        (0, 4, True, 1.0, TaskStatus.FAILED),  # nothing succeeded: no partial success
    ],
)
def test_finish_outcome(
    done: int, failed: int, allow: bool, rate: float, status: TaskStatus
) -> None:
    out = finish_outcome(done, failed, 0, allow, rate)
    assert out.status is status
    assert out.success_rate == pytest.approx(100 * done / (done + failed))


KINDS = {"id": "int", "origin": "str", "delay": "float", "day": "date"}


def test_filter_values_are_coerced_and_bound() -> None:
    f = validate_filter([{"id": {"gte": "10"}, "day": {"lt": "2013-02-01"}}], KINDS)
    assert f[0]["id"]["gte"] == 10
    t = sa.table("t", *[sa.column(c) for c in KINDS])
    sql = compile_filter(f, lambda c: t.c[c]).compile(compile_kwargs={})
    assert "10" not in str(sql) and set(sql.params.values()) >= {10}


@pytest.mark.parametrize(
    "bad",
    [
        [{"id": {"eq": [1]}}],
        [{"id": {"eq": None}}],
        [{"origin": {"like": 5}}],
        [{"day": {"eq": "yesterday"}}],
        [{"id": {"in": list(range(20_000))}}],
        [{}],
        [[]],
        [{"id": {}}],
    ],
)
def test_bad_filters(bad: object) -> None:
    with pytest.raises(BadRequest):
        validate_filter(bad, KINDS)
