"""One rule for waiting between tries, and riding out outages on a time budget.

`backoff` is the delay rule every retry in exportd follows (attempts, notifications,
coordinator runs, polling clients). `ride_out` calls a function again and again, with that
backoff, for as long as it fails with an error its caller calls transient (the store or
the storage is unreachable), until a budget of seconds is spent; then the last error
propagates. It is built on tenacity."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after try number `attempt` (1-based): base, 2 base, 4 base, ...,
    at most `cap`."""
    return float(min(cap, base * 2 ** max(attempt - 1, 0)))


def ride_out(
    call: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    budget: float,
    what: str,
    base: float = 0.2,
    cap: float = 5.0,
) -> T:
    """`call()`, tried again while it raises a transient error, for at most `budget`
    seconds (with exponential backoff and jitter between tries, from `base` to `cap`).
    The log line of each retry says how long the budget still allows: what is left of
    `budget`, or, for a `transient` rule that counts a budget of its own (`budget`
    unbounded, e.g. `outages.SourceOutage`, from the first failure), its `left()`."""
    left: Callable[[], float] | None = getattr(transient, "left", None)

    def remaining(state: tenacity.RetryCallState) -> float:
        if left is not None:
            return max(0.0, left())
        return max(0.0, budget - (state.seconds_since_start or 0.0))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(budget),
        wait=tenacity.wait_exponential_jitter(multiplier=base, max=cap, jitter=base),
        retry=tenacity.retry_if_exception(transient),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "%s failed (%s); trying again for up to %.0f s more",
            what,
            type(state.outcome.exception()).__name__ if state.outcome else "?",
            remaining(state),
        ),
    )
    return retrying(call)
