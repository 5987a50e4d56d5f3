"""Fast paths: (source, format) pairs that stream natively, chosen from one registry.

Each entry names what it reads and writes and builds its path only when it supports the
export at hand (its own checks of the source, the format's options and the columns);
anything else goes through the generic path (rows through the format's writer), which
writes the same bytes. No code outside this package asks what a source or format is.

| entry | reads | writes |
| --- | --- | --- |
| `pg_copy_csv` | PostgreSQL tables and queries | CSV, TSV (the server renders, `COPY ... TO STDOUT`, drained in C by `_pgbinary`; without it a Python loop) |
| `adbc_parquet` | PostgreSQL tables and queries | Parquet (binary COPY parsed into Arrow in C, `_pgbinary`; other types, or without it, ADBC's Arrow batches) |
| `sqlite_csv` | SQLite tables | CSV, TSV (C renders the rows, `_sqlitecsv`; without it ADBC's Arrow batches, `pyarrow.compute`) |
| `jsonl_csv` | JSON Lines documents | CSV, TSV (the header pass renders the cells through Arrow) |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exportd.fastpaths.base import FastPath, Progress
from exportd.formats import Column, Format
from exportd.formats.splitting import Layout
from exportd.formats.text import CsvFormat, CsvOptions
from exportd.model import DocumentMode, ExportPlan
from exportd.sources import Selection, Source
from exportd.sources.documents import JsonLinesDocumentSource

Build = Callable[[Source, Format, Sequence[Column]], FastPath | None]


@dataclass(frozen=True)
class Entry:
    """One fast path: its module (imported when first asked: some load Arrow) builds it
    with `build(source, fmt, columns)`, or answers None when it does not support them."""

    module: str
    reads: str
    writes: tuple[str, ...]

    def build(self) -> Build:
        found: Build = importlib.import_module(f"exportd.fastpaths.{self.module}").build
        return found


REGISTRY: tuple[Entry, ...] = (
    Entry("pg_copy_csv", "PostgreSQL tables and queries", ("csv", "tsv")),
    Entry("adbc_parquet", "PostgreSQL tables and queries", ("parquet",)),
    Entry("sqlite_csv", "SQLite tables", ("csv", "tsv")),
)


def fast_path(
    source: Source, fmt: Format, layout: Layout, columns: Sequence[Column], enabled: bool = True
) -> FastPath | None:
    """The first registered fast path that supports this export, or None (generic path).
    Split outputs always take the generic path (segments are cut row by row)."""
    if not enabled or layout.split:
        return None
    for entry in REGISTRY:
        if fmt.name in entry.writes and (path := entry.build()(source, fmt, columns)):
            return path
    return None


def documents_through_arrow(source: Source, sel: Selection, enabled: bool = True) -> bool:
    """Whether a header pass reads its documents through Arrow (`jsonl_csv`): JSON Lines
    files without a filter (the Python path reads everything else, with the same result)."""
    return enabled and isinstance(source, JsonLinesDocumentSource) and not sel.filter


def cached_cells(fmt: Format, plan: ExportPlan) -> CsvOptions | None:
    """The CSV dialect in which a header pass renders its documents' cells for the export
    pass to join, when it can: CSV/TSV with the merged header, one file per partition's
    part (no split). None: the export pass flattens the documents itself."""
    if (
        not isinstance(fmt, CsvFormat)
        or plan.documents is not DocumentMode.DISCOVER
        or plan.output.split
    ):
        return None
    return fmt.options


__all__ = [
    "REGISTRY",
    "Entry",
    "FastPath",
    "Progress",
    "cached_cells",
    "documents_through_arrow",
    "fast_path",
]
