"""Output formats. A format writes a partition's rows into parts (one or more segments),
and assembles runs of committed segments (in partition order) into the output files.

Text formats (CSV, TSV, JSON Lines, JSON) write segments that concatenate into the file,
optionally as gzip members / zstd frames; Parquet segments are Parquet files whose row
groups are copied into the output under one footer; XLSX segments are Parquet too, and
the workbook is written from them in constant memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from exportd.errors import BadRequest
from exportd.model.names import FORMAT_NAMES
from exportd.storage import Storage


@dataclass(frozen=True)
class Column:
    """An output column: its name (after renames), the source's coarse kind (int, float,
    decimal, str, bytes, bool, date, datetime, json, unknown) and the source's type text."""

    name: str
    kind: str = "unknown"
    type: str = "unknown"


@dataclass(frozen=True)
class Segment:
    """One stored piece of a partition's output: at most one file's worth of rows."""

    key: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class Written:
    """What assembling one output file wrote; `details` goes into its manifest entry."""

    bytes: int
    sha256: str
    details: dict[str, Any] = field(default_factory=dict)


class RowWriter(Protocol):
    def write(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None:
        """Flush what is buffered; the underlying stream stays open."""
        ...


@runtime_checkable
class EncodingWriter(Protocol):
    """A text writer that can encode rows before writing them: lets a byte limit per file
    be kept exactly (the encoded size is known before the bytes are written)."""

    def encode(self, rows: Sequence[Sequence[Any]]) -> bytes: ...

    def encoded_size(self, data: bytes) -> int:
        """How many bytes writing `data` next adds (with any separator)."""
        ...

    def write_encoded(self, data: bytes) -> None: ...


class Format(Protocol):
    name: str
    extension: str
    media_type: str
    exact_bytes: bool  # whether file sizes are known while writing (max_bytes_per_file exact)

    def part_writer(self, out: BinaryIO, columns: Sequence[Column]) -> RowWriter: ...

    def file_size(self, columns: Sequence[Column], segment_sizes: Sequence[int]) -> int:
        """The size of a file made of segments of these sizes (an estimate if not exact)."""
        ...

    def assemble(
        self, storage: Storage, key: str, segments: Sequence[Segment], columns: Sequence[Column]
    ) -> Written: ...


class NestingFormat(Format, Protocol):
    """A format that keeps the nesting of documents (JSON Lines, JSON): besides rows, it
    writes documents as they are. Rows given to a document writer are `(document,)`
    1-tuples, the document a parsed JSON value (usually a dict). Formats without
    `document_writer` receive documents flattened to columns instead."""

    def document_writer(self, out: BinaryIO) -> RowWriter: ...


def keeps_nesting(fmt: Format) -> bool:
    return callable(getattr(fmt, "document_writer", None))


@dataclass(frozen=True)
class FormatLimits:
    """What a format is told besides the request's options: settings."""

    xlsx_sheet_rows: int = 1_048_576


def get_format(
    name: str,
    options: dict[str, Any] | None = None,
    compression: str | None = None,
    limits: FormatLimits | None = None,
) -> Format:
    """The format `name` with its options; bad options are a 400 (raised at submit)."""
    from exportd.formats.compression import check_codec

    options = options or {}
    if not isinstance(options, dict):
        raise BadRequest("format_options must be an object", "INVALID_FORMAT_OPTIONS")
    codec = check_codec(compression)
    if name in ("csv", "tsv", "jsonl", "json"):
        from exportd.formats.text import text_format

        return text_format(name, options, codec)
    if codec != "none":
        raise BadRequest(
            f"compression applies to the text formats; {name} compresses internally",
            "INVALID_COMPRESSION",
        )
    if name == "parquet":
        from exportd.formats.parquet import ParquetFormat

        return ParquetFormat(options)
    if name == "xlsx":
        from exportd.formats.xlsx import XlsxFormat

        return XlsxFormat(options, (limits or FormatLimits()).xlsx_sheet_rows)
    raise BadRequest(
        f"unknown format {name[:20]!r}; use one of {', '.join(FORMAT_NAMES)}", "INVALID_FORMAT"
    )


def check_options(options: dict[str, Any], known: Sequence[str], fmt: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BadRequest(
            f"unknown format_options for {fmt}: {', '.join(u[:40] for u in unknown[:5])}; "
            f"known: {', '.join(known)}",
            "INVALID_FORMAT_OPTIONS",
        )
