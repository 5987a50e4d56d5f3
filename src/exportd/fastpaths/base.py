"""What a fast path is: it writes one partition's rows into the partition's part,
natively (the database renders or Arrow encodes), under the lease it is given."""

from __future__ import annotations

from typing import Any, Protocol

from exportd.formats.splitting import PartOutput
from exportd.sources import Selection, Source
from exportd.sources.sql import SqlSource


class Progress(Protocol):
    """The lease a fast path runs under (a heartbeat): it reports progress and is asked,
    between chunks, whether the work must stop."""

    def check(self) -> None:
        """Raise if the work must stop (the lease is gone, or the task ended)."""

    def progress(self, rows: int, written: int) -> None: ...


class FastPath(Protocol):
    def export(self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Progress) -> None:
        """Write the partition `bounds` of `sel` into `out`, byte-identical to the generic
        path; raise to let the partition fail (or fall back, where the path says so)."""


def sql_table(source: Source, dialect: str, driver: str | None = None) -> SqlSource | None:
    """The source when it reads rows of a table or query in `dialect` (through `driver`),
    else None; documents in a JSON column read otherwise (a subclass)."""
    if type(source) is not SqlSource or source.engine.dialect.name != dialect:
        return None
    if driver is not None and source.engine.dialect.driver != driver:
        return None
    return source
