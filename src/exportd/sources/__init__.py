"""Data sources. A source describes its fields, estimates how many objects a filter selects,
splits the key space into partitions and streams one partition's rows in key order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from exportd.model import Dataset


@dataclass(frozen=True)
class Selection:
    """What one export reads: source columns (in output order) and a validated filter."""

    columns: list[str]
    filter: list[dict[str, dict[str, Any]]]
    snapshot: str | None = None  # the task's exported snapshot, which every read imports


@dataclass(frozen=True)
class Estimate:
    count: int | None
    is_estimate: bool


class Source(Protocol):
    def estimate(self, sel: Selection) -> Estimate: ...

    def plan(self, sel: Selection, parallelism: int) -> list[dict[str, Any]]:
        """Partition bounds covering every selected object exactly once."""
        ...

    def read(
        self, sel: Selection, bounds: dict[str, Any], batch_size: int
    ) -> Iterator[list[tuple[Any, ...]]]:
        """One partition's rows, in key order, in batches of at most `batch_size`."""
        ...

    def count(self, sel: Selection, bounds: dict[str, Any]) -> int: ...


class SourceFactory(Protocol):
    def __call__(self, dataset: Dataset) -> Source: ...
