"""Reading ahead in a thread: order, errors, and leaving early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from exportd.fastpaths.prefetch import prefetched


def test_items_arrive_in_order_made_in_the_producer_thread() -> None:
    seen: list[str] = []

    def make() -> Iterator[int]:
        seen.append(threading.current_thread().name)
        yield from range(1000)

    assert list(prefetched(make, depth=3)) == list(range(1000))
    assert seen == ["exportd-prefetch"]


def test_an_error_in_the_producer_is_raised_to_the_consumer() -> None:
    def make() -> Iterator[int]:
        yield 1
        raise ValueError("driver failed")

    got: list[int] = []
    with pytest.raises(ValueError, match="driver failed"):
        for item in prefetched(make):
            got.append(item)
    assert got == [1]


def test_leaving_early_closes_the_iterator_in_its_own_thread() -> None:
    closed: list[str] = []

    def make() -> Iterator[int]:
        try:
            yield from range(10**9)
        finally:
            closed.append(threading.current_thread().name)

    for item in prefetched(make):
        if item == 5:
            break
    assert closed == ["exportd-prefetch"]
    assert not any(t.name == "exportd-prefetch" for t in threading.enumerate())
