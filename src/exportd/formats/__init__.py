"""Output formats. A format writes a partition's rows into a part, and assembles the
committed parts (in partition order) into the final file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

from exportd.errors import BadRequest
from exportd.storage import Composed, Storage


class RowWriter(Protocol):
    def write(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def close(self) -> None:
        """Flush what is buffered; the underlying stream stays open."""
        ...


class Format(Protocol):
    name: str
    extension: str
    media_type: str

    def part_writer(self, out: BinaryIO, columns: list[str]) -> RowWriter: ...

    def assemble(
        self, storage: Storage, key: str, part_keys: Sequence[str], columns: list[str]
    ) -> Composed: ...


class NestingFormat(Format, Protocol):
    """A format that keeps the nesting of documents (JSON Lines, JSON, Parquet): besides
    rows, it writes documents as they are. Rows given to a document writer are
    `(document,)` 1-tuples, the document a parsed JSON value (usually a dict). Formats
    without `document_writer` receive documents flattened to columns instead."""

    def document_writer(self, out: BinaryIO) -> RowWriter: ...


def keeps_nesting(fmt: Format) -> bool:
    return callable(getattr(fmt, "document_writer", None))


def get_format(name: str, options: dict[str, Any] | None = None) -> Format:
    from exportd.formats.text import CsvFormat, JsonLinesFormat

    options = options or {}
    if name == "csv":
        return CsvFormat(options)
    if name == "jsonl":
        return JsonLinesFormat(options)
    raise BadRequest(f"unsupported format {name!r}", "INVALID_FORMAT")


FORMAT_NAMES = ("csv", "jsonl")
