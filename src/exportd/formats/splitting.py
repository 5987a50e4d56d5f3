"""Layout: one output file (the default) or many, split by `max_rows_per_file` and/or
`max_bytes_per_file`.

A partition writes its rows as segments, each within the limits, in a folder of its own
(`parts/{task}/{index}-a{attempt}-{token}/`) with an `index.json` listing them; the
index is what the partition commits. The coordinator then packs consecutive segments,
in partition order, into files as large as the limits allow. So no file exceeds
`max_rows_per_file`; `max_bytes_per_file` is exact for uncompressed text formats (the
size of the encoded rows is known before they are written; a single row larger than the
limit gets a file of its own) and a target for the others (a file is closed after the
write or Parquet row group that reaches it). XLSX takes rows only (a workbook's size is
known once it is zipped)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

import orjson

from exportd.errors import BadRequest
from exportd.formats import Column, EncodingWriter, Format, RowWriter, Segment
from exportd.model.plan import OutputSpec
from exportd.storage import CountingWriter, HashingWriter, Storage

log = logging.getLogger(__name__)

INDEX = "index.json"


@dataclass(frozen=True)
class Layout:
    max_rows: int | None = None
    max_bytes: int | None = None

    @property
    def split(self) -> bool:
        return bool(self.max_rows or self.max_bytes)

    @classmethod
    def of(cls, output: OutputSpec) -> Layout:
        return cls(output.max_rows_per_file, output.max_bytes_per_file)

    def check(self, fmt: Format, columns: Sequence[Column]) -> None:
        """A 400 for limits the format cannot keep (called at submit)."""
        if self.max_bytes is None:
            return
        if fmt.name == "xlsx":
            raise BadRequest(
                "max_bytes_per_file does not apply to xlsx; use max_rows_per_file", "INVALID_LAYOUT"
            )
        fixed = fmt.file_size(columns, [])
        if self.max_bytes <= fixed:
            raise BadRequest(
                f"max_bytes_per_file must exceed the {fixed} bytes of a file's header",
                "INVALID_LAYOUT",
            )


@dataclass(frozen=True)
class PartResult:
    """What a partition commits: its index's key, and its rows, bytes and index hash."""

    key: str
    rows: int
    bytes: int
    sha256: str


class _Discarded(Exception):
    """Unwinds a segment's write that `PartOutput.discard` abandons."""


class _Open:
    """The segment being written."""

    def __init__(self, key: str, out: CountingWriter, writer: RowWriter) -> None:
        self.key, self.out, self.writer, self.rows = key, out, writer, 0


