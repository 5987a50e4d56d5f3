"""CSV and JSON Lines: parts are byte streams that concatenate into the final file."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, BinaryIO

import orjson

from exportd.storage import Composed, Storage

Cell = Callable[[Any], Any]


def _csv_cell_for(value: Any) -> Cell | None:
    """How a column whose values look like `value` is written to CSV (None: as is)."""
    if isinstance(value, bool):
        return lambda v: None if v is None else ("true" if v else "false")
    if isinstance(value, datetime):
        return lambda v: None if v is None else _iso_utc(v)
    if isinstance(value, (date, time)):
        return lambda v: None if v is None else v.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return lambda v: None if v is None else base64.b64encode(bytes(v)).decode()
    if isinstance(value, (dict, list)):
        return lambda v: None if v is None else orjson.dumps(v).decode()
    return None  # str, int, float, Decimal: csv writes them exactly


def _iso_utc(value: datetime) -> str:
    """Timestamps with a time zone are written in UTC, ISO 8601."""
    return (value.astimezone(UTC) if value.tzinfo else value).isoformat()


class CsvRowWriter:
    """Writes rows with the csv module; a column's converter is chosen from its first
    non-null value (SQL columns hold one type)."""

    def __init__(self, out: BinaryIO, columns: list[str], lineterminator: str) -> None:
        self._text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
        self._writer = csv.writer(self._text, lineterminator=lineterminator)
        self._cells: list[Cell | None] = [None] * len(columns)
        self._undecided = set(range(len(columns)))

    def _decide(self, rows: Sequence[Sequence[Any]]) -> None:
        for i in list(self._undecided):
            for row in rows:
                if row[i] is not None:
                    self._cells[i] = _csv_cell_for(row[i])
                    self._undecided.discard(i)
                    break

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        if self._undecided:
            self._decide(rows)
        conv = [(i, c) for i, c in enumerate(self._cells) if c is not None]
        if conv:
            out = []
            for row in rows:
                r = list(row)
                for i, c in conv:
                    r[i] = c(r[i])
                out.append(r)
            self._writer.writerows(out)
        else:
            self._writer.writerows(rows)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()


class CsvFormat:
    name = "csv"
    extension = ".csv"
    media_type = "text/csv"

    def __init__(self, options: dict[str, Any]) -> None:
        self.header = bool(options.get("header", True))
        self.lineterminator = "\r\n" if options.get("crlf") else "\n"

    def part_writer(self, out: BinaryIO, columns: list[str]) -> CsvRowWriter:
        return CsvRowWriter(out, columns, self.lineterminator)

    def header_bytes(self, columns: list[str]) -> bytes:
        if not self.header:
            return b""
        buf = io.StringIO(newline="")
        csv.writer(buf, lineterminator=self.lineterminator).writerow(columns)
        return buf.getvalue().encode("utf-8")

    def assemble(
        self, storage: Storage, key: str, part_keys: Sequence[str], columns: list[str]
    ) -> Composed:
        return storage.compose(key, [self.header_bytes(columns), *part_keys])


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: a float would lose digits
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"cannot serialize {type(value).__name__}")


class JsonLinesRowWriter:
    def __init__(self, out: BinaryIO, columns: list[str]) -> None:
        self._out = out
        self._columns = columns

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        cols = self._columns
        dumps = orjson.dumps
        self._out.write(
            b"".join(
                dumps(dict(zip(cols, row, strict=True)), default=_json_default) + b"\n"
                for row in rows
            )
        )

    def close(self) -> None:
        self._out.flush()


class JsonLinesDocumentWriter:
    """Documents written as they are, one per line."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        dumps = orjson.dumps
        self._out.write(b"".join(dumps(row[0], default=_json_default) + b"\n" for row in rows))

    def close(self) -> None:
        self._out.flush()


class JsonLinesFormat:
    name = "jsonl"
    extension = ".jsonl"
    media_type = "application/x-ndjson"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def part_writer(self, out: BinaryIO, columns: list[str]) -> JsonLinesRowWriter:
        return JsonLinesRowWriter(out, columns)

    def document_writer(self, out: BinaryIO) -> JsonLinesDocumentWriter:
        return JsonLinesDocumentWriter(out)

    def assemble(
        self, storage: Storage, key: str, part_keys: Sequence[str], columns: list[str]
    ) -> Composed:
        return storage.compose(key, list(part_keys))
