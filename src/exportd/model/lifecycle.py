"""The allowed moves of every lifecycle, and the decisions taken on them as pure functions.

The store enforces these tables with guarded updates (`WHERE status IN (:allowed_from)`),
so an illegal move cannot happen on SQLite or PostgreSQL, whoever attempts it."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from exportd.model import PartitionStatus as P
from exportd.model import TaskStatus as T
from exportd.retrying import backoff

TASK_MOVES: frozenset[tuple[T, T]] = frozenset(
    {
        (T.PENDING, T.RUNNING),  # coordinator claimed it and planned partitions
        (T.PENDING, T.CANCELED),  # canceled before any work existed
        (T.PENDING, T.FAILED),  # planning failed (source unreachable, bad dataset)
        (T.PENDING, T.TIMEOUT),  # waited past its deadline
        (T.RUNNING, T.CANCELING),  # cancel requested while partitions run
        (T.RUNNING, T.COMPLETED),  # every partition committed, file assembled
        (T.RUNNING, T.COMPLETED_WITH_ERRORS),  # some failed, within allow_partial's rate
        (T.RUNNING, T.FAILED),  # partitions failed and partial success is not allowed
        (T.RUNNING, T.TIMEOUT),  # deadline passed
        (T.CANCELING, T.CANCELED),  # workers stopped, parts cleaned up
        (T.CANCELING, T.TIMEOUT),  # deadline passed while canceling
    }
)

PARTITION_MOVES: frozenset[tuple[P, P]] = frozenset(
    {
        (P.PENDING, P.RUNNING),  # claimed under a lease
        (P.PENDING, P.CANCELED),  # task canceled / timed out / failed before it ran
        (P.RUNNING, P.DONE),  # fenced commit of its part
        (P.RUNNING, P.WAITING),  # fenced commit of its header pass (documents -> CSV)
        (P.WAITING, P.PENDING),  # the coordinator merged the headers: open for export
        (P.WAITING, P.CANCELED),  # task canceled / timed out / failed while it waited
        (P.RUNNING, P.PENDING),  # retry after an error, or reclaim after an expired lease
        (P.RUNNING, P.FAILED),  # out of attempts
        (P.RUNNING, P.CANCELED),  # observed cancellation and stopped
        (P.DONE, P.PENDING),  # its snapshot was lost: read again under a fresh one
    }
)


def task_sources(target: T) -> list[T]:
    """Statuses from which a task may move to `target`."""
    return sorted(src for src, dst in TASK_MOVES if dst == target)


def partition_sources(target: P) -> list[P]:
    """Statuses from which a partition may move to `target`."""
    return sorted(src for src, dst in PARTITION_MOVES if dst == target)


RETRY_CAP_SECONDS = 60.0  # the longest wait between two attempts of one unit of work


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float


def retry_decision(attempt: int, max_attempts: int, base_delay: float) -> RetryDecision:
    """After a failed attempt number `attempt` (1-based): retry with exponential backoff,
    or give up once `max_attempts` have been spent."""
    if attempt >= max_attempts:
        return RetryDecision(retry=False, delay_seconds=0.0)
    return RetryDecision(retry=True, delay_seconds=backoff(attempt, base_delay, RETRY_CAP_SECONDS))


@dataclass(frozen=True)
class Outcome:
    status: T
    error_code: str | None
    error_msg: str | None
    success_rate: float


def finish_outcome(
    done: int, failed: int, canceled: int, allow_partial: bool, max_error_rate: float
) -> Outcome:
    """The terminal status of a task whose partitions have all stopped."""
    total = done + failed + canceled
    rate = 100.0 * done / total if total else 100.0
    if failed == 0 and canceled == 0:
        return Outcome(T.COMPLETED, None, None, rate)
    error_rate = (failed + canceled) / total
    if allow_partial and done > 0 and error_rate <= max_error_rate:
        msg = f"{failed} of {total} partitions failed; success rate {rate:.1f}%"
        return Outcome(T.COMPLETED_WITH_ERRORS, "PARTIAL_FAILURE", msg, rate)
    if allow_partial:
        msg = (
            f"{failed} of {total} partitions failed: error rate {100 * error_rate:.1f}% "
            f"exceeds the allowed {100 * max_error_rate:.1f}%"
        )
    else:
        msg = f"{failed} of {total} partitions failed and allow_partial is not set"
    return Outcome(T.FAILED, "PARTITIONS_FAILED", msg, rate)


def item_outcome(
    parts: Outcome, delivered: int, failed_rows: int, failed_items: int,
    allow_partial: bool, max_error_rate: float,
) -> Outcome:  # fmt: skip
    """The outcome counted in items (rows): `delivered` rows are in the result, while
    `failed_rows` lie in failed partitions and `failed_items` failed one by one inside
    committed partitions. The success rate is delivered / selected; a task whose
    partitions all committed ends COMPLETED_WITH_ERRORS when rows failed within them
    (and partial success is allowed within the error rate), else FAILED (ROWS_FAILED).
    A task failed by its partitions stays FAILED."""
    selected = delivered + failed_rows + failed_items
    if selected == 0 or (failed_rows == 0 and failed_items == 0):
        return parts
    rate = 100.0 * delivered / selected
    if parts.status is T.FAILED:
        return Outcome(parts.status, parts.error_code, parts.error_msg, rate)
    if failed_items == 0:
        return Outcome(parts.status, parts.error_code, parts.error_msg, rate)
    error_rate = (failed_rows + failed_items) / selected
    what = f"{failed_rows + failed_items} of {selected} rows failed"
    if allow_partial and delivered > 0 and error_rate <= max_error_rate:
        return Outcome(
            T.COMPLETED_WITH_ERRORS, "PARTIAL_FAILURE", f"{what}; success rate {rate:.2f}%", rate
        )
    if allow_partial:
        msg = (
            f"{what}: error rate {100 * error_rate:.2f}% "
            f"exceeds the allowed {100 * max_error_rate:.1f}%"
        )
    else:
        msg = f"{what} and allow_partial is not set"
    return Outcome(T.FAILED, "ROWS_FAILED", msg, rate)


class CoordinatorWork(enum.StrEnum):
    """What the coordinator ("master task") has to do when it is due."""

    PLAN = "PLAN"  # stage 10: estimate the total, split into partitions
    MERGE_HEADERS = "MERGE_HEADERS"  # stage 30: every header pass is in; merge, open export
    FINISH = "FINISH"  # stages 70-90: every partition stopped; assemble, manifest, end
    WAIT = "WAIT"  # partitions are still open: nothing to do yet
    CLEANUP = "CLEANUP"  # canceling, or an ended task whose parts must be deleted


def coordinator_work(status: T, partitions: Iterable[P]) -> CoordinatorWork:
    """Decide the coordinator's next step from the task's status and its partitions'."""
    parts = list(partitions)
    if status is T.PENDING or (status is T.RUNNING and not parts):
        return CoordinatorWork.PLAN
    if status is not T.RUNNING:
        return CoordinatorWork.CLEANUP
    if any(p in (P.PENDING, P.RUNNING) for p in parts):
        return CoordinatorWork.WAIT
    if any(p is P.WAITING for p in parts):
        return CoordinatorWork.MERGE_HEADERS
    return CoordinatorWork.FINISH