class PartOutput:
    """A partition's output: rows in, segments within the layout's limits out."""

    def __init__(
        self,
        storage: Storage,
        folder: str,
        fmt: Format,
        columns: Sequence[Column],
        layout: Layout,
        make_writer: Callable[[BinaryIO], RowWriter] | None = None,
    ) -> None:
        """`make_writer` replaces the format's row writer (documents kept nested)."""
        self.storage, self.folder, self.fmt = storage, folder, fmt
        self._make_writer = make_writer
        self.columns, self.layout = list(columns), layout
        self.segments: list[Segment] = []
        self._stack = ExitStack()
        self._seg: _Open | None = None
        fixed = fmt.file_size(columns, []) if layout.max_bytes else 0
        self._byte_room = (layout.max_bytes - fixed) if layout.max_bytes else None

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.segments) + (self._seg.rows if self._seg else 0)

    @property
    def size(self) -> int:
        return sum(s.bytes for s in self.segments) + (self._seg.out.count if self._seg else 0)

    def __enter__(self) -> PartOutput:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.__exit__(typ, exc, tb)
        if typ is not None:  # best effort: the error that ended the part is the one to see
            try:
                self.storage.delete_prefix(self.folder)
            except Exception as cleanup:  # left under the parts prefix, for the cleanup
                log.warning("part folder %s left: %s", self.folder, type(cleanup).__name__)

    def _open(self) -> _Open:
        key = f"{self.folder}s{len(self.segments):05d}{self.fmt.extension}"
        raw: BinaryIO = self._stack.enter_context(self.storage.open_write(key, durable=False))
        out = CountingWriter(raw)  # a segment's own hash is never used: the files' are
        if self._make_writer is not None:
            writer = self._make_writer(out)  # type: ignore[arg-type]
        else:
            writer = self.fmt.part_writer(out, self.columns)  # type: ignore[arg-type]
        self._seg = _Open(key, out, writer)
        return self._seg

    def _roll(self) -> None:
        seg = self._seg
        if seg is None:
            return
        seg.writer.close()
        self._stack.close()  # the segment is complete: its object appears under its key
        self._stack = ExitStack()
        self.segments.append(Segment(seg.key, seg.rows, seg.out.count))
        self._seg = None

    def write(self, rows: Sequence[Sequence[Any]]) -> None:
        while rows:
            seg = self._seg or self._open()
            take = rows
            if self.layout.max_rows:
                take = rows[: self.layout.max_rows - seg.rows]
            take = self._write_within_bytes(seg, take)
            seg.rows += len(take)
            rows = rows[len(take) :]
            if self._full(seg) or not take:
                self._roll()

    def _full(self, seg: _Open) -> bool:
        if self.layout.max_rows and seg.rows >= self.layout.max_rows:
            return True
        return self._byte_room is not None and seg.out.count >= self._byte_room

    def _write_within_bytes(
        self, seg: _Open, rows: Sequence[Sequence[Any]]
    ) -> Sequence[Sequence[Any]]:
        """Write the longest head of `rows` that keeps the segment within the byte limit
        (exact when the writer can encode first); returns what was written."""
        w, room = seg.writer, self._byte_room
        if room is None or not self.fmt.exact_bytes or not isinstance(w, EncodingWriter):
            w.write(rows)
            return rows
        left = room - seg.out.count
        data = w.encode(rows)
        if w.encoded_size(data) > left:
            n = self._fitting(w, rows, left)
            if n == 0 and seg.rows == 0:
                n = 1  # a row larger than the limit still gets written, in a file of its own
            rows, data = rows[:n], w.encode(rows[:n])
        w.write_encoded(data)
        return rows

    @staticmethod
    def _fitting(w: EncodingWriter, rows: Sequence[Sequence[Any]], left: int) -> int:
        lo, hi = 0, len(rows)  # rows[:lo] fits, rows[:hi] does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if w.encoded_size(w.encode(rows[:mid])) <= left:
                lo = mid
            else:
                hi = mid
        return lo

    def discard(self) -> None:
        """Drop everything written so far, so that the part starts again empty (a fast
        path that steps aside mid-partition for the generic one): the open segment's
        write is abandoned (no object appears under its key), closed ones are deleted."""
        self._stack.__exit__(_Discarded, _Discarded(), None)  # as an error would unwind it
        self._stack, self._seg = ExitStack(), None
        for seg in self.segments:
            self.storage.delete(seg.key)
        self.segments = []

    def write_encoded(self, data: bytes, rows: int) -> None:
        """Bytes already encoded by a fast path (no split: the layout is one file)."""
        seg = self._seg or self._open()
        assert isinstance(seg.writer, EncodingWriter) and not self.layout.split
        seg.writer.write_encoded(data)
        seg.rows += rows

    def writer(self) -> RowWriter:
        """The open segment's writer (fast paths that write Arrow batches; no split)."""
        assert not self.layout.split
        return (self._seg or self._open()).writer

    def count(self, rows: int) -> None:
        assert self._seg is not None
        self._seg.rows += rows

    def finish(self) -> PartResult:
        """Close the last segment and write the index (at least one segment, maybe empty)."""
        if self._seg is None and not self.segments:
            self._open()
        self._roll()
        body = orjson.dumps({"segments": [s.__dict__ for s in self.segments]})
        key = self.folder + INDEX
        with self.storage.open_write(key, durable=False) as raw:
            out = HashingWriter(raw)
            out.write(body)
        return PartResult(key, self.rows, self.size, out.hexdigest())


def read_index(storage: Storage, key: str) -> list[Segment]:
    with storage.open_read(key) as fh:
        body = orjson.loads(fh.read())
    return [Segment(s["key"], s["rows"], s["bytes"]) for s in body["segments"]]


def pack(
    segments: Sequence[Segment], fmt: Format, columns: Sequence[Column], layout: Layout
) -> list[list[Segment]]:
    """Consecutive segments grouped into files, each as large as the limits allow."""
    if not layout.split:
        return [list(segments)]
    files: list[list[Segment]] = []
    cur: list[Segment] = []
    for seg in (s for s in segments if s.rows):
        cand = [*cur, seg]
        if cur and _too_big(cand, fmt, columns, layout):
            files.append(cur)
            cand = [seg]
        cur = cand
    return [*files, cur] if cur or not files else files


def _too_big(segs: list[Segment], fmt: Format, columns: Sequence[Column], layout: Layout) -> bool:
    if layout.max_rows and sum(s.rows for s in segs) > layout.max_rows:
        return True
    return bool(layout.max_bytes) and fmt.file_size(columns, [s.bytes for s in segs]) > (
        layout.max_bytes or 0
    )


def file_names(base: str, extension: str, count: int) -> list[str]:
    """`base` for one file; `stem-00001.ext`, `stem-00002.ext`, ... for several."""
    if count == 1:
        return [base]
    stem, ext = (base[: -len(extension)], extension) if base.endswith(extension) else (base, "")
    return [f"{stem}-{i:05d}{ext}" for i in range(1, count + 1)]
